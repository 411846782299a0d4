use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use bakeoff_engine::template::Message;
use bakeoff_record::routing::RouterCalibration;
use bakeoff_serve::ConfigFile;
use bakeoff_serve::backend::Input;
use bakeoff_serve::calibrate::{self, Options, WeightsMode, write_config};
use bakeoff_serve::complexity::{self, Weights};
use clap::{Args, Subcommand, ValueEnum};

/// Router tools: fit the complexity router on eval results, or score a prompt.
#[derive(Args, Debug)]
pub struct RouteArgs {
    #[command(subcommand)]
    pub cmd: RouteCmd,
}

#[derive(Subcommand, Debug)]
pub enum RouteCmd {
    /// Fit the complexity router's weights on per-item eval results of two models and pick the
    /// threshold that sends a given share of requests to the strong model; measure both on
    /// held-out items against random routing; write them to the serve config file.
    Calibrate(CalibrateArgs),
    /// Show the complexity score of a prompt and its features.
    Score(ScoreArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum WeightsArg {
    /// Fit the weights on the calibration items.
    Fit,
    /// Keep the weights in force (the config file's, else the shipped ones); pick the threshold.
    Keep,
    /// Fit with at least 40 calibration items, else keep.
    Auto,
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
    /// Also write the calibration (weights, curve, threshold, held-out figures) as JSON here;
    /// `serve --calibration FILE` starts from it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Share of requests the strong model should get (0..1).
    #[arg(long, default_value_t = 0.3)]
    pub strong_share: f64,
    /// Fit the feature weights, or keep the ones in force and only pick the threshold.
    #[arg(long, value_enum, default_value_t = WeightsArg::Auto)]
    pub weights: WeightsArg,
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
    /// Score with this calibration (`route calibrate --out`) instead of the shipped one.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
}

pub fn run(a: RouteArgs) -> Result<()> {
    match a.cmd {
        RouteCmd::Calibrate(c) => run_calibrate(c),
        RouteCmd::Score(s) => {
            let c = match &s.calibration {
                Some(p) => read_calibration(p)?,
                None => complexity::shipped().map_err(|e| anyhow!(e))?,
            };
            let sc = complexity::score(
                &Input::Chat(vec![Message::user(s.prompt)]),
                s.max_tokens,
                &c.weights,
            );
            let th = c.calibration.threshold;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "score": sc,
                    "threshold": th,
                    "tier": if sc.total >= th { "strong" } else { "fast" },
                }))?
            );
            Ok(())
        }
    }
}

pub fn read_calibration(p: &Path) -> Result<RouterCalibration> {
    let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    complexity::read_calibration(&bytes).map_err(|e| anyhow!("{}: {e}", p.display()))
}

/// The weights in force for `config`: its own, its calibration's, else the shipped ones.
fn current_weights(config: &Path) -> Result<Weights> {
    if config.exists() {
        let cfg = ConfigFile::read(config).map_err(|e| anyhow!(e))?;
        if let Some(w) = cfg.router.complexity_weights {
            return Ok(w);
        }
        if let Some(c) = &cfg.router.calibration {
            return Ok(read_calibration(Path::new(c))?.weights);
        }
    }
    Ok(complexity::shipped().map_err(|e| anyhow!(e))?.weights)
}

fn run_calibrate(c: CalibrateArgs) -> Result<()> {
    let out = calibrate::run(&Options {
        results: &c.results,
        holdout: c.holdout,
        strong_share: c.strong_share,
        fast: c.fast.clone(),
        strong: c.strong.clone(),
        weights: match c.weights {
            WeightsArg::Fit => WeightsMode::Fit,
            WeightsArg::Keep => WeightsMode::Keep,
            WeightsArg::Auto => WeightsMode::Auto,
        },
        current: current_weights(&c.config)?,
    })
    .map_err(|e| anyhow!(e))?;
    for n in &out.notes {
        eprintln!("{n}");
    }
    let rc = &out.calibration;
    if let Some(path) = &c.out {
        bakeoff_record::fsio::write_atomic(
            path,
            (serde_json::to_string_pretty(rc)? + "\n").as_bytes(),
        )
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    }
    let cal = &rc.calibration;
    if c.json {
        println!("{}", serde_json::to_string_pretty(rc)?);
    } else {
        let w = &rc.weights;
        println!(
            "weights ({}): bias {:+.3} · {}",
            if rc.fitted { "fitted" } else { "kept" },
            w.bias,
            Weights::FEATURE_NAMES
                .iter()
                .zip(w.features())
                .map(|(n, v)| format!("{n} {v:+.3}"))
                .collect::<Vec<_>>()
                .join(" · ")
        );
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
        if let Some(h) = &rc.held_out {
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
            for p in &h.by_component {
                println!(
                    "  {:<16} {:>4} items · {:>5.1}% to strong · routed {:.3} (fast {:.3}, strong {:.3})",
                    p.component,
                    p.items,
                    p.strong_share * 100.0,
                    p.quality,
                    p.fast_only,
                    p.strong_only
                );
            }
        }
    }
    if !c.dry_run {
        write_config(&c.config, cal.threshold, &rc.weights).map_err(|e| anyhow!(e))?;
        eprintln!(
            "wrote router.complexity_threshold = {:.4} and router.complexity_weights to {}",
            cal.threshold,
            c.config.display()
        );
    }
    Ok(())
}
