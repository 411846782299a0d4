//! Every results file starts with a [`ResultsHeader`]: what kind of file it is and the version of
//! that kind's schema. [`ResultsFile::parse`] recognises any file by its header, and files written
//! before headers existed by [`legacy_header`], one rule per kind in one place.

use serde::{Deserialize, Serialize};

use crate::bench::BenchReport;
use crate::compare::{Answers, Manifest};
use crate::eval::Results as EvalResults;
use crate::quantize::QuantizeResults;
use crate::routing::RouterCalibration;

/// What a results file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultsKind {
    /// `bakeoff bench`: speed, latency and memory per scenario.
    Bench,
    /// `bakeoff eval`: quality per category.
    Eval,
    /// `bakeoff compare`: both models' answers to the fixed prompts.
    Answers,
    /// `bakeoff compare`: what was run (`compare.json`).
    Manifest,
    /// `bakeoff quantize --measure`: quality and speed of quantized files against a reference.
    Quantize,
    /// `bakeoff route calibrate`: the complexity router fitted on eval results.
    Routing,
}

impl ResultsKind {
    pub const ALL: [ResultsKind; 6] = [
        ResultsKind::Bench,
        ResultsKind::Eval,
        ResultsKind::Answers,
        ResultsKind::Manifest,
        ResultsKind::Quantize,
        ResultsKind::Routing,
    ];

    /// The newest schema version of this kind, the one this build writes. Bumped on any change
    /// that an older reader would misread; every version up to it still reads.
    pub fn current_version(self) -> u32 {
        match self {
            ResultsKind::Bench => crate::bench::SCHEMA_VERSION,
            ResultsKind::Eval => crate::eval::SCHEMA_VERSION,
            ResultsKind::Answers | ResultsKind::Manifest => crate::compare::SCHEMA_VERSION,
            ResultsKind::Quantize => crate::quantize::SCHEMA_VERSION,
            ResultsKind::Routing => crate::routing::SCHEMA_VERSION,
        }
    }

    /// How the report names the kind in its sources section.
    pub fn describe(self) -> &'static str {
        match self {
            ResultsKind::Bench => "bench",
            ResultsKind::Eval => "eval",
            ResultsKind::Answers => "answers",
            ResultsKind::Manifest => "compare manifest",
            ResultsKind::Quantize => "quantize measurements",
            ResultsKind::Routing => "router calibration",
        }
    }

    /// The header this build writes for the kind.
    pub fn header(self) -> ResultsHeader {
        ResultsHeader {
            kind: self,
            schema_version: self.current_version(),
        }
    }
}

/// The first two fields of every results file (flattened into its top level).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultsHeader {
    pub kind: ResultsKind,
    pub schema_version: u32,
}

/// The header of a file written before headers existed, from the marks each writer left then:
/// bench files had `run_id` and `schema_version`, eval files `tool: "bakeoff-eval …"`, and the
/// others a `schema` string (`bakeoff.answers/1`, `bakeoff.compare/1`,
/// `bakeoff.quantize.measure/1`). `Err` for a `bakeoff.` schema this build does not know;
/// `Ok(None)` for anything else.
pub fn legacy_header(v: &serde_json::Value) -> Result<Option<ResultsHeader>, String> {
    let version = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    if v.get("run_id").is_some()
        && let Some(n) = v.get("schema_version").and_then(|s| s.as_u64())
    {
        return Ok(Some(ResultsHeader {
            kind: ResultsKind::Bench,
            schema_version: version(n),
        }));
    }
    if v.get("run_id").is_some() && v.get("schema_version").is_some() {
        return Err("bench results with a schema_version that is not a number".into());
    }
    if v.get("tool")
        .and_then(|t| t.as_str())
        .is_some_and(|t| t.starts_with("bakeoff-eval"))
    {
        return Ok(Some(ResultsHeader {
            kind: ResultsKind::Eval,
            schema_version: 1,
        }));
    }
    let Some(schema) = v.get("schema").and_then(|s| s.as_str()) else {
        return Ok(None);
    };
    let Some((name, n)) = schema.rsplit_once('/') else {
        return legacy_unknown(schema);
    };
    let kind = match name {
        "bakeoff.answers" => ResultsKind::Answers,
        "bakeoff.compare" => ResultsKind::Manifest,
        "bakeoff.quantize.measure" => ResultsKind::Quantize,
        _ => return legacy_unknown(schema),
    };
    match n.parse::<u32>() {
        Ok(n) => Ok(Some(ResultsHeader {
            kind,
            schema_version: n,
        })),
        Err(_) => legacy_unknown(schema),
    }
}

fn legacy_unknown(schema: &str) -> Result<Option<ResultsHeader>, String> {
    if schema.starts_with("bakeoff.") {
        Err(format!("unknown schema `{schema}`"))
    } else {
        Ok(None)
    }
}

/// A results file of any kind, typed.
#[derive(Clone, Debug)]
pub enum ResultsFile {
    Bench(Box<BenchReport>),
    Eval(Box<EvalResults>),
    Answers(Answers),
    Manifest(Manifest),
    Quantize(Box<QuantizeResults>),
    Routing(Box<RouterCalibration>),
}

