//! The summary table of a results file (the file's schema is `bakeoff_record::eval`).

use std::fmt::Write as _;

pub use bakeoff_record::eval::{ModelResult, Results, Scale};

use crate::data::FileRecord;

fn f(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "-".into()
    }
}

/// The human summary.
pub fn table(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "bakeoff eval · profile {} · {:.0} s · audit: {}",
        r.profile, r.seconds, r.audit_file
    );
    let bad: Vec<&FileRecord> = r
        .data_files
        .iter()
        .filter(|f| f.known_match == Some(false))
        .collect();
    let _ = writeln!(
        s,
        "data: {} files hashed, {} match the pinned SHA-256{}",
        r.data_files.len(),
        r.data_files
            .iter()
            .filter(|f| f.known_match == Some(true))
            .count(),
        if bad.is_empty() {
            String::new()
        } else {
            format!(
                ", {} DIFFER: {}",
                bad.len(),
                bad.iter()
                    .map(|f| f.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    if !r.ids_match_rule {
        let _ = writeln!(
            s,
            "warning: the frozen item lists differ from what the selection rule gives on this data"
        );
    }
    if let Some(sb) = &r.sandbox {
        let _ = writeln!(
            s,
            "sandbox: python {} · pid/mount/network namespaces {} · uid {} · landlock {} · seccomp {} · cgroup {}{}",
            sb.python_version,
            if sb.pid_namespace && sb.mount_namespace && sb.network_namespace {
                "yes"
            } else {
                "NO"
            },
            sb.uid
                .or(sb.dropped_uid)
                .map(|u| u.to_string())
                .unwrap_or_else(|| "not dropped".into()),
            sb.landlock_abi
                .map(|v| format!("ABI {v}"))
                .unwrap_or_else(|| "no".into()),
            if sb.seccomp { "yes" } else { "no" },
            sb.cgroup.as_deref().unwrap_or("none"),
            if sb.unsafe_no_sandbox {
                " · UNSAFE: --unsafe-no-sandbox"
            } else {
                ""
            }
        );
    }
    for m in &r.models {
        let _ = writeln!(s, "\n== {} ({:.0} s)", m.label, m.seconds);
        let _ = writeln!(
            s,
            "{:<17} {:<22} {:>7} {:>5} {:>15} {:>6} {:>16}",
            "component", "metric", "value", "n", "95% CI", "chance", "1-10 (CI)"
        );
        for c in &m.components {
            let h = &c.headline;
            if !c.scored {
                let extra: Vec<String> = c
                    .numbers
                    .iter()
                    .map(|(k, v)| format!("{k} {}", f(*v, 3)))
                    .collect();
                let _ = writeln!(s, "{:<17} {}  (not scored)", c.name, extra.join(" · "));
                continue;
            }
            let _ = writeln!(
                s,
                "{:<17} {:<22} {:>7} {:>5} {:>15} {:>6} {:>16}",
                c.name,
                c.metric,
                f(h.value, 3),
                h.n,
                format!("{}-{}", f(h.ci95.0, 3), f(h.ci95.1, 3)),
                f(c.chance, 2),
                format!(
                    "{} ({}-{})",
                    f(c.score10, 1),
                    f(c.score10_ci.0, 1),
                    f(c.score10_ci.1, 1)
                ),
            );
            for (k, o) in &c.other {
                let _ = writeln!(
                    s,
                    "{:<17} {:<22} {:>7} {:>5} {:>15}",
                    "",
                    k,
                    f(o.value, 3),
                    o.n,
                    format!("{}-{}", f(o.ci95.0, 3), f(o.ci95.1, 3))
                );
            }
            if !c.numbers.is_empty() {
                let extra: Vec<String> = c
                    .numbers
                    .iter()
                    .map(|(k, v)| format!("{k} {}", f(*v, 2)))
                    .collect();
                let _ = writeln!(s, "{:<17} {}", "", extra.join(" · "));
            }
            if let Some(n) = &c.note {
                let _ = writeln!(s, "{:<17} note: {n}", "");
            }
        }
        let _ = writeln!(
            s,
            "-- categories (1-10; band = weighted mean of the mapped CI endpoints)"
        );
        for c in &m.categories {
            let w: Vec<String> = c
                .weights
                .iter()
                .map(|(n, w)| format!("{n} {w:.2}"))
                .collect();
            let _ = writeln!(
                s,
                "{:<22} {:>5} ({}-{})  = {}{}",
                c.name,
                f(c.score10, 1),
                f(c.band.0, 1),
                f(c.band.1, 1),
                w.join(" + "),
                if c.confidence.starts_with("low") {
                    "  [LOW CONFIDENCE: proxy, no judge]"
                } else {
                    ""
                }
            );
        }
        if let Some(o) = &m.overall {
            let w: Vec<String> = o
                .weights
                .iter()
                .map(|(n, w)| format!("{n} {w:.3}"))
                .collect();
            let _ = writeln!(
                s,
                "{:<22} {:>5}  = {} ({})",
                "overall",
                f(o.score10, 1),
                w.join(" + "),
                o.note
            );
        }
    }
    if !r.comparisons.is_empty() {
        let _ = writeln!(
            s,
            "\n== paired comparisons (same items; exact McNemar for right/wrong, paired bootstrap otherwise; α = 0.05)"
        );
        for c in &r.comparisons {
            let p = &c.paired;
            let disc = match (p.only_a, p.only_b) {
                (Some(a), Some(b)) => format!("only A {a}, only B {b}"),
                _ => p
                    .diff_ci
                    .map(|(l, h)| format!("diff CI {}..{}", f(l, 3), f(h, 3)))
                    .unwrap_or_default(),
            };
            let _ = writeln!(
                s,
                "{:<17} A={} {} vs B={} {} · n {} · {} · p {} → {}",
                c.component,
                c.a,
                f(p.mean_a, 3),
                c.b,
                f(p.mean_b, 3),
                p.n,
                disc,
                f(p.p_value, 4),
                p.verdict.as_str()
            );
        }
    }
    let _ = writeln!(s, "\nscale: {}", r.scale.formula);
    let _ = writeln!(
        s,
        "categories: {}",
        r.scale
            .categories
            .iter()
            .map(|(n, p)| format!(
                "{n} = {}",
                p.iter()
                    .map(|(c, w)| format!("{w} {c}"))
                    .collect::<Vec<_>>()
                    .join(" + ")
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        s,
        "creativity: {}; overall: {}",
        r.scale.creativity_rule, r.scale.overall_rule
    );
    if let Some(j) = &r.judge {
        let _ = writeln!(s, "judge: {}", j);
    }
    s
}
