//! `bakeoff eval`: quality scores per category from public benchmarks and verifiable checks,
//! with n, 95% intervals, paired tests between models, a results file and a JSONL audit trail.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bakeoff_engine::loader::LoadOptions;
use bakeoff_eval::audit::Audit;
use bakeoff_eval::candidate::EngineCandidate;
use bakeoff_eval::data::{self, DataDir};
use bakeoff_eval::journal::{Journal, Journaled};
use bakeoff_eval::judge::{self, Judge, JudgeBackend};
use bakeoff_eval::report::{ModelResult, Results, Scale, table};
use bakeoff_eval::sandbox::{Limits, Sandbox, SandboxPolicy};
use bakeoff_eval::score::{self, Component};
use bakeoff_eval::select::{Profile, RULE_SALT};
use bakeoff_eval::suite::{COMPONENTS, Generated, Plan, run_model};
use bakeoff_record::hash::{sha256_file, sha256_hex};
use bakeoff_record::{FileDigest, ModelIdentity, ResultsKind};
use clap::Args;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A model to evaluate (repeat for a paired comparison): folder, .gguf file, hub id or catalog name.
    #[arg(long = "model", short = 'm', required = true)]
    pub models: Vec<String>,
    /// quick (minutes), standard (about an hour per 1.5B model on 2 cores) or full (everything).
    #[arg(long, default_value = "quick")]
    pub profile: String,
    /// Data sets laid out like ../shared/evaldata.
    #[arg(long, env = "BAKEOFF_EVAL_DATA", default_value = "../shared/evaldata")]
    pub data_dir: PathBuf,
    /// Judge for MT-Bench: a local model (folder, .gguf, hub id) or an OpenAI-compatible base URL
    /// (http://host:port/v1). Must not be a candidate or of a candidate's family.
    #[arg(long)]
    pub judge: Option<String>,
    /// Model name to send to a judge endpoint.
    #[arg(long)]
    pub judge_model: Option<String>,
    /// Environment variable holding the judge endpoint's API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub judge_key_env: String,
    /// Folder for results.json, audit.jsonl and items.jsonl (every model response, appended as
    /// it arrives, for --resume).
    #[arg(long, default_value = "eval-results")]
    pub out: PathBuf,
    /// Continue an interrupted run in --out: responses already in items.jsonl are reused, the
    /// rest are generated. Refused when the models' files or the flags differ from that run.
    #[arg(long)]
    pub resume: bool,
    /// Summary on stdout: table or json.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Run only these components (comma-separated): mmlu, arc_challenge, hellaswag, truthfulqa_mc,
    /// wikitext, gsm8k, ifeval, creativity_proxy, mt_bench, humaneval, mbpp, hygiene.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Wall-clock seconds per HumanEval/MBPP program.
    #[arg(long, default_value_t = 10.0)]
    pub code_timeout: f64,
    /// Run HumanEval/MBPP programs even where the sandbox cannot create its namespaces (rlimits,
    /// seccomp and, as root, an unprivileged uid only); `results.json` records it. Without this
    /// flag such a system refuses to run model-written code.
    #[arg(long)]
    pub unsafe_no_sandbox: bool,
    /// cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Keep only the first N items of each component of the profile (in the rule's order), for
    /// smoke runs such as `compare --demo`; the results record it in `profile`.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Cap the new tokens of every generative component (GSM8K, IFEval, code, MT-Bench) below the
    /// profile's own caps.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Generations run together in one batched forward pass (1 = one at a time, as a server
    /// without batching would). Greedy outputs can differ from one-at-a-time runs where the
    /// batched kernels' rounding flips a near-tie; the results record the value.
    #[arg(long, default_value_t = bakeoff_eval::select::DEFAULT_GEN_BATCH)]
    pub batch: usize,
    /// Print the item ids the profile's rule selects on this data (JSON) and exit.
    #[arg(long, hide = true)]
    pub print_ids: bool,
}

fn label_for(source: &str, taken: &[String]) -> String {
    let p = Path::new(source);
    let base = if p.exists() {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| source.to_string())
    } else {
        source.to_string()
    };
    let mut label = base.clone();
    let mut i = 2;
    while taken.contains(&label) {
        label = format!("{base}#{i}");
        i += 1;
    }
    label
}

