//! Number formatting shared by every section.

use bakeoff_record::stats::Estimate;

/// Three significant digits, without scientific notation for the ranges the report shows.
pub fn sig(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    let d = if a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else if a >= 0.1 {
        3
    } else if a >= 0.01 {
        4
    } else {
        5
    };
    format!("{x:.d$}")
}

pub(crate) fn est(e: Option<&Estimate>) -> String {
    match e {
        Some(e) if e.n >= 2 => format!("{} ± {}", sig(e.mean), sig(e.ci95_half())),
        Some(e) => format!("{} (1 run)", sig(e.mean)),
        None => "n/a".into(),
    }
}

pub(crate) fn gib(b: Option<u64>) -> String {
    match b {
        Some(b) if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{} MiB", sig(b as f64 / (1u64 << 20) as f64)),
        None => "n/a".into(),
    }
}

pub(crate) fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}×")
    } else {
        "n/a".into()
    }
}
