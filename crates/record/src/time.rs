//! UTC calendar times of Unix times, for run ids, results files and the history listing.

/// RFC 3339 UTC time, e.g. `2025-01-31T12:00:00Z`.
pub fn rfc3339(unix_s: f64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix_s);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Compact form for file names, e.g. `20250131T120000Z`.
pub fn compact_time(unix_s: f64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix_s);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// Calendar date and time of a Unix time (Howard Hinnant's days-to-civil algorithm), so no date
/// crate is needed.
fn civil(unix_s: f64) -> (i64, u32, u32, u32, u32, u32) {
    let secs = unix_s.max(0.0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599.0), "2024-12-31T23:59:59Z");
        assert_eq!(compact_time(1_735_689_600.0), "20250101T000000Z");
    }
}
