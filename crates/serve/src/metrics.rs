//! Prometheus metrics in the text exposition format (version 0.0.4), kept in one small
//! registry. A handful of families at a few thousand updates a second does not need a metrics
//! crate; a mutex around ordered maps keeps the output stable, which tests and diffs like.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Metric families: name, type, help, and histogram buckets.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    buckets: &'static [f64],
}

const SECONDS_TTFT: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const SECONDS_ITL: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const SECONDS_REQ: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

const FAMILIES: &[Family] = &[
    Family {
        name: "bakeoff_requests_total",
        kind: "counter",
        help: "HTTP requests by endpoint and status code.",
        buckets: &[],
    },
    Family {
        name: "bakeoff_errors_total",
        kind: "counter",
        help: "Errors seen by clients (error responses and streams that failed), by kind.",
        buckets: &[],
    },
    Family {
        name: "bakeoff_replica_failures_total",
        kind: "counter",
        help: "Failed attempts at a replica (the router may have served the request elsewhere), by model and kind.",
        buckets: &[],
    },
    Family {
        name: "bakeoff_prompt_tokens_total",
        kind: "counter",
        help: "Prompt tokens of served requests, by model.",
        buckets: &[],
    },
    Family {
        name: "bakeoff_generated_tokens_total",
        kind: "counter",
        help: "Tokens generated for clients, by model.",
        buckets: &[],
    },
    Family {
        name: "bakeoff_time_to_first_token_seconds",
        kind: "histogram",
        help: "From request arrival to the first generated token, by model.",
        buckets: SECONDS_TTFT,
    },
    Family {
        name: "bakeoff_inter_token_latency_seconds",
        kind: "histogram",
        help: "Gap between consecutive generated tokens, by model.",
        buckets: SECONDS_ITL,
    },
    Family {
        name: "bakeoff_request_duration_seconds",
        kind: "histogram",
        help: "From request arrival to the last token, by model.",
        buckets: SECONDS_REQ,
    },
    Family {
        name: "bakeoff_route_decisions_total",
        kind: "counter",
        help: "Which tier served a request and why (policy, requested, fallback, cascade_accept, cascade_escalate).",
        buckets: &[],
    },
    Family {
        name: "bakeoff_fallbacks_total",
        kind: "counter",
        help: "Requests served by another tier or replica after a failure.",
        buckets: &[],
    },
    Family {
        name: "bakeoff_client_disconnects_total",
        kind: "counter",
        help: "Responses dropped by the client before the end of generation.",
        buckets: &[],
    },
    Family {
        name: "bakeoff_engine_restarts_total",
        kind: "counter",
        help: "Times a model's worker panicked and was restarted (its requests in flight failed with 500).",
        buckets: &[],
    },
    Family {
        name: "bakeoff_connections_refused_total",
        kind: "counter",
        help: "Connections answered 503 and closed because max_connections were open.",
        buckets: &[],
    },
    Family {
        name: "bakeoff_engine_cancelled_total",
        kind: "counter",
        help: "Generations the engine stopped because their client went away or timed out.",
        buckets: &[],
    },
    Family {
        name: "bakeoff_engine_prefilled_tokens_total",
        kind: "counter",
        help: "Prompt tokens the engine computed.",
        buckets: &[],
    },
    Family {
        name: "bakeoff_engine_cached_tokens_total",
        kind: "counter",
        help: "Prompt tokens reused from a KV-cache slot instead of computed.",
        buckets: &[],
    },
    Family {
        name: "bakeoff_engine_kv_cache_bytes",
        kind: "gauge",
        help: "KV-cache memory a local model holds (running sequences and idle slots kept for prefix reuse).",
        buckets: &[],
    },
    Family {
        name: "bakeoff_engine_batch_size",
        kind: "histogram",
        help: "Sequences in each forward pass of a local model.",
        buckets: BATCH,
    },
    Family {
        name: "bakeoff_queue_depth",
        kind: "gauge",
        help: "Requests waiting for a batch slot, by model.",
        buckets: &[],
    },
    Family {
        name: "bakeoff_active_sequences",
        kind: "gauge",
        help: "Sequences being generated, by model.",
        buckets: &[],
    },
    Family {
        name: "bakeoff_outstanding_requests",
        kind: "gauge",
        help: "Requests a replica is serving (the load balancer's measure).",
        buckets: &[],
    },
    Family {
        name: "bakeoff_replica_up",
        kind: "gauge",
        help: "1 when a replica is healthy and not cooling down.",
        buckets: &[],
    },
];

