//! Charts as inline SVG text: crisp at any zoom, a few kilobytes, no script, no font or
//! library to fetch, so a page opened from disk shows them as it was written. Every number
//! is formatted with fixed precision, so the same data give the same bytes.

use std::fmt::Write;

/// Tableau 10, the palette of `stages::plot`'s PNG charts, so a setting keeps its colour
/// between the sweep figures and these pages.
const PALETTE: [&str; 10] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

const W: f64 = 680.0;
const H: f64 = 280.0;
/// Room for the y tick labels and title (left), the x ticks and label (bottom).
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 44.0;

pub struct Point {
    pub x: f64,
    pub y: f64,
    /// Half the error bar (a standard deviation); none or NaN: no bar.
    pub sd: Option<f64>,
}

pub struct Line {
    pub colour: usize,
    pub dashed: bool,
    pub points: Vec<Point>,
}

/// The five numbers of a box and its mean, at slot `x` (a round), for series `colour`.
pub struct Box5 {
    pub x: f64,
    pub colour: usize,
    pub min: f64,
    pub q1: f64,
    pub median: f64,
    pub q3: f64,
    pub max: f64,
    pub mean: f64,
}

/// Round, readable tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten.
fn ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let span = (hi - lo).max(1e-9);
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).floor() as i64;
    let last = (hi / step).ceil() as i64;
    ((first..=last).map(|i| i as f64 * step).collect(), step)
}

/// A tick label with as many decimals as the step needs.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize };
    let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
    format!("{v:.decimals$}")
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Data coordinates to pixels over the plot area.
struct Frame {
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x.0) / (self.x.1 - self.x.0) * (W - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        H - BOTTOM - (y - self.y.0) / (self.y.1 - self.y.0) * (H - TOP - BOTTOM)
    }
}