/// Applies `--limit` and `--max-new-tokens`; returns the profile's name as the results record it.
fn shorten_plan(
    plan: &mut Plan,
    profile: Profile,
    limit: Option<usize>,
    max_new: Option<usize>,
) -> Result<String> {
    let mut label = profile.as_str().to_string();
    if let Some(n) = limit {
        if n == 0 {
            bail!("--limit must be at least 1");
        }
        plan.mmlu.truncate(n);
        plan.arc_challenge.truncate(n);
        plan.hellaswag.truncate(n);
        plan.truthfulqa.truncate(n);
        plan.gsm8k.truncate(n);
        plan.ifeval.truncate(n);
        plan.ifeval_creative.truncate(n);
        plan.humaneval.truncate(n);
        plan.mbpp.truncate(n);
        plan.mt_bench.truncate(n);
        plan.sizes.wikitext_chunks = Some(plan.sizes.wikitext_chunks.map_or(n, |c| c.min(n)));
        label.push_str(&format!(", first {n} items per component"));
    }
    if let Some(m) = max_new {
        if m == 0 {
            bail!("--max-new-tokens must be at least 1");
        }
        let s = &mut plan.sizes;
        s.gsm8k_max_tokens = s.gsm8k_max_tokens.min(m);
        s.ifeval_max_tokens = s.ifeval_max_tokens.min(m);
        s.code_max_tokens = s.code_max_tokens.min(m);
        s.mt_bench_max_tokens = s.mt_bench_max_tokens.min(m);
        label.push_str(&format!(", at most {m} new tokens"));
    }
    Ok(label)
}