type Labels = Vec<(String, String)>;

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Registry {
    values: BTreeMap<(&'static str, Labels), f64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Registry>,
}

/// Labels sorted by name, so the same series has one key whatever order the caller used.
fn labels(l: &[(&str, &str)]) -> Labels {
    let mut v: Labels = l
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

fn family(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.name == name)
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        // A panic while holding the lock must not take the metrics down with it.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub fn inc(&self, name: &'static str, l: &[(&str, &str)]) {
        self.add(name, l, 1.0);
    }

    pub fn add(&self, name: &'static str, l: &[(&str, &str)], v: f64) {
        self.with(|r| *r.values.entry((name, labels(l))).or_default() += v);
    }

    pub fn set(&self, name: &'static str, l: &[(&str, &str)], v: f64) {
        self.with(|r| {
            r.values.insert((name, labels(l)), v);
        });
    }

    pub fn observe(&self, name: &'static str, l: &[(&str, &str)], v: f64) {
        let buckets = family(name).map_or(&[][..], |f| f.buckets);
        self.with(|r| {
            let h = r.histograms.entry((name, labels(l))).or_default();
            if h.counts.len() != buckets.len() {
                h.counts = vec![0; buckets.len()];
            }
            for (i, b) in buckets.iter().enumerate() {
                if v <= *b {
                    h.counts[i] += 1;
                }
            }
            h.sum += v;
            h.count += 1;
        });
    }

    /// The current value of a counter or gauge (0 when never set), for tests and /health.
    pub fn get(&self, name: &'static str, l: &[(&str, &str)]) -> f64 {
        self.with(|r| r.values.get(&(name, labels(l))).copied().unwrap_or(0.0))
    }

    /// The Prometheus text exposition of every family, including those with no samples yet
    /// (their HELP and TYPE lines), so scrapers and readers see the full list.
    pub fn render(&self) -> String {
        self.with(|r| {
            let mut out = String::new();
            for f in FAMILIES {
                let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
                let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
                if f.kind == "histogram" {
                    for ((n, l), h) in r.histograms.iter().filter(|((n, _), _)| *n == f.name) {
                        for (i, b) in f.buckets.iter().enumerate() {
                            let le = format_float(*b);
                            let _ = writeln!(
                                out,
                                "{n}_bucket{} {}",
                                fmt_labels(l, Some(&le)),
                                h.counts.get(i).copied().unwrap_or(0)
                            );
                        }
                        let _ =
                            writeln!(out, "{n}_bucket{} {}", fmt_labels(l, Some("+Inf")), h.count);
                        let _ = writeln!(
                            out,
                            "{n}_sum{} {}",
                            fmt_labels(l, None),
                            format_float(h.sum)
                        );
                        let _ = writeln!(out, "{n}_count{} {}", fmt_labels(l, None), h.count);
                    }
                } else {
                    for ((n, l), v) in r.values.iter().filter(|((n, _), _)| *n == f.name) {
                        let _ = writeln!(out, "{n}{} {}", fmt_labels(l, None), format_float(*v));
                    }
                }
            }
            out
        })
    }
}

fn fmt_labels(l: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Label values escape backslash, double quote and newline, as the format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_float(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_types_buckets_and_escaped_labels() {
        let m = Metrics::new();
        m.inc(
            "bakeoff_requests_total",
            &[("endpoint", "/v1/chat/completions"), ("status", "200")],
        );
        m.observe(
            "bakeoff_time_to_first_token_seconds",
            &[("model", "a\"b")],
            0.03,
        );
        m.observe(
            "bakeoff_time_to_first_token_seconds",
            &[("model", "a\"b")],
            0.3,
        );
        let t = m.render();
        assert!(t.contains("# TYPE bakeoff_requests_total counter"), "{t}");
        assert!(
            t.contains(
                "bakeoff_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 1"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "bakeoff_time_to_first_token_seconds_bucket{model=\"a\\\"b\",le=\"0.05\"} 1"
            ),
            "{t}"
        );
        assert!(
            t.contains("bakeoff_time_to_first_token_seconds_bucket{model=\"a\\\"b\",le=\"0.5\"} 2"),
            "{t}"
        );
        assert!(
            t.contains(
                "bakeoff_time_to_first_token_seconds_bucket{model=\"a\\\"b\",le=\"+Inf\"} 2"
            ),
            "{t}"
        );
        assert!(
            t.contains("bakeoff_time_to_first_token_seconds_count{model=\"a\\\"b\"} 2"),
            "{t}"
        );
        assert_eq!(
            m.get(
                "bakeoff_requests_total",
                &[("endpoint", "/v1/chat/completions"), ("status", "200")]
            ),
            1.0
        );
    }
}
