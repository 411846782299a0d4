use std::path::PathBuf;

use anyhow::{Result, anyhow};
use bakeoff_engine::template::Message;
use bakeoff_serve::backend::Input;
use bakeoff_serve::calibrate::{calibrate, read_items, write_config};
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
    /// Eval results: JSON array or JSON Lines of {"prompt" | "messages", "correct": {"fast": bool, "strong": bool}}.
    #[arg(long)]
    pub results: PathBuf,
    /// Share of requests the strong model should get (0..1).
    #[arg(long, default_value_t = 0.3)]
    pub strong_share: f64,
    /// The config file to write (created, or updated keeping its other settings).
    #[arg(long, default_value = "bakeoff-serve.toml")]
    pub config: PathBuf,
    /// Key of the fast model in `correct`.
    #[arg(long, default_value = "fast")]
    pub fast: String,
    /// Key of the strong model in `correct`.
    #[arg(long, default_value = "strong")]
    pub strong: String,
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

fn run_calibrate(c: CalibrateArgs) -> Result<()> {
    let items = read_items(&c.results).map_err(|e| anyhow!(e))?;
    let cal = calibrate(&items, &c.fast, &c.strong, c.strong_share).map_err(|e| anyhow!(e))?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&cal)?);
    } else {
        println!(
            "{} items · fast alone {:.3} · strong alone {:.3}",
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
