//! `bakeoff bench` and its hidden child, `bakeoff bench-worker`. The arguments become a
//! validated [`BenchConfig`]; the bench crate does the rest (see docs/bench.md for the method).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use bakeoff_bench::job::{BenchConfig, RunParams, default_params};
use bakeoff_bench::journal::Journal;
use bakeoff_bench::output::{Format, render, summary_table};
use bakeoff_bench::runner::{WorkerCommand, check_out_path, run as run_bench};
use bakeoff_bench::scenarios::ScenarioId;
use bakeoff_record::bench::BenchReport;
use clap::Args;

/// Each model (× each --threads / --dtype value) runs in its own child process, one after the
/// other: load (cold when the page cache can be dropped, then warm), warm-up, then
/// --repetitions greedy runs of every scenario and context depth with EOS ignored.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A Hugging Face folder, .gguf file, hub id, catalog name, or `openai:http://HOST:PORT/v1#MODEL` (repeatable).
    #[arg(long = "model", short = 'm', required_unless_present_any = ["from", "membw"])]
    pub models: Vec<String>,
    /// The file to use from GGUF hub repositories.
    #[arg(long)]
    pub gguf_file: Option<String>,
    /// cpu, cuda or metal, the same for every local model.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads; a list sweeps them (default: all cores, the same for every model).
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Weight type for safetensors models (f32, f16, bf16); a list sweeps them.
    #[arg(long, value_delimiter = ',')]
    pub dtype: Vec<String>,
    /// Use at most this many positions of each model's context.
    #[arg(long)]
    pub max_context: Option<usize>,
    /// Measured runs per scenario and depth.
    #[arg(long, default_value_t = 5)]
    pub repetitions: usize,
    /// Unmeasured warm-up runs before each scenario's repetitions (and before the depths).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Tokens generated per scenario run (EOS ignored).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Scenarios to run: short, medium, long, code, creative, or none.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "short,medium,long,code,creative"
    )]
    pub scenarios: Vec<String>,
    /// Context depths (prompt tokens) for the scaling runs, or none.
    #[arg(long, value_delimiter = ',', default_value = "128,256,512,1024,2048")]
    pub depths: Vec<String>,
    /// Tokens generated at each depth.
    #[arg(long, default_value_t = 32)]
    pub depth_tokens: usize,
    /// The results file (JSON; default: results/bench-TIME.json, TIME the start in UTC).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// What to print on stdout: table, json, jsonl, csv or md.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Do not drop the page cache to measure a cold load.
    #[arg(long)]
    pub no_cold_load: bool,
    /// Repack the quantized matrices at every load instead of reading them from the packed-weights
    /// file.
    #[arg(long)]
    pub no_weight_cache: bool,
    /// Element type of the CPU KV cache: auto (default: f16 where a SIMD attention kernel runs,
    /// AVX-512 or AVX2, as llama.cpp, else f32), f16 or f32.
    #[arg(long, default_value = "auto")]
    pub kv_cache: String,
    /// A non-loopback host that remote engines may be reached at (repeatable).
    #[arg(long)]
    pub allow_host: Vec<String>,
    /// Seconds a remote engine may stay silent before the request fails.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Continue an interrupted run writing the same --out: models already measured (kept in
    /// OUT.jobs.jsonl as each finishes) are not measured again. Same machine and build only.
    #[arg(long, conflicts_with = "from")]
    pub resume: bool,
    /// Print an existing results file in --format instead of running anything.
    #[arg(long, conflicts_with = "models")]
    pub from: Option<PathBuf>,
    /// With --from: derive the statistics again from the raw samples with this version's rules
    /// (with --out, write the result as a new file).
    #[arg(long, requires = "from")]
    pub recompute: bool,
    /// Measure the streaming read bandwidth on 1 and N threads instead; with --model, also each
    /// model's decode cap (bandwidth ÷ weight bytes read per token) and the share of it reached.
    #[arg(long, conflicts_with = "from")]
    pub membw: bool,
    /// Buffer size for --membw, in MiB (keep it far above the last-level cache).
    #[arg(long, default_value_t = 2048)]
    pub membw_mib: usize,
    /// With --membw and --model: rounds of one bandwidth reading then 32 decode steps, each
    /// giving one share of the cap (the table shows their median, min and max).
    #[arg(long, default_value_t = 5)]
    pub membw_rounds: usize,
}