/// The axes, grid lines, integer x ticks (rounds) and labels; returns the frame to draw in.
fn axes(out: &mut String, xs: (f64, f64), ys: (f64, f64), x_label: &str, y_label: &str) -> Frame {
    let (yt, ystep) = ticks(ys.0, ys.1, 5);
    let y = (yt[0], *yt.last().unwrap_or(&ys.1));
    let y = if y.1 > y.0 { y } else { (y.0, y.0 + 1.0) };
    // half a slot of room either side, so the first and last box or bar are whole
    let f = Frame { x: (xs.0 - 0.5, xs.1 + 0.5), y };
    let _ = write!(out, r#"<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" xmlns="http://www.w3.org/2000/svg">"#);
    for v in &yt {
        let py = f.py(*v);
        let _ = write!(out, r##"<line x1="{LEFT}" x2="{:.1}" y1="{py:.1}" y2="{py:.1}" stroke="#e3e3e3"/>"##, W - RIGHT);
        let _ = write!(out, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, LEFT - 6.0, py + 4.0, tick_label(*v, ystep));
    }
    let n = (xs.1 - xs.0).round().max(0.0) as i64 + 1;
    let every = (n / 12).max(1);
    for i in (0..n).filter(|i| i % every == 0) {
        let v = xs.0 + i as f64;
        let _ = write!(out, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{v}</text>"#, f.px(v), H - BOTTOM + 16.0);
    }
    let (x0, y0, x1) = (LEFT, H - BOTTOM, W - RIGHT);
    let _ = write!(out, r##"<path d="M{x0} {TOP}V{y0}H{x1}" fill="none" stroke="#555"/>"##);
    let _ = write!(out, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, (x0 + x1) / 2.0, H - 8.0, super::layout::esc(x_label));
    let _ = write!(out, r#"<text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#, (TOP + y0) / 2.0, super::layout::esc(y_label));
    f
}

/// Lines over integer x (rounds) with error bars; y from 0 (errors are rates) unless a
/// value is negative.
pub fn line_chart(x_label: &str, y_label: &str, lines: &[Line]) -> String {
    let pts = || lines.iter().flat_map(|l| l.points.iter()).filter(|p| p.y.is_finite());
    let Some(x_lo) = pts().map(|p| p.x).reduce(f64::min) else { return String::new() };
    let x_hi = pts().map(|p| p.x).fold(x_lo, f64::max);
    let sd = |p: &Point| p.sd.and_then(finite).unwrap_or(0.0);
    let y_hi = pts().map(|p| p.y + sd(p)).fold(0.0, f64::max);
    let y_lo = pts().map(|p| p.y - sd(p)).fold(0.0, f64::min);
    let mut out = String::new();
    let f = axes(&mut out, (x_lo, x_hi), (y_lo, y_hi * 1.05), x_label, y_label);
    for l in lines {
        let c = colour(l.colour);
        let dash = if l.dashed { r#" stroke-dasharray="6 4""# } else { "" };
        let shown: Vec<&Point> = l.points.iter().filter(|p| p.y.is_finite()).collect();
        let d: Vec<String> = shown.iter().enumerate().map(|(i, p)| format!("{}{:.1} {:.1}", if i == 0 { "M" } else { "L" }, f.px(p.x), f.py(p.y))).collect();
        let _ = write!(out, r#"<path d="{}" fill="none" stroke="{c}" stroke-width="2"{dash}/>"#, d.join(""));
        for p in shown {
            let (px, py) = (f.px(p.x), f.py(p.y));
            if let Some(s) = p.sd.and_then(finite).filter(|s| *s > 0.0) {
                let (a, b) = (f.py(p.y - s), f.py(p.y + s));
                let _ = write!(out, r#"<path d="M{px:.1} {a:.1}V{b:.1}M{:.1} {a:.1}h8M{:.1} {b:.1}h8" stroke="{c}" stroke-width="1.5"/>"#, px - 4.0, px - 4.0);
            }
            let fill = if l.dashed { "#fff" } else { c };
            let _ = write!(out, r#"<circle cx="{px:.1}" cy="{py:.1}" r="3.5" fill="{fill}" stroke="{c}" stroke-width="1.5"/>"#);
        }
    }
    out.push_str("</svg>");
    out
}

/// Box plots per integer x (round), the series of one x side by side: box q1..q3, whiskers
/// min..max, a line at the median, a dot at the mean.
pub fn box_chart(x_label: &str, y_label: &str, boxes: &[Box5], series: usize) -> String {
    let ok: Vec<&Box5> = boxes.iter().filter(|b| [b.min, b.q1, b.median, b.q3, b.max].iter().all(|v| v.is_finite())).collect();
    let Some(x_lo) = ok.iter().map(|b| b.x).reduce(f64::min) else { return String::new() };
    let x_hi = ok.iter().map(|b| b.x).fold(x_lo, f64::max);
    let y_lo = ok.iter().map(|b| b.min).fold(0.0, f64::min);
    let y_hi = ok.iter().map(|b| b.max).fold(0.0, f64::max);
    let mut out = String::new();
    let pad = 0.05 * (y_hi - y_lo).max(1e-9);
    let f = axes(&mut out, (x_lo, x_hi), (if y_lo < 0.0 { y_lo - pad } else { 0.0 }, y_hi + pad), x_label, y_label);
    let slot = (f.px(1.0) - f.px(0.0)) * 0.8;
    let width = (slot / series.max(1) as f64).min(28.0);
    for b in ok {
        let c = colour(b.colour);
        let cx = f.px(b.x) + (b.colour as f64 - (series.max(1) - 1) as f64 / 2.0) * width;
        let (l, r) = (cx - width * 0.4, cx + width * 0.4);
        let (top, bottom) = (f.py(b.q3), f.py(b.q1));
        let _ = write!(out, r#"<path d="M{cx:.1} {:.1}V{top:.1}M{cx:.1} {bottom:.1}V{:.1}" stroke="{c}"/>"#, f.py(b.max), f.py(b.min));
        let _ = write!(out, r#"<rect x="{l:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{c}" fill-opacity="0.25" stroke="{c}"/>"#, r - l, (bottom - top).max(0.5));
        let _ = write!(out, r#"<path d="M{l:.1} {:.1}H{r:.1}" stroke="{c}" stroke-width="2"/>"#, f.py(b.median));
        if b.mean.is_finite() {
            let _ = write!(out, r#"<circle cx="{cx:.1}" cy="{:.1}" r="2.5" fill="{c}"/>"#, f.py(b.mean));
        }
    }
    out.push_str("</svg>");
    out
}

/// Horizontal bars with their value written at the end: `(label, value)`.
pub fn bar_chart(bars: &[(String, f64)], unit: &str) -> String {
    let max = bars.iter().map(|(_, v)| *v).filter(|v| v.is_finite()).fold(0.0, f64::max).max(1e-9);
    let (row, label_w, value_w) = (24.0, 120.0, 90.0);
    let h = row * bars.len() as f64 + 8.0;
    let mut out = String::new();
    let _ = write!(out, r#"<svg class="chart" viewBox="0 0 {W} {h}" width="{W}" height="{h}" role="img" xmlns="http://www.w3.org/2000/svg">"#);
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = 4.0 + i as f64 * row;
        let len = if v.is_finite() { v / max * (W - label_w - value_w) } else { 0.0 };
        let _ = write!(out, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, label_w - 8.0, y + 16.0, super::layout::esc(label));
        let _ = write!(out, r#"<rect x="{label_w}" y="{:.1}" width="{len:.1}" height="{:.1}" fill="{}"/>"#, y + 3.0, row - 6.0, colour(0));
        let _ = write!(out, r#"<text x="{:.1}" y="{:.1}">{v:.2} {unit}</text>"#, label_w + len + 6.0, y + 16.0);
    }
    out.push_str("</svg>");
    out
}

/// A legend entry's swatch: a short line, dashed or not, or a filled square.
pub fn swatch(i: usize, dashed: bool) -> String {
    let c = colour(i);
    let dash = if dashed { r#" stroke-dasharray="5 3""# } else { "" };
    format!(r#"<svg width="26" height="10" aria-hidden="true"><path d="M1 5H25" stroke="{c}" stroke-width="2.5"{dash}/></svg>"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let (t, step) = ticks(0.0, 13.2, 5);
        assert_eq!(step, 5.0);
        assert_eq!(t, [0.0, 5.0, 10.0, 15.0]);
        let (t, step) = ticks(-0.3, 0.42, 5);
        assert_eq!(step, 0.2);
        assert!(t[0] <= -0.3 && *t.last().unwrap() >= 0.42, "{t:?}");
        assert_eq!(tick_label(0.4000000001, step), "0.4");
        assert_eq!(tick_label(-1e-17, step), "0.0");
    }

    #[test]
    fn charts_skip_non_finite_values_and_are_empty_without_data() {
        assert_eq!(line_chart("round", "%", &[]), "");
        let lines = [Line { colour: 0, dashed: false, points: vec![Point { x: 0.0, y: 10.0, sd: Some(f64::NAN) }, Point { x: 1.0, y: f64::NAN, sd: None }, Point { x: 2.0, y: 5.0, sd: Some(1.0) }] }];
        let svg = line_chart("round", "%", &lines);
        assert!(!svg.contains("NaN") && svg.matches("<circle").count() == 2, "{svg}");
        let b = Box5 { x: 1.0, colour: 0, min: 1.0, q1: 2.0, median: 3.0, q3: 4.0, max: f64::NAN, mean: 3.0 };
        assert_eq!(box_chart("round", "steps", &[b], 1), "");
    }
}
