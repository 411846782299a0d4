//! Reading results files. The report is computed from these and nothing else, so each file is
//! hashed on the way in and named, with its hash, in the report's sources section. Each file is
//! recognised by its header ([`ResultsFile::parse`]; files from before headers by their old marks).

use std::path::{Path, PathBuf};

use bakeoff_record::ResultsFile;
use bakeoff_record::bench::BenchReport;
use bakeoff_record::compare::{Answers, Manifest};
use bakeoff_record::eval::Results as EvalResults;
use bakeoff_record::hash::sha256_hex;
use bakeoff_record::quantize::QuantizeResults;
use bakeoff_record::routing::RouterCalibration;

use crate::error::{ReportError, Result};

/// The fixed prompts every compare run answers with both models (the seed report's three).
pub const FIXED_PROMPTS: [&str; 3] = [
    "Explain artificial intelligence in simple terms",
    "Write a simple Python function to calculate fibonacci numbers",
    "Write a short story about a robot learning to paint",
];

/// One file the report was computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// The path as given (so a report built from relative paths is the same on every machine).
    pub path: String,
    pub kind: &'static str,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub sources: Vec<Source>,
    pub bench: Option<BenchReport>,
    pub eval: Option<EvalResults>,
    pub answers: Option<Answers>,
    pub manifest: Option<Manifest>,
    pub quant: Vec<QuantizeResults>,
    pub routing: Option<RouterCalibration>,
    /// SHA-256 of a model file → the Hugging Face repository of its original weights (from the
    /// model catalog; the caller fills it), to find the scores the model's authors published.
    pub bases: std::collections::BTreeMap<String, String>,
}

/// The files `bakeoff compare` writes into its output folder, so `bakeoff report DIR` finds them.
pub const COMPARE_FILES: [&str; 5] = [
    "compare.json",
    "bench.json",
    "eval/results.json",
    "answers.json",
    "routing.json",
];

impl Inputs {
    /// Reads results files (or compare output folders), recognising each by its content.
    pub fn load(paths: &[PathBuf]) -> Result<Inputs> {
        if paths.is_empty() {
            return Err(ReportError::Input(
                "no results files given (bench, eval, answers, compare.json, routing.json or quantize --measure results, or a compare output folder)".into(),
            ));
        }
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                let mut found: Vec<PathBuf> = COMPARE_FILES
                    .iter()
                    .map(|f| p.join(f))
                    .filter(|f| f.is_file())
                    .collect();
                // `compare --quantize-results` copies its files in as quantize-N.json.
                let mut quant: Vec<PathBuf> = std::fs::read_dir(p)
                    .map_err(|e| ReportError::io(p, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| {
                        f.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("quantize-") && n.ends_with(".json"))
                    })
                    .collect();
                quant.sort();
                found.extend(quant);
                if found.is_empty() {
                    return Err(ReportError::Input(format!(
                        "{}: a folder without any of {}",
                        p.display(),
                        COMPARE_FILES.join(", ")
                    )));
                }
                files.extend(found);
            } else {
                files.push(p.clone());
            }
        }
        let mut inputs = Inputs::default();
        for f in &files {
            inputs.add(f)?;
        }
        if inputs.bench.is_none() && inputs.eval.is_none() {
            return Err(ReportError::Input(
                "neither a bench nor an eval results file among the inputs: nothing to report"
                    .into(),
            ));
        }
        Ok(inputs)
    }

    fn add(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| ReportError::io(path, e))?;
        let sha256 = sha256_hex(&bytes);
        let bad = |msg: String| ReportError::Results {
            path: path.into(),
            msg,
        };
        if let Err(source) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            return Err(ReportError::Json {
                path: path.into(),
                source,
            });
        }
        let file = ResultsFile::parse(&bytes).map_err(bad)?;
        let kind = file.kind();
        match file {
            ResultsFile::Bench(r) => {
                if r.models.is_empty() {
                    return Err(bad("bench results without any model".into()));
                }
                set_once(&mut self.bench, *r, "bench", path)?;
            }
            ResultsFile::Eval(r) => {
                if r.models.is_empty() {
                    return Err(bad("eval results without any model".into()));
                }
                set_once(&mut self.eval, *r, "eval", path)?;
            }
            ResultsFile::Answers(r) => set_once(&mut self.answers, r, "answers", path)?,
            ResultsFile::Manifest(r) => set_once(&mut self.manifest, r, "compare manifest", path)?,
            ResultsFile::Quantize(r) => self.quant.push(*r),
            ResultsFile::Routing(r) => set_once(&mut self.routing, *r, "router calibration", path)?,
        }
        self.sources.push(Source {
            path: path.display().to_string(),
            kind: kind.describe(),
            bytes: bytes.len() as u64,
            sha256,
        });
        Ok(())
    }
}

fn set_once<T>(slot: &mut Option<T>, v: T, what: &str, path: &Path) -> Result<()> {
    if slot.is_some() {
        return Err(ReportError::Input(format!(
            "{}: a second {what} results file; a report covers one run of each",
            path.display()
        )));
    }
    *slot = Some(v);
    Ok(())
}
