//! UTC timestamps without a date crate: ISO 8601 for records, compact for run ids.

use std::time::{SystemTime, UNIX_EPOCH};

/// (year, month, day, hour, minute, second) of a Unix time, by Howard Hinnant's
/// days-to-civil algorithm.
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + (m <= 2) as i64;
    (y, m, d, (rem / 3600) as u32, (rem % 3600 / 60) as u32, (rem % 60) as u32)
}

fn now_secs() -> (u64, u32) {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_millis())
}

pub fn now_iso() -> String {
    let (s, ms) = now_secs();
    let (y, mo, d, h, mi, se) = civil(s);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{se:02}.{ms:03}Z")
}

/// `20261125-173005.042` for run ids: sortable, and distinct for runs a second apart.
pub fn now_compact() -> String {
    let (s, ms) = now_secs();
    let (y, mo, d, h, mi, se) = civil(s);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{se:02}.{ms:03}")
}

/// A span as a person reads it: `42s`, `3m05s`, `2h07m`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// Seconds from an ISO time written by [`now_iso`] until now; `None` for any other text.
pub fn seconds_since(iso: &str) -> Option<f64> {
    let (s, ms) = now_secs();
    Some(s as f64 + ms as f64 / 1000.0 - unix_seconds(iso)?)
}

/// The Unix time of an ISO time written by [`now_iso`].
fn unix_seconds(iso: &str) -> Option<f64> {
    let b = iso.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[10] != b'T' || b[23] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| iso.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let secs = num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    let ms = num(20..23)?;
    // days from civil (Hinnant), the inverse of `civil`
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + secs) as f64 + ms as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_times_read_back() {
        let age = super::seconds_since(&super::now_iso()).unwrap();
        assert!((0.0..5.0).contains(&age), "{age}");
        assert_eq!(super::unix_seconds("2026-11-25T14:04:05.250Z"), Some(1_795_615_445.25));
        assert_eq!(super::unix_seconds("2000-02-29T00:00:00.000Z"), Some(951_782_400.0));
        assert_eq!(super::seconds_since("yesterday"), None);
        assert_eq!(super::duration(65.2), "1m05s");
        assert_eq!(super::duration(7260.0), "2h01m");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(super::civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(super::civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(super::civil(1_795_615_445), (2026, 11, 25, 14, 4, 5));
    }
}
