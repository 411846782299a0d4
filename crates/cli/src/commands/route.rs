use std::path::PathBuf;

use anyhow::{Result, anyhow};
use bakeoff_engine::template::Message;
use bakeoff_serve::backend::Input;
use bakeoff_serve::calibrate::{
    Calibration, HeldOut, calibrate, evaluate, read_eval, read_items, split, write_config,
};
use bakeoff_serve::complexity::score;
use clap::{Args, Subcommand};

/// Router tools: calibrate the complexity threshold, or score a prompt.
#[derive(Args, Debug)]
pub struct RouteArgs {
    #[command(subcommand)]
    pub cmd: RouteCmd,
}

#[derive(Subcommand, Debug)]
pub enum RouteCmd {
    /// Pick the complexity threshold that sends a given share of requests to the strong model,
    /// from per-item eval results, and write it to the serve config file.
    Calibrate(CalibrateArgs),
    /// Show the complexity score of a prompt and its features.
    Score(ScoreArgs),
}

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// `bakeoff eval` output (its --out folder or results.json, with audit.jsonl beside it), or a
    /// JSON array / JSON Lines of {"prompt" | "messages", "correct": {"fast": bool, "strong": bool}}.
    #[arg(long)]
    pub results: PathBuf,
    /// Share of the items held out of the calibration and used to measure the chosen threshold
    /// against random routing at the same share (0 uses every item for both). Default: 0.5 for
    /// eval output, 0 for the per-item format (usually a handful of hand-made items).
    #[arg(long)]
    pub holdout: Option<f64>,
    /// Also write the calibration (curve, threshold, held-out figures) as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Share of requests the strong model should get (0..1).
    #[arg(long, default_value_t = 0.3)]
    pub strong_share: f64,
    /// The config file to write (created, or updated keeping its other settings).
    #[arg(long, default_value = "bakeoff-serve.toml")]
    pub config: PathBuf,
    /// The fast model: its key in `correct`, or its label in eval results (default `fast`; for
    /// eval results, the model with fewer parameters).
    #[arg(long)]
    pub fast: Option<String>,
    /// The strong model (default `strong`; for eval results, the other model).
    #[arg(long)]
    pub strong: Option<String>,
    /// Print the calibration as JSON.
    #[arg(long)]
    pub json: bool,
    /// Compute and print, but do not write the config.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// The prompt (a single user message).
    #[arg(long, short = 'p')]
    pub prompt: String,
    #[arg(long)]
    pub max_tokens: Option<usize>,
}

pub fn run(a: RouteArgs) -> Result<()> {
    match a.cmd {
        RouteCmd::Calibrate(c) => run_calibrate(c),
        RouteCmd::Score(s) => {
            let sc = score(&Input::Chat(vec![Message::user(s.prompt)]), s.max_tokens);
            println!("{}", serde_json::to_string_pretty(&sc)?);
            Ok(())
        }
    }
}

#[derive(serde::Serialize)]
struct CalibrationFile<'a> {
    source: String,
    fast: &'a str,
    strong: &'a str,
    holdout: f64,
    calibration: &'a Calibration,
    held_out: Option<&'a HeldOut>,
}

