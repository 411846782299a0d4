use std::path::PathBuf;

use anyhow::{Result, anyhow};
use bakeoff_serve::{ConfigFile, ModelEntry, ServeSettings};
use clap::Args;

/// An OpenAI-compatible server with a tiered router. Flags override the config file.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A replica as TIER=SOURCE: TIER is `fast` or `strong`; SOURCE a model folder, .gguf file,
    /// hub id, or the URL of an OpenAI-compatible server (http://host:port/v1). Repeat for
    /// several replicas per tier (balanced by least outstanding requests).
    #[arg(long = "model", short = 'm', value_name = "TIER=SOURCE")]
    pub models: Vec<String>,
    /// How `"model": "auto"` is routed: complexity, cascade or fixed.
    #[arg(long)]
    pub policy: Option<String>,
    /// complexity: requests scoring at or above this go to the strong tier (0..1; default: the
    /// calibration's).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// complexity: start from this `bakeoff route calibrate --out` file (its weights and
    /// threshold) instead of the shipped calibration.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// cascade: fast answers whose mean token log-probability is below this go to the strong tier.
    #[arg(long, allow_hyphen_values = true)]
    pub cascade_threshold: Option<f32>,
    /// fixed: the tier that serves `auto` (fast or strong).
    #[arg(long)]
    pub fixed_tier: Option<String>,
    /// Do not serve from the other tier when one fails.
    #[arg(long)]
    pub no_fallback: bool,
    /// Address to listen on (loopback by default).
    #[arg(long)]
    pub host: Option<String>,
    /// Port (0 picks a free one; the address is printed on stderr).
    #[arg(long)]
    pub port: Option<u16>,
    /// Allow listening on an address other machines can reach.
    #[arg(long)]
    pub allow_non_loopback: bool,
    /// Require `Authorization: Bearer KEY` on /v1/* (also read from BAKEOFF_API_KEY).
    #[arg(long, env = "BAKEOFF_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A TOML config file (see docs/serve.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Sequences generated together per local model.
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Requests waiting per local model before 429.
    #[arg(long)]
    pub queue: Option<usize>,
    /// CPU threads per local model (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Use at most this many positions of each local model's context.
    #[arg(long)]
    pub max_context: Option<usize>,
    /// cpu, cuda or metal.
    #[arg(long)]
    pub device: Option<String>,
    /// Element type of the CPU KV cache: auto (f16 where a SIMD attention kernel runs, AVX-512 or
    /// AVX2, else f32), f16 or f32.
    #[arg(long)]
    pub kv_cache: Option<String>,
    /// Seconds a request may take from arrival to its last token.
    #[arg(long)]
    pub request_timeout: Option<f64>,
    /// Largest accepted request body in bytes.
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// New tokens for a request that sets no max_tokens (default 2048; always capped by the context).
    #[arg(long)]
    pub default_max_tokens: Option<usize>,
    /// Seconds answers in flight may take to finish after Ctrl-C (default 10); a second
    /// Ctrl-C stops at once (exit 130).
    #[arg(long)]
    pub shutdown_grace: Option<f64>,
    /// Most open connections (default 256); past it a new one gets a 503.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// KV-cache MiB the running sequences of each local model may reserve together (prompt plus
    /// max_tokens each; default 4096). A request that cannot fit alone gets a 400.
    #[arg(long)]
    pub kv_budget_mib: Option<u64>,
    /// Seconds an idle local model keeps its KV-cache slots (for prefix reuse) before giving
    /// their memory back (default 30; 0 keeps them).
    #[arg(long, value_name = "SECONDS")]
    pub kv_idle_release: Option<u64>,
}

/// The config file with the flags laid over it.
pub fn settings(a: &ServeArgs) -> Result<ServeSettings> {
    let mut cfg = match &a.config {
        Some(p) => ConfigFile::read(p).map_err(|e| anyhow!(e))?,
        None => ConfigFile::default(),
    };
    if !a.models.is_empty() {
        cfg.models = a
            .models
            .iter()
            .map(|s| ModelEntry::parse_flag(s))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!(e))?;
    }
    macro_rules! over {
        ($field:expr, $flag:expr) => {
            if let Some(v) = $flag.clone() {
                $field = Some(v);
            }
        };
    }
    over!(cfg.host, a.host);
    over!(cfg.port, a.port);
    over!(cfg.api_key, a.api_key);
    over!(cfg.max_body_bytes, a.max_body_bytes);
    over!(cfg.request_timeout_s, a.request_timeout);
    over!(cfg.shutdown_grace_s, a.shutdown_grace);
    over!(cfg.max_connections, a.max_connections);
    over!(cfg.router.policy, a.policy);
    over!(cfg.router.complexity_threshold, a.threshold);
    if let Some(p) = &a.calibration {
        cfg.router.calibration = Some(p.display().to_string());
        // The file's weights replace the config's, not conflict with them.
        cfg.router.complexity_weights = None;
    }
    over!(cfg.router.cascade_logprob_threshold, a.cascade_threshold);
    over!(cfg.router.fixed_tier, a.fixed_tier);
    over!(cfg.engine.max_batch, a.max_batch);
    over!(cfg.engine.queue, a.queue);
    over!(cfg.engine.default_max_tokens, a.default_max_tokens);
    over!(cfg.engine.kv_budget_mib, a.kv_budget_mib);
    over!(cfg.engine.kv_idle_release_s, a.kv_idle_release);
    over!(cfg.engine.threads, a.threads);
    over!(cfg.engine.max_context, a.max_context);
    over!(cfg.engine.device, a.device);
    over!(cfg.engine.kv_cache, a.kv_cache);
    if a.allow_non_loopback {
        cfg.allow_non_loopback = Some(true);
    }
    if a.no_fallback {
        cfg.router.fallback = Some(false);
    }
    ServeSettings::resolve(cfg).map_err(|e| anyhow!(e))
}

pub fn run(a: ServeArgs) -> Result<()> {
    let s = settings(&a)?;
    if bakeoff_serve::run_blocking(s)? == bakeoff_serve::Stopped::Forced {
        // The shell's convention for a process ended by SIGINT.
        std::process::exit(130);
    }
    Ok(())
}
