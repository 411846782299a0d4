//! `bakeoff pull` and `bakeoff list`: the model catalog from the command line.

use anyhow::{Context, Result, bail};
use bakeoff_engine::loader::catalog::{Catalog, PullOptions, models_dir};
use clap::Args;

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Catalog names (`bakeoff list` shows them).
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Hash a file that is already cached too (a download is always hashed).
    #[arg(long)]
    pub verify: bool,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// One JSON object per model instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn pull(a: PullArgs) -> Result<()> {
    let cat = Catalog::from_env()?;
    let unknown: Vec<&str> = a
        .names
        .iter()
        .map(String::as_str)
        .filter(|n| cat.get(n).is_none())
        .collect();
    if !unknown.is_empty() {
        bail!(
            "not in the catalog: {} (known: {})",
            unknown.join(", "),
            cat.names().join(", ")
        );
    }
    let opts = PullOptions {
        progress: !a.quiet,
        verify_cached: a.verify,
        ..Default::default()
    };
    for name in &a.names {
        let m = cat.get(name).expect("checked above");
        let got = m
            .pull(&opts)
            .with_context(|| format!("cannot pull `{name}`"))?;
        let checked = if got.verified {
            "SHA-256 verified"
        } else {
            "size checked"
        };
        eprintln!("{name}: {} ({checked})", got.origin.as_str());
        println!("{name}\t{}", got.path.display());
    }
    Ok(())
}

pub fn list(a: ListArgs) -> Result<()> {
    let cat = Catalog::from_env()?;
    if !a.json {
        println!("models folder: {}", models_dir().display());
        println!(
            "{:<20} {:<30} {:<6} {:<10} {:>9}  cached",
            "name", "model", "arch", "weights", "size"
        );
    }
    for m in &cat.models {
        let cached = m.locate();
        let sources: Vec<String> = m
            .hub
            .iter()
            .map(|h| format!("hf:{}/{}", h.repo, h.file))
            .chain((!m.mirror.is_empty()).then(|| format!("pypi:{} wheels", m.mirror.len())))
            .collect();
        if a.json {
            let v = serde_json::json!({
                "name": m.name,
                "title": m.title,
                "base": m.base,
                "parameters": m.parameters,
                "architecture": m.architecture,
                "quantization": m.quantization,
                "size": m.size,
                "sha256": m.sha256,
                "license": m.license,
                "sources": sources,
                "path": cached.as_ref().map(|(p, _)| p.display().to_string()),
            });
            println!("{v}");
        } else {
            let size = m
                .size
                .map(|s| format!("{:.0} MiB", s as f64 / (1u64 << 20) as f64))
                .unwrap_or_else(|| "?".into());
            let quant = m.quantization.split(' ').next().unwrap_or("");
            let where_ = match &cached {
                Some((p, _)) => p.display().to_string(),
                None => format!("no ({})", sources.join(", ")),
            };
            println!(
                "{:<20} {:<30} {:<6} {:<10} {:>9}  {where_}",
                m.name, m.title, m.architecture, quant, size
            );
        }
    }
    Ok(())
}