fn run_calibrate(c: CalibrateArgs) -> Result<()> {
    if let Some(h) = c.holdout
        && !(0.0..1.0).contains(&h)
    {
        anyhow::bail!("--holdout must be in [0, 1), got {h}");
    }
    let eval_output = read_eval(&c.results).map_err(|e| anyhow!(e))?;
    let holdout = c
        .holdout
        .unwrap_or(if eval_output.is_some() { 0.5 } else { 0.0 });
    let (items, fast, strong) = match eval_output {
        Some(ev) => {
            let labels: Vec<&str> = ev.models.iter().map(|(l, _)| l.as_str()).collect();
            let by_size = {
                let mut m = ev.models.clone();
                m.sort_by_key(|(_, p)| p.unwrap_or(u64::MAX));
                m
            };
            let fast = c.fast.clone().unwrap_or_else(|| by_size[0].0.clone());
            let strong = c.strong.clone().unwrap_or_else(|| {
                by_size
                    .iter()
                    .find(|(l, _)| *l != fast)
                    .map(|(l, _)| l.clone())
                    .unwrap_or_default()
            });
            for k in [&fast, &strong] {
                if !labels.contains(&k.as_str()) {
                    anyhow::bail!(
                        "`{k}` is not a model of {} (models: {})",
                        c.results.display(),
                        labels.join(", ")
                    );
                }
            }
            eprintln!(
                "eval results: {} items scored for both models{}; fast = {fast}, strong = {strong}",
                ev.items.len(),
                if ev.without_prompt > 0 {
                    format!(" ({} without a prompt left out)", ev.without_prompt)
                } else {
                    String::new()
                }
            );
            (ev.items, fast, strong)
        }
        None => (
            read_items(&c.results).map_err(|e| anyhow!(e))?,
            c.fast.clone().unwrap_or_else(|| "fast".into()),
            c.strong.clone().unwrap_or_else(|| "strong".into()),
        ),
    };
    let (cal_items, test_items) = if holdout > 0.0 {
        let (a, b) = split(&items, holdout);
        if a.is_empty() || b.is_empty() {
            anyhow::bail!(
                "{} items cannot be split into calibration and held-out parts at --holdout {}; \
                 use --holdout 0 to calibrate on all of them (without a held-out check)",
                items.len(),
                holdout
            );
        }
        (a, b)
    } else {
        (items, Vec::new())
    };
    let cal = calibrate(&cal_items, &fast, &strong, c.strong_share).map_err(|e| anyhow!(e))?;
    let held = if test_items.is_empty() {
        None
    } else {
        Some(evaluate(&test_items, &fast, &strong, cal.threshold).map_err(|e| anyhow!(e))?)
    };
    if let Some(out) = &c.out {
        let file = CalibrationFile {
            source: c.results.display().to_string(),
            fast: &fast,
            strong: &strong,
            holdout,
            calibration: &cal,
            held_out: held.as_ref(),
        };
        bakeoff_record::fsio::write_atomic(
            out,
            (serde_json::to_string_pretty(&file)? + "\n").as_bytes(),
        )
        .map_err(|e| anyhow!("cannot write {}: {e}", out.display()))?;
    }
    if c.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "fast": fast, "strong": strong, "calibration": cal, "held_out": held,
            }))?
        );
    } else {
        println!(
            "calibration: {} items · fast alone {:.3} · strong alone {:.3}",
            cal.items, cal.fast_only, cal.strong_only
        );
        println!(
            "{:>12} {:>10} {:>9}",
            "strong share", "threshold", "quality"
        );
        for p in &cal.curve {
            println!(
                "{:>12.2} {:>10.4} {:>9.3}",
                p.strong_share, p.threshold, p.quality
            );
        }
        println!(
            "chosen: threshold {:.4} sends {:.1}% to strong; quality {:.3} (random routing at that share: {:.3}{})",
            cal.threshold,
            cal.strong_share * 100.0,
            cal.quality,
            cal.random_at_share,
            cal.gap_recovered.map_or(String::new(), |g| format!(
                "; {:.0}% of the fast-to-strong gap",
                g * 100.0
            ))
        );
        if let Some(h) = &held {
            println!(
                "held out: {} items · {:.1}% sent to strong · quality {:.3} (95% {:.3}-{:.3}) vs random \
                 routing at that share {:.3} ({:.3}-{:.3}); gain {:+.3} (95% {:+.3} to {:+.3}) · fast alone \
                 {:.3}, strong alone {:.3}",
                h.items,
                h.strong_share * 100.0,
                h.quality,
                h.quality_ci.0,
                h.quality_ci.1,
                h.random_at_share,
                h.random_ci.0,
                h.random_ci.1,
                h.quality - h.random_at_share,
                h.gain_ci.0,
                h.gain_ci.1,
                h.fast_only,
                h.strong_only
            );
        }
    }
    if !c.dry_run {
        write_config(&c.config, cal.threshold).map_err(|e| anyhow!(e))?;
        eprintln!(
            "wrote router.complexity_threshold = {:.4} to {}",
            cal.threshold,
            c.config.display()
        );
    }
    Ok(())
}