pub fn run(a: EvalArgs) -> Result<()> {
    let started = Instant::now();
    let profile: Profile = a.profile.parse()?;
    if a.format != "table" && a.format != "json" {
        bail!("--format must be table or json");
    }
    for o in &a.only {
        if !COMPONENTS.contains(&o.as_str()) {
            bail!(
                "--only: unknown component `{o}` ({})",
                COMPONENTS.join(", ")
            );
        }
    }
    let mut plan = Plan::load(&a.data_dir, profile).with_context(|| {
        format!(
            "cannot read the evaluation data in {}",
            a.data_dir.display()
        )
    })?;
    if a.print_ids {
        println!("{}", serde_json::to_string_pretty(&plan.derived_ids)?);
        return Ok(());
    }
    plan.only = a.only.clone();
    let profile_label = shorten_plan(&mut plan, profile, a.limit, a.max_new_tokens)?;
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    plan.sizes.gen_batch = a.batch;
    if !plan.ids_match_rule {
        eprintln!(
            "warning: the frozen item lists differ from the selection rule on this data; using the frozen lists"
        );
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let results_path = a.out.join("results.json");
    let audit_path = a.out.join("audit.jsonl");
    let items_path = a.out.join("items.jsonl");
    let config = config_sha256(&a, &plan, &profile_label)?;
    let mut journal = if a.resume {
        let j = Journal::resume(&items_path, &config)?;
        let earlier = match j.earlier_seconds() {
            Some(s) => format!("; the runs before this one took {s:.0} s, counted in its times"),
            None => "; their time is unknown (a journal without timestamps), so the times reported cover this run only".into(),
        };
        eprintln!(
            "resuming: {} responses recorded in {}{earlier}",
            j.len(),
            items_path.display()
        );
        j
    } else {
        Journal::create(&items_path, &config)?
    };
    // Opened only once the journal accepted the run, so a refused --resume truncates nothing. A
    // resumed run replays every item through the suite again, so the audit trail is rebuilt
    // whole rather than appended to (appending would list the finished items twice).
    let mut audit = Audit::to_file(&audit_path)?;

    let wants_code = (plan.only.is_empty()
        || plan.only.iter().any(|o| o == "humaneval" || o == "mbpp"))
        && (!plan.humaneval.is_empty() || !plan.mbpp.is_empty());
    let sandbox = if wants_code {
        let limits = Limits {
            timeout_s: a.code_timeout,
            cpu_s: a.code_timeout.ceil() as u64,
            ..Limits::default()
        };
        let policy = if a.unsafe_no_sandbox {
            SandboxPolicy::UnsafeNoSandbox
        } else {
            SandboxPolicy::RequireIsolation
        };
        match Sandbox::with_policy(limits, policy) {
            Ok(s) => {
                if s.isolation.unsafe_no_sandbox {
                    eprintln!(
                        "warning: --unsafe-no-sandbox: model-written code runs WITHOUT namespaces (rlimits, seccomp and uid only); results.json records it"
                    );
                }
                for m in &s.isolation.missing {
                    eprintln!("sandbox: not available here: {m}");
                }
                Some(s)
            }
            Err(bakeoff_eval::Error::NoPython(msg)) => {
                eprintln!("warning: {msg}; HumanEval and MBPP are skipped");
                None
            }
            Err(e) => bail!("{e}"),
        }
    } else {
        None
    };

    let opts = LoadOptions {
        device: a.device.parse()?,
        threads: a.threads,
        dtype: None,
        max_context: None,
        progress: false,
        cpu_kernels: None,
        weight_cache: bakeoff_engine::loader::default_weight_cache()?,
        kv_cache: Default::default(),
        prefill_chunk: bakeoff_engine::generate::DEFAULT_PREFILL_CHUNK,
        background_cache_write: false,
    };

    // The judge is checked before any model runs.
    let mut judge = match &a.judge {
        None => None,
        Some(j) => {
            let mut names: Vec<Vec<String>> = a.models.iter().map(|m| vec![m.clone()]).collect();
            let judge_names: Vec<String>;
            let backend = if j.starts_with("http://") || j.starts_with("https://") {
                let model = a
                    .judge_model
                    .clone()
                    .context("--judge URL needs --judge-model NAME")?;
                judge_names = vec![model.clone()];
                JudgeBackend::Endpoint {
                    url: j.clone(),
                    model,
                    api_key: std::env::var(&a.judge_key_env).ok(),
                }
            } else {
                eprintln!("loading judge {j}");
                let lm = bakeoff_engine::loader::load(j, None, &opts)
                    .with_context(|| format!("cannot load judge `{j}`"))?;
                judge_names = vec![j.clone(), format!("{:?}", lm.info.arch).to_lowercase()];
                JudgeBackend::Local(Box::new(EngineCandidate::new(lm, j.clone())))
            };
            // Candidates' architectures count as their family too (loaded lazily below; names here).
            for n in &mut names {
                n.push(n[0].clone());
            }
            judge::check_independent(&judge_names, &names)?;
            let identity = match &backend {
                JudgeBackend::Local(_) => format!("local model {j}"),
                JudgeBackend::Endpoint { model, .. } => format!("{model} at {j}"),
            };
            Some((
                Judge {
                    backend,
                    identity,
                    max_tokens: 1024,
                },
                judge_names,
            ))
        }
    };

    let mut models: Vec<ModelResult> = Vec::new();
    let mut all_gens: Vec<(String, Vec<Generated>)> = Vec::new();
    let mut labels: Vec<String> = Vec::new();
    for source in &a.models {
        let t = Instant::now();
        eprintln!("loading {source}");
        let lm = bakeoff_engine::loader::load(source, None, &opts)
            .with_context(|| format!("cannot load model `{source}`"))?;
        if let Some((_, jn)) = &judge {
            let arch = format!("{:?}", lm.info.arch).to_lowercase();
            judge::check_independent(jn, &[vec![source.clone(), arch]])?;
        }
        let label = label_for(source, &labels);
        labels.push(label.clone());
        let info = identity(source, &lm.info)?;
        let mut cand = EngineCandidate::new(lm, label.clone());
        if !cand.has_template {
            eprintln!(
                "warning: {label} has no chat template; generative tasks use a plain User:/Assistant: format"
            );
        }
        let mut progress = |m: &str| eprintln!("  {m}");
        let model_hash = model_sha256(&info);
        let earlier_s = journal.earlier_seconds_of(&model_hash);
        journal.begin_model(&label, &model_hash)?;
        let mut journaled = Journaled {
            inner: &mut cand,
            journal: &mut journal,
            model_sha256: model_hash,
            replayed: 0,
        };
        let run = run_model(
            &mut journaled,
            &plan,
            sandbox.as_ref(),
            &mut audit,
            &mut progress,
        )?;
        if journaled.replayed > 0 {
            eprintln!(
                "  {label}: {} responses taken from {}",
                journaled.replayed,
                items_path.display()
            );
        }
        drop(cand);
        let mut components: Vec<Component> = run.components;
        if let Some((j, _)) = judge.as_mut() {
            let mut d = DataDir::open(&a.data_dir)?;
            let prompts = data::load_judge_prompts(&mut d)?;
            let refs = data::load_mt_bench_references(&mut d)?;
            if let Some(c) = judge::grade_single(
                j,
                &prompts,
                &plan.mt_bench,
                &refs,
                &label,
                &run.generations,
                &mut audit,
            )? {
                components.push(c);
            }
        }
        let categories = score::categories(&components);
        let overall = score::overall(&categories);
        models.push(ModelResult {
            label: label.clone(),
            info,
            files_sha256: Vec::new(),
            components,
            categories,
            overall,
            seconds: t.elapsed().as_secs_f64() + earlier_s,
        });
        all_gens.push((label, run.generations));
        audit.flush()?;
    }

    let mut comparisons = Vec::new();
    for i in 0..models.len() {
        for k in i + 1..models.len() {
            comparisons.extend(score::compare_models(
                &models[i].label,
                &models[i].components,
                &models[k].label,
                &models[k].components,
            ));
        }
    }

    let mut judge_info = None;
    if let Some((j, _)) = judge.as_mut() {
        let mut d = DataDir::open(&a.data_dir)?;
        let prompts = data::load_judge_prompts(&mut d)?;
        let refs = data::load_mt_bench_references(&mut d)?;
        let mut pairs = Vec::new();
        for i in 0..all_gens.len() {
            for k in i + 1..all_gens.len() {
                let (la, ga) = &all_gens[i];
                let (lb, gb) = &all_gens[k];
                pairs.push(judge::pairwise(
                    j,
                    &prompts,
                    &plan.mt_bench,
                    &refs,
                    (la, ga),
                    (lb, gb),
                    &mut audit,
                )?);
            }
        }
        judge_info = Some(serde_json::json!({
            "identity": j.identity,
            "temperature": 0,
            "prompts": prompts.iter().filter(|p| ["single-v1", "single-math-v1", "pair-v2", "pair-math-v1"].contains(&p.name.as_str())).collect::<Vec<_>>(),
            "turns_judged": "first turn of each selected MT-Bench question",
            "pairwise": pairs,
            "pairwise_rule": "each question judged in both orders; a win only when both orders agree, else a tie",
        }));
    } else {
        judge_info = judge_info.or(Some(serde_json::json!({"identity": null, "note": "no judge: creativity is a low-confidence proxy; MT-Bench answers are generated and audited but not graded"})));
    }
    audit.flush()?;

    let mut data_files = plan.files.clone();
    data_files.sort_by(|x, y| x.path.cmp(&y.path));
    let results = Results {
        header: ResultsKind::Eval.header(),
        tool: format!("bakeoff-eval {}", env!("CARGO_PKG_VERSION")),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        profile: profile_label,
        selection_rule: format!(
            "sort ids by sha256(\"{RULE_SALT}\" + id), take the first N (MMLU: per subject); frozen in crates/eval/profiles/"
        ),
        ids_match_rule: plan.ids_match_rule,
        item_counts: plan.counts(),
        sizes: Some(plan.sizes.clone()),
        data_dir: a.data_dir.display().to_string(),
        data_files,
        sandbox: sandbox.as_ref().map(|s| s.isolation.clone()),
        scale: Scale::default(),
        models,
        comparisons,
        judge: judge_info,
        audit_file: audit_path.display().to_string(),
        seconds: started.elapsed().as_secs_f64() + journal.earlier_seconds().unwrap_or(0.0),
    };
    let json = serde_json::to_string_pretty(&results)?;
    bakeoff_record::fsio::write_atomic(&results_path, json.as_bytes())
        .with_context(|| format!("cannot write {}", results_path.display()))?;
    eprintln!(
        "wrote {} and {} ({} audit records)",
        results_path.display(),
        audit_path.display(),
        audit.records
    );
    if a.format == "json" {
        println!("{json}");
    } else {
        print!("{}", table(&results));
    }
    Ok(())
}

/// What a resumed run must share with the interrupted one: the flags that shape items and
/// requests. The models' files are checked per response ([`model_sha256`]).
fn config_sha256(a: &EvalArgs, plan: &Plan, profile_label: &str) -> Result<String> {
    let v = serde_json::json!({
        "models": a.models, "profile": profile_label, "only": a.only, "sizes": plan.sizes,
        "counts": plan.counts(), "ids": plan.derived_ids, "judge": a.judge,
        "judge_model": a.judge_model, "code_timeout": a.code_timeout,
    });
    Ok(sha256_hex(serde_json::to_string(&v)?.as_bytes()))
}

/// One hash over the model's file digests, the key its journal entries are filed under.
fn model_sha256(info: &ModelIdentity) -> String {
    let digests: Vec<&str> = info
        .files
        .iter()
        .map(|f| f.sha256.as_deref().unwrap_or(""))
        .collect();
    sha256_hex(digests.join("\n").as_bytes())
}

/// The identity eval records for a loaded model, each file with its size and SHA-256.
fn identity(source: &str, info: &bakeoff_engine::model::ModelInfo) -> Result<ModelIdentity> {
    let mut files = Vec::new();
    for f in &info.files {
        files.push(FileDigest {
            path: f.clone(),
            bytes: Some(
                std::fs::metadata(f)
                    .with_context(|| format!("cannot read {}", f.display()))?
                    .len(),
            ),
            sha256: Some(sha256_file(f).with_context(|| format!("cannot hash {}", f.display()))?),
        });
    }
    Ok(info.identity(source, files))
}