impl ResultsFile {
    pub fn kind(&self) -> ResultsKind {
        match self {
            ResultsFile::Bench(_) => ResultsKind::Bench,
            ResultsFile::Eval(_) => ResultsKind::Eval,
            ResultsFile::Answers(_) => ResultsKind::Answers,
            ResultsFile::Manifest(_) => ResultsKind::Manifest,
            ResultsFile::Quantize(_) => ResultsKind::Quantize,
            ResultsFile::Routing(_) => ResultsKind::Routing,
        }
    }

    /// Parses any results file: recognised by its header, or by [`legacy_header`] when it has
    /// none (the legacy header is then added before the typed read). Refuses versions newer
    /// than this build reads. The error says what is wrong, without the path.
    pub fn parse(bytes: &[u8]) -> Result<ResultsFile, String> {
        let mut v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
        let header = header_of(&v)?;
        let newest = header.kind.current_version();
        if header.schema_version > newest {
            return Err(format!(
                "{} results of schema version {}; this bakeoff reads version {newest} and older",
                header.kind.describe(),
                header.schema_version
            ));
        }
        if let Some(o) = v.as_object_mut() {
            let h = serde_json::to_value(header).map_err(|e| e.to_string())?;
            if let Some(h) = h.as_object() {
                for (k, x) in h {
                    o.insert(k.clone(), x.clone());
                }
            }
        }
        fn typed<T: serde::de::DeserializeOwned>(
            v: serde_json::Value,
            what: &str,
        ) -> Result<T, String> {
            serde_json::from_value(v).map_err(|e| format!("{what}: {e}"))
        }
        Ok(match header.kind {
            ResultsKind::Bench => ResultsFile::Bench(Box::new(typed(v, "bench results")?)),
            ResultsKind::Eval => ResultsFile::Eval(Box::new(typed(v, "eval results")?)),
            ResultsKind::Answers => ResultsFile::Answers(typed(v, "answers")?),
            ResultsKind::Manifest => ResultsFile::Manifest(typed(v, "compare manifest")?),
            ResultsKind::Quantize => {
                ResultsFile::Quantize(Box::new(typed(v, "quantize measurements")?))
            }
            ResultsKind::Routing => ResultsFile::Routing(Box::new(typed(v, "router calibration")?)),
        })
    }
}

/// The header of a parsed file: its own, else the legacy one.
fn header_of(v: &serde_json::Value) -> Result<ResultsHeader, String> {
    if let Some(kind) = v.get("kind") {
        let kind: ResultsKind = serde_json::from_value(kind.clone()).map_err(|_| {
            format!(
                "unknown results kind {kind}; this bakeoff reads {}",
                ResultsKind::ALL
                    .iter()
                    .map(|k| k.describe())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let n = v
            .get("schema_version")
            .and_then(|n| n.as_u64())
            .ok_or("a results header without a numeric schema_version")?;
        return Ok(ResultsHeader {
            kind,
            schema_version: u32::try_from(n).unwrap_or(u32::MAX),
        });
    }
    legacy_header(v)?.ok_or_else(|| {
        "not a bakeoff results file (bench, eval, answers, compare.json or quantize --measure)"
            .into()
    })
}

/// Writes a results record as pretty JSON with a final newline, creating its folder; atomic
/// ([`crate::fsio::write_atomic`]), so an interrupted write keeps the previous file.
pub fn write_json<T: Serialize>(path: &std::path::Path, record: &T) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(record).map_err(std::io::Error::other)?;
    crate::fsio::write_atomic(path, (text + "\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn legacy_files_are_recognised_by_their_old_marks() {
        let h = |v: serde_json::Value| legacy_header(&v);
        let hd = |kind, schema_version| {
            Ok(Some(ResultsHeader {
                kind,
                schema_version,
            }))
        };
        assert_eq!(
            h(json!({"run_id": "x", "schema_version": 1})),
            hd(ResultsKind::Bench, 1)
        );
        assert_eq!(
            h(json!({"tool": "bakeoff-eval 0.1.0"})),
            hd(ResultsKind::Eval, 1)
        );
        assert_eq!(
            h(json!({"schema": "bakeoff.answers/1"})),
            hd(ResultsKind::Answers, 1)
        );
        assert_eq!(
            h(json!({"schema": "bakeoff.compare/1"})),
            hd(ResultsKind::Manifest, 1)
        );
        assert_eq!(
            h(json!({"schema": "bakeoff.quantize.measure/2"})),
            hd(ResultsKind::Quantize, 2)
        );
        assert!(h(json!({"schema": "bakeoff.other/1"})).is_err());
        assert_eq!(h(json!({"schema": "someone-else/1"})), Ok(None));
        assert_eq!(h(json!({"tool": "other"})), Ok(None));
    }

    #[test]
    fn headers_are_read_and_future_versions_refused() {
        let e = ResultsFile::parse(br#"{"kind": "bench", "schema_version": 999}"#)
            .err()
            .unwrap_or_default();
        assert!(e.contains("schema version 999"), "{e}");
        let e = ResultsFile::parse(br#"{"kind": "weather", "schema_version": 1}"#)
            .err()
            .unwrap_or_default();
        assert!(e.contains("unknown results kind"), "{e}");
        let e = ResultsFile::parse(br#"{"hello": 1}"#)
            .err()
            .unwrap_or_default();
        assert!(e.contains("not a bakeoff results file"), "{e}");
    }
}
