//! The frame every page shares: escaping, the page shell with its inline style sheet,
//! tables and figures. Pages are plain HTML without script, so a browser opening them from
//! disk needs nothing else.

use std::fmt::Write;

/// Text as HTML (element content and quoted attribute values alike).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body { font: 14px/1.45 'DejaVu Sans', system-ui, sans-serif; color: #222; margin: 0 auto; padding: 16px 24px 48px; max-width: 1180px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 3px; }
h3 { font-size: 14px; margin: 16px 0 6px; } nav { font-size: 13px; color: #666; } a { color: #1f5fa8; }
p.note { color: #666; font-size: 12.5px; margin: 4px 0 8px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; font-weight: 600; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.selected td { background: #fff6d5; } td a, .nw { white-space: nowrap; } code, td.mono { font-family: 'DejaVu Sans Mono', monospace; font-size: 12px; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; font-size: 13px; }
dl.meta dt { color: #666; } dl.meta dd { margin: 0; }
svg.chart { max-width: 100%; height: auto; font: 11px 'DejaVu Sans', sans-serif; fill: #333; }
svg.chart text { fill: #333; } .legend { font-size: 12.5px; margin: 2px 0 10px; }
.legend span { display: inline-flex; align-items: center; gap: 4px; margin-right: 14px; }
.figures { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 12px; color: #555; max-width: 360px; }
img.px { image-rendering: pixelated; border: 1px solid #ccc; background: #808080; }
";

/// A whole page. `depth` is how many folders below the site's root it lives, so that its
/// links (written relative to the root) resolve from disk.
pub fn page(title: &str, depth: usize, body: &str) -> String {
    let up = "../".repeat(depth);
    let nav = if depth == 0 { String::new() } else { format!(r#"<nav><a href="{up}index.html">pipe report</a></nav>"#) };
    format!("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"generator\" content=\"pipe report --html\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{nav}\n{body}\n</body>\n</html>\n", esc(title))
}

/// A column of a table: its heading, and whether its cells are numbers (right-aligned).
pub struct Col<'a>(pub &'a str, pub bool);

/// A row: attributes of its `<tr>` (already HTML, such as ` data-round="3"`) and its cells
/// (already HTML).
pub struct Row {
    pub attrs: String,
    pub cells: Vec<String>,
}

impl Row {
    pub fn new(cells: Vec<String>) -> Row {
        Row { attrs: String::new(), cells }
    }
}

pub fn table(id: &str, cols: &[Col], rows: &[Row]) -> String {
    let mut out = String::new();
    let id = if id.is_empty() { String::new() } else { format!(r#" id="{}""#, esc(id)) };
    let _ = write!(out, "<table{id}>\n<tr>");
    for Col(name, num) in cols {
        let _ = write!(out, "<th{}>{}</th>", if *num { r#" class="num""# } else { "" }, esc(name));
    }
    out.push_str("</tr>\n");
    for r in rows {
        let _ = write!(out, "<tr{}>", r.attrs);
        for (cell, Col(_, num)) in r.cells.iter().zip(cols) {
            let _ = write!(out, "<td{}>{cell}</td>", if *num { r#" class="num""# } else { "" });
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

/// An image of the site (a path relative to the root) shown at `scale` times its size
/// in pixels, with a caption (HTML).
pub fn figure(depth: usize, src: &str, size: Option<(u32, u32)>, scale: u32, caption: &str) -> String {
    let dims = size.map(|(w, h)| format!(r#" width="{}" height="{}""#, w * scale, h * scale)).unwrap_or_default();
    format!(r#"<figure><img class="px" src="{}{}"{dims} alt=""><figcaption>{caption}</figcaption></figure>"#, "../".repeat(depth), esc(src))
}

/// A link from a page `depth` folders down to a page of the site.
pub fn link(depth: usize, href: &str, text: &str) -> String {
    format!(r#"<a href="{}{}">{}</a>"#, "../".repeat(depth), esc(href), esc(text))
}

/// A percentage with its spread over seeds: `12.34 ± 0.56`, or `12.34` for one seed.
pub fn pct(mean: Option<f64>, sd: Option<f64>) -> String {
    match (mean.filter(|m| m.is_finite()), sd.filter(|s| s.is_finite())) {
        (None, _) => "–".into(),
        (Some(m), Some(s)) => format!("{m:.2} ± {s:.2}"),
        (Some(m), None) => format!("{m:.2}"),
    }
}

/// A number with `decimals` places, or a dash for none.
pub fn num(v: Option<f64>, decimals: usize) -> String {
    v.filter(|v| v.is_finite()).map_or_else(|| "–".into(), |v| format!("{v:.decimals$}"))
}

/// A mean of rounds or counts as an integer when it is one (`2`, not `2.0`), else with one
/// decimal.
pub fn round_shown(v: Option<f64>) -> String {
    match v.filter(|v| v.is_finite()) {
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        v => num(v, 1),
    }
}

/// A legend: `(colour, dashed, label)` per entry.
pub fn legend(entries: &[(usize, bool, String)]) -> String {
    let items: Vec<String> = entries.iter().map(|(c, dashed, label)| format!("<span>{}{}</span>", super::svg::swatch(*c, *dashed), esc(label))).collect();
    format!(r#"<div class="legend">{}</div>"#, items.join(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_formats_missing_numbers_as_a_dash() {
        assert_eq!(esc(r#"a<b & "c"'"#), "a&lt;b &amp; &quot;c&quot;&#39;");
        assert_eq!(pct(Some(12.346), Some(f64::NAN)), "12.35");
        assert_eq!(pct(Some(1.0), Some(0.5)), "1.00 ± 0.50");
        assert_eq!(pct(None, Some(1.0)), "–");
        assert_eq!(num(Some(f64::INFINITY), 1), "–");
    }
}