#[derive(Args, Debug)]
pub struct BenchWorkerArgs {}

fn list_or_none(v: &[String]) -> Vec<String> {
    if v.len() == 1 && v[0] == "none" {
        Vec::new()
    } else {
        v.to_vec()
    }
}

impl BenchArgs {
    fn config(&self) -> Result<BenchConfig> {
        let scenarios = list_or_none(&self.scenarios)
            .iter()
            .map(|s| s.trim().parse::<ScenarioId>().map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>, _>>()?;
        let depths = list_or_none(&self.depths)
            .iter()
            .map(|d| {
                d.trim()
                    .parse::<usize>()
                    .with_context(|| format!("--depths: `{d}` is not a number"))
            })
            .collect::<Result<Vec<_>>>()?;
        let cfg = BenchConfig {
            models: self.models.clone(),
            gguf_file: self.gguf_file.clone(),
            device: self.device.clone(),
            threads: self.threads.clone(),
            dtypes: self.dtype.clone(),
            max_context: self.max_context,
            params: RunParams {
                scenarios,
                depths,
                repetitions: self.repetitions,
                warmup: self.warmup,
                max_tokens: self.max_tokens,
                depth_tokens: self.depth_tokens,
                ..default_params()
            },
            cold_load: !self.no_cold_load,
            weight_cache: if self.no_weight_cache {
                None
            } else {
                bakeoff_engine::loader::default_weight_cache()?
            },
            kv_cache: self
                .kv_cache
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--kv-cache: {e}"))?,
            allowed_hosts: self.allow_host.clone(),
            timeout_s: self.timeout,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.membw {
        return membw(&a);
    }
    let format: Format = a.format.parse()?;
    let report = match &a.from {
        Some(path) => {
            let mut report = BenchReport::read(path).map_err(anyhow::Error::msg)?;
            if a.recompute {
                report.recompute_stats();
                if let Some(out) = &a.out {
                    check_out_path(out)?;
                    if out.canonicalize().ok() == path.canonicalize().ok() {
                        anyhow::bail!(
                            "--out {} is the --from file; write the recomputed results to a new file",
                            out.display()
                        );
                    }
                    report.write(out)?;
                    eprintln!("recomputed results written to {}", out.display());
                }
            }
            report
        }
        None => {
            let cfg = a.config()?;
            let out = a.out.clone().unwrap_or_else(|| {
                PathBuf::from("results").join(format!(
                    "bench-{}.json",
                    bakeoff_bench::env::compact_time(bakeoff_bench::env::unix_now())
                ))
            });
            check_out_path(&out)?;
            let worker = WorkerCommand::current_exe()?;
            let progress = !a.no_progress && std::io::stderr().is_terminal();
            if a.resume && a.out.is_none() {
                anyhow::bail!(
                    "--resume needs the --out of the interrupted run (its journal sits beside it)"
                );
            }
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let journal_path = bakeoff_bench::journal::path_for(&out);
            let environment = bakeoff_bench::env::capture();
            let mut journal = if a.resume {
                Journal::resume(&journal_path, &environment)?
            } else {
                Journal::create(&journal_path, &environment)?
            };
            let report = run_bench(
                &cfg,
                &worker,
                std::env::args().collect(),
                progress,
                Some(&mut journal),
            )?;
            report.write(&out)?;
            journal.finish()?;
            eprintln!("results written to {}", out.display());
            report
        }
    };
    let text = render(&report, format)?;
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    lock.write_all(text.as_bytes())
        .context("cannot write to stdout")?;
    lock.flush().context("cannot write to stdout")?;
    drop(lock);
    // Machine-readable formats keep stdout clean; people still get the comparison on stderr.
    if format != Format::Table && format != Format::Md && a.from.is_none() {
        eprint!("{}", summary_table(&report));
    }
    let failed: Vec<&str> = report
        .models
        .iter()
        .filter(|m| m.error.is_some())
        .map(|m| m.label.as_str())
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} models failed: {}",
            failed.len(),
            report.models.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// The child side: a job on stdin, the result on stdout, progress on stderr.
pub fn run_worker(_a: BenchWorkerArgs) -> Result<()> {
    bakeoff_bench::worker::worker_main(
        std::io::stdin().lock(),
        std::io::stdout().lock(),
        std::io::stderr().lock(),
    )?;
    Ok(())
}

/// `--membw`: bandwidth on 1 and N threads, then per model the cap and the decode share.
fn membw(a: &BenchArgs) -> Result<()> {
    use bakeoff_bench::membw::{cap_tok_s, stream_read_gbs};
    use bakeoff_engine::loader::{LoadOptions, bytes_read_per_token, default_threads, load};
    if a.membw_mib < 1 {
        anyhow::bail!("--membw-mib must be at least 1");
    }
    if a.membw_rounds < 1 {
        anyhow::bail!("--membw-rounds must be at least 1");
    }
    let n = match a.threads.as_slice() {
        [] => default_threads(),
        [t] if *t > 0 => *t,
        _ => anyhow::bail!("--membw takes one --threads value (at least 1)"),
    };
    let bytes = a.membw_mib << 20;
    println!("streaming read over {} MiB, best of 5:", a.membw_mib);
    let one = stream_read_gbs(bytes, 1, 5);
    println!("  1 thread:  {one:.1} GB/s");
    if n > 1 {
        let g = stream_read_gbs(bytes, n, 5);
        println!("  {n} threads: {g:.1} GB/s");
        // The cap is read on huge pages, where the weights are; 4 KiB pages read slower (no
        // prefetch across a page, a TLB miss per page), and a cap read on them flattered decode.
        let small = bakeoff_bench::membw::stream_read_gbs_on(bytes, n, 5, false);
        println!("  {n} threads on 4 KiB pages (not the cap): {small:.1} GB/s");
    }
    if a.models.is_empty() {
        return Ok(());
    }
    println!();
    println!(
        "{} rounds per model, each a bandwidth reading (best of 3) then 32 decode steps; median (min-max):",
        a.membw_rounds
    );
    println!();
    println!("| model | weights read per token | bandwidth | cap | decode | share of cap |");
    println!("|---|---:|---:|---:|---:|---:|");
    for m in &a.models {
        let path = std::path::Path::new(m);
        let per_token = bytes_read_per_token(path)
            .with_context(|| format!("{m}: --membw needs a local folder or .gguf file"))?;
        let opts = LoadOptions {
            threads: Some(n),
            weight_cache: bakeoff_engine::loader::default_weight_cache()?,
            ..Default::default()
        };
        let mut loaded = load(m, a.gguf_file.as_deref(), &opts)?;
        let model = &mut loaded.model;
        let argmax = |l: &[f32]| {
            l.iter()
                .enumerate()
                .fold(
                    (0usize, f32::MIN),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                )
                .0 as u32
        };
        let mut tok = argmax(&model.forward(&[1, 2, 3, 4, 5, 6, 7, 8], false)?);
        // One unmeasured step first.
        tok = argmax(&model.forward(&[tok], false)?);
        let start = model.position();
        // The machine's bandwidth drifts (26-32 GB/s within minutes on a shared host): each
        // share compares a decode with the reading taken just before it, not with one taken
        // at another time.
        let (mut bw, mut speed, mut share) = (vec![], vec![], vec![]);
        for _ in 0..a.membw_rounds {
            // Every round decodes the same positions (the attention's share grows with them).
            model.truncate(start);
            let g = stream_read_gbs(bytes, n, 3);
            let t = std::time::Instant::now();
            for _ in 0..32 {
                tok = argmax(&model.forward(&[tok], false)?);
            }
            let tok_s = 32.0 / t.elapsed().as_secs_f64();
            bw.push(g);
            speed.push(tok_s);
            share.push(tok_s / cap_tok_s(g, per_token));
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (g, tok_s, sh) = (median(&mut bw), median(&mut speed), median(&mut share));
        println!(
            "| {m} | {:.0} MB | {g:.1} GB/s | {:.1} tok/s | {tok_s:.1} tok/s | {:.0}% ({:.0}-{:.0}%) |",
            per_token as f64 / 1e6,
            cap_tok_s(g, per_token),
            100.0 * sh,
            100.0 * share[0],
            100.0 * share[share.len() - 1]
        );
    }
    Ok(())
}
