//! Words and tables for people: counts with the right plural, articles, and the aligned,
//! rounded tables `pipe report` prints (Polars' own printing shows a frame's shape, dtypes
//! and every digit, which is for debugging, not for reading results).

use polars::prelude::{AnyValue, DataFrame};

/// `1 run`, `2 runs`.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `a train`, `an evaluate`.
pub fn a_or_an(word: &str) -> String {
    let article = if word.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {word}")
}

/// A data frame as an aligned text table: numbers right-aligned and rounded to `decimals`
/// (whole-valued float columns such as a mean round number without decimals), text
/// left-aligned and whole; nulls, NaN and empty text as `-`.
pub fn table(frame: &DataFrame, decimals: usize) -> String {
    let columns = frame.columns();
    let mut cells: Vec<Vec<String>> = Vec::new();
    let mut numeric = Vec::new();
    for c in columns {
        let values: Vec<AnyValue> = (0..frame.height()).map(|i| c.get(i).unwrap_or(AnyValue::Null)).collect();
        let whole = values.iter().all(|v| v.extract::<f64>().is_none_or(|x| x.fract() == 0.0));
        numeric.push(c.dtype().is_primitive_numeric());
        cells.push(
            values
                .iter()
                .map(|v| match v {
                    AnyValue::Null => "-".to_string(),
                    AnyValue::Float32(_) | AnyValue::Float64(_) => match v.extract::<f64>() {
                        Some(x) if x.is_nan() => "-".to_string(),
                        Some(x) if whole => format!("{x:.0}"),
                        Some(x) => format!("{x:.decimals$}"),
                        None => "-".to_string(),
                    },
                    AnyValue::String("") => "-".to_string(),
                    AnyValue::String(s) => s.to_string(),
                    AnyValue::StringOwned(s) if s.is_empty() => "-".to_string(),
                    AnyValue::StringOwned(s) => s.to_string(),
                    other => other.to_string(),
                })
                .collect(),
        );
    }
    let names: Vec<String> = columns.iter().map(|c| c.name().to_string()).collect();
    let widths: Vec<usize> = names.iter().zip(&cells).map(|(n, col)| col.iter().map(|s| s.chars().count()).chain([n.chars().count()]).max().unwrap_or(0)).collect();
    let line = |row: Vec<&str>| {
        let parts: Vec<String> = row.iter().zip(&widths).zip(&numeric).map(|((s, &w), &num)| if num { format!("{s:>w$}") } else { format!("{s:<w$}") }).collect();
        format!("  {}", parts.join("  ").trim_end())
    };
    let mut out = vec![line(names.iter().map(String::as_str).collect())];
    for i in 0..frame.height() {
        out.push(line(cells.iter().map(|c| c[i].as_str()).collect()));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::df;

    #[test]
    fn words() {
        assert_eq!(count(1, "training stage"), "1 training stage");
        assert_eq!(count(0, "run"), "0 runs");
        assert_eq!((a_or_an("evaluate"), a_or_an("train")), ("an evaluate".into(), "a train".into()));
    }

    #[test]
    fn tables_round_align_and_keep_whole_text() -> polars::prelude::PolarsResult<()> {
        let f = df!(
            "setting" => ["method=icn width=0.125 a long setting that polars would cut", "b"],
            "round" => [2.0f64, 10.0],
            "sd" => [Some(0.424264f64), None],
            "runs" => [3u32, 12],
        )?;
        let t = table(&f, 2);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[1].contains("method=icn width=0.125 a long setting that polars would cut"), "{t}");
        assert!(lines[1].contains(" 2  ") && lines[1].contains("0.42") && !lines[1].contains("0.4242"), "{t}");
        assert!(lines[2].split_whitespace().collect::<Vec<_>>() == ["b", "10", "-", "12"], "{t}");
        // numbers right-aligned: every line ends where the `runs` column ends
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{t}");
        assert!(!t.contains("shape"), "{t}");
        Ok(())
    }
}
