//! The TOML config file and the settings resolved from it. Every field is optional; the CLI
//! sets the fields its flags name before resolving, which is how flags override the file.
//!
//! ```toml
//! host = "127.0.0.1"
//! port = 8080
//! allow_non_loopback = false
//! api_key_env = "BAKEOFF_API_KEY"
//! max_body_bytes = 1048576
//! request_timeout_s = 600
//! header_timeout_s = 30       # request headers, and idle keep-alive connections
//! body_timeout_s = 30         # the whole request body
//! max_connections = 256       # past it: 503 and close
//! shutdown_grace_s = 10       # answers in flight after Ctrl-C; a second Ctrl-C exits at once
//!
//! [engine]
//! max_batch = 8
//! queue = 64
//! prefill_chunk = 512
//! default_max_tokens = 2048   # when a request sets none
//! kv_budget_mib = 4096        # KV cache the running sequences may reserve together
//! kv_idle_release_s = 30      # idle this long: the KV-cache slots' memory is given back (0: kept)
//! kv_cache = "auto"           # f16 where a SIMD attention kernel runs (AVX-512, AVX2), else f32; or f16, f32
//!
//! [router]
//! policy = "complexity"
//! calibration = "routing.json"  # `bakeoff route calibrate --out`: weights and threshold
//! complexity_threshold = 0.55   # overrides the calibration's threshold
//! # or the weights themselves (what `route calibrate` writes here):
//! # complexity_weights = { bias = 0.0, length = 0.0, code = 1.0, math = 0.5, reasoning = 0.3, turns = 0.0, max_tokens = 0.0 }
//!
//! [[models]]
//! tier = "fast"
//! source = "/models/tinyllama-q8_0.gguf"
//!
//! [[models]]
//! tier = "strong"
//! url = "http://127.0.0.1:8081/v1"
//! upstream_model = "qwen2.5-1.5b-instruct"
//! ```

use std::net::{IpAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::complexity::{self, Weights};
use crate::engine::EngineOptions;
use crate::router::{RouterConfig, RoutingPolicy, Tier};
use crate::routes::HttpSettings;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub host: Option<String>,
    pub port: Option<u16>,
    /// Required to bind anything but a loopback address.
    pub allow_non_loopback: Option<bool>,
    /// The bearer key itself (prefer `api_key_env`, which keeps it out of the file).
    pub api_key: Option<String>,
    /// The environment variable holding the bearer key.
    pub api_key_env: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub request_timeout_s: Option<f64>,
    /// Receiving a request's headers (and waiting for the next request on a kept-alive
    /// connection).
    pub header_timeout_s: Option<f64>,
    /// Receiving a request's whole body.
    pub body_timeout_s: Option<f64>,
    /// Open connections; past it a new one gets a 503 and is closed.
    pub max_connections: Option<usize>,
    /// After Ctrl-C or SIGTERM, how long answers in flight may take to finish.
    pub shutdown_grace_s: Option<f64>,
    #[serde(default)]
    pub engine: EngineSection,
    #[serde(default)]
    pub router: RouterSection,
    #[serde(default)]
    pub models: Vec<ModelEntry>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    pub max_batch: Option<usize>,
    pub queue: Option<usize>,
    pub prefill_chunk: Option<usize>,
    pub retry_after_s: Option<u64>,
    pub default_max_tokens: Option<usize>,
    pub kv_budget_mib: Option<u64>,
    pub kv_idle_release_s: Option<u64>,
    pub threads: Option<usize>,
    pub max_context: Option<usize>,
    pub device: Option<String>,
    /// `auto`, `f16` or `f32`: the CPU KV cache's element type.
    pub kv_cache: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSection {
    pub policy: Option<String>,
    /// A `bakeoff route calibrate --out` file: the complexity weights and threshold (relative
    /// paths are read from the config file's folder).
    pub calibration: Option<String>,
    pub complexity_threshold: Option<f32>,
    pub complexity_weights: Option<Weights>,
    pub cascade_logprob_threshold: Option<f32>,
    pub fixed_tier: Option<String>,
    pub fallback: Option<bool>,
    pub first_token_timeout_s: Option<f64>,
    pub cascade_timeout_s: Option<f64>,
    pub failures_before_cooldown: Option<u32>,
    pub cooldown_s: Option<f64>,
    pub health_interval_s: Option<f64>,
    pub health_timeout_s: Option<f64>,
}

/// One replica: a local model (`source`) or a remote upstream (`url`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub tier: String,
    /// Hugging Face folder, .gguf file or hub id.
    pub source: Option<String>,
    /// Base URL of an OpenAI-compatible server.
    pub url: Option<String>,
    /// The id clients use; by default the file or folder name, or the upstream's host:port.
    pub name: Option<String>,
    /// The model name sent upstream; asked from the upstream's /v1/models when absent.
    pub upstream_model: Option<String>,
    pub api_key_env: Option<String>,
    pub gguf_file: Option<String>,
    /// Context of a remote model, when known (local models report their own).
    pub context_length: Option<usize>,
}

impl ModelEntry {
    /// `--model TIER=SOURCE`, where SOURCE is a local model or `http(s)://…` / `openai:URL`.
    pub fn parse_flag(s: &str) -> Result<Self, String> {
        let (tier, source) = s.split_once('=').ok_or_else(|| {
            format!("--model `{s}`: expected TIER=SOURCE, e.g. fast=/models/tinyllama.gguf")
        })?;
        if Tier::parse(tier).is_none() {
            return Err(format!(
                "--model `{s}`: the tier must be `fast` or `strong`, not `{tier}`"
            ));
        }
        if source.is_empty() {
            return Err(format!("--model `{s}`: the source is empty"));
        }
        let url = source.strip_prefix("openai:").unwrap_or(source);
        if url.starts_with("http://") || url.starts_with("https://") {
            return Ok(ModelEntry {
                tier: tier.into(),
                url: Some(url.into()),
                ..Default::default()
            });
        }
        Ok(ModelEntry {
            tier: tier.into(),
            source: Some(source.into()),
            ..Default::default()
        })
    }

    pub fn tier(&self) -> Result<Tier, String> {
        Tier::parse(&self.tier)
            .ok_or_else(|| format!("model tier `{}` must be `fast` or `strong`", self.tier))
    }

    /// The client-facing id.
    pub fn id(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        if let Some(src) = &self.source {
            let p = Path::new(src.trim_end_matches('/'));
            let stem = if p.extension().is_some_and(|e| e == "gguf") {
                p.file_stem()
            } else {
                p.file_name()
            };
            return stem.map_or_else(|| src.clone(), |s| s.to_string_lossy().into_owned());
        }
        // `host:port`, as docs/serve.md says: never the scheme, the path or credentials.
        let url = crate::remote::redact_url(self.url.as_deref().unwrap_or_default());
        url.trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .trim_end_matches("/v1")
            .to_string()
    }
}

impl ConfigFile {
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut cfg: ConfigFile =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if let (Some(c), Some(dir)) = (&cfg.router.calibration, path.parent())
            && Path::new(c).is_relative()
        {
            cfg.router.calibration = Some(dir.join(c).display().to_string());
        }
        Ok(cfg)
    }
}

/// Everything `serve` needs, with defaults filled in and values checked.
#[derive(Clone, Debug)]
pub struct ServeSettings {
    pub host: String,
    pub port: u16,
    pub allow_non_loopback: bool,
    pub http: HttpSettings,
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    pub engine: EngineOptions,
    pub threads: Option<usize>,
    pub max_context: Option<usize>,
    pub device: String,
    pub kv_cache: bakeoff_engine::kernels::kvbuf::KvType,
    pub router: RouterConfig,
    pub models: Vec<ModelEntry>,
}

fn secs(v: Option<f64>, default: Duration, name: &str) -> Result<Duration, String> {
    match v {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(format!(
            "{name} must be a positive number of seconds, got {s}"
        )),
    }
}

fn positive(v: Option<usize>, default: usize, name: &str) -> Result<usize, String> {
    match v {
        None => Ok(default),
        Some(0) => Err(format!("{name} must be at least 1")),
        Some(n) => Ok(n),
    }
}

impl ServeSettings {
    pub fn resolve(cfg: ConfigFile) -> Result<Self, String> {
        let api_key = match (&cfg.api_key, &cfg.api_key_env) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(var)) => Some(
                std::env::var(var)
                    .map_err(|_| format!("api_key_env names `{var}`, which is not set"))?,
            ),
            (None, None) => None,
        };
        if api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err("the API key is empty".into());
        }
        let d = EngineOptions::default();
        let e = &cfg.engine;
        let engine = EngineOptions {
            max_batch: positive(e.max_batch, d.max_batch, "engine.max_batch")?,
            queue_capacity: positive(e.queue, d.queue_capacity, "engine.queue")?,
            prefill_chunk: positive(e.prefill_chunk, d.prefill_chunk, "engine.prefill_chunk")?,
            retry_after_s: e.retry_after_s.unwrap_or(d.retry_after_s).max(1),
            step_delay: Duration::ZERO,
            default_max_tokens: positive(
                e.default_max_tokens,
                d.default_max_tokens,
                "engine.default_max_tokens",
            )?,
            kv_budget_bytes: match e.kv_budget_mib {
                Some(0) => return Err("engine.kv_budget_mib must be at least 1".into()),
                Some(m) => m
                    .checked_mul(1 << 20)
                    .ok_or("engine.kv_budget_mib is too large")?,
                None => d.kv_budget_bytes,
            },
            kv_idle_release: e
                .kv_idle_release_s
                .map_or(d.kv_idle_release, Duration::from_secs),
            fault_hook: None,
        };
        let rd = RouterConfig::default();
        let r = &cfg.router;
        let policy: RoutingPolicy = match &r.policy {
            Some(p) => p.parse()?,
            None => rd.policy,
        };
        let fixed_tier = match &r.fixed_tier {
            Some(t) => Tier::parse(t)
                .ok_or_else(|| format!("router.fixed_tier `{t}` must be `fast` or `strong`"))?,
            None => rd.fixed_tier,
        };
        let calibration = match &r.calibration {
            Some(p) => {
                let bytes = std::fs::read(p)
                    .map_err(|e| format!("router.calibration: cannot read {p}: {e}"))?;
                Some(
                    complexity::read_calibration(&bytes)
                        .map_err(|e| format!("router.calibration {p}: {e}"))?,
                )
            }
            None => None,
        };
        if calibration.is_some() && r.complexity_weights.is_some() {
            return Err(
                "router.calibration and router.complexity_weights both set the weights; give one"
                    .into(),
            );
        }
        let weights = match (&r.complexity_weights, &calibration) {
            (Some(w), _) if !w.is_finite() => {
                return Err("router.complexity_weights must be finite numbers".into());
            }
            (Some(w), _) => *w,
            (None, Some(c)) => c.weights,
            (None, None) => rd.complexity_weights,
        };
        let threshold = r
            .complexity_threshold
            .or(calibration.as_ref().map(|c| c.calibration.threshold))
            .unwrap_or(rd.complexity_threshold);
        if !(0.0..=1.0).contains(&threshold) {
            return Err(format!(
                "router.complexity_threshold must be in [0, 1], got {threshold}"
            ));
        }
        let lp = r
            .cascade_logprob_threshold
            .unwrap_or(rd.cascade_logprob_threshold);
        if !(lp.is_finite() && lp <= 0.0) {
            return Err(format!(
                "router.cascade_logprob_threshold must be ≤ 0 (a log-probability), got {lp}"
            ));
        }
        let router = RouterConfig {
            policy,
            complexity_threshold: threshold,
            complexity_weights: weights,
            cascade_logprob_threshold: lp,
            fixed_tier,
            fallback: r.fallback.unwrap_or(rd.fallback),
            first_token_timeout: secs(
                r.first_token_timeout_s,
                rd.first_token_timeout,
                "router.first_token_timeout_s",
            )?,
            cascade_timeout: secs(
                r.cascade_timeout_s,
                rd.cascade_timeout,
                "router.cascade_timeout_s",
            )?,
            failures_before_cooldown: r
                .failures_before_cooldown
                .unwrap_or(rd.failures_before_cooldown)
                .max(1),
            cooldown: secs(r.cooldown_s, rd.cooldown, "router.cooldown_s")?,
            health_interval: secs(
                r.health_interval_s,
                rd.health_interval,
                "router.health_interval_s",
            )?,
            health_timeout: secs(
                r.health_timeout_s,
                rd.health_timeout,
                "router.health_timeout_s",
            )?,
        };
        let hd = HttpSettings::default();
        let http = HttpSettings {
            api_key,
            max_body_bytes: positive(cfg.max_body_bytes, hd.max_body_bytes, "max_body_bytes")?,
            request_timeout: secs(
                cfg.request_timeout_s,
                hd.request_timeout,
                "request_timeout_s",
            )?,
            body_timeout: secs(cfg.body_timeout_s, hd.body_timeout, "body_timeout_s")?,
        };
        let header_timeout = secs(
            cfg.header_timeout_s,
            Duration::from_secs(30),
            "header_timeout_s",
        )?;
        let max_connections = positive(cfg.max_connections, 256, "max_connections")?;
        let shutdown_grace = match cfg.shutdown_grace_s {
            Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
            Some(s) => {
                return Err(format!(
                    "shutdown_grace_s must be zero or a positive number of seconds, got {s}"
                ));
            }
            None => Duration::from_secs(10),
        };
        if cfg.models.is_empty() {
            return Err("no models: give --model fast=SOURCE (and --model strong=SOURCE), or [[models]] in the config".into());
        }
        let mut ids = Vec::new();
        for m in &cfg.models {
            m.tier()?;
            match (&m.source, &m.url) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(format!(
                        "model `{}`: give exactly one of `source` (local) or `url` (remote)",
                        m.id()
                    ));
                }
            }
            let id = m.id();
            if ["auto", "fast", "strong"].contains(&id.as_str()) {
                return Err(format!(
                    "model name `{id}` is reserved; set `name` in the config"
                ));
            }
            ids.push(id);
        }
        Ok(ServeSettings {
            host: cfg.host.unwrap_or_else(|| "127.0.0.1".into()),
            port: cfg.port.unwrap_or(8080),
            allow_non_loopback: cfg.allow_non_loopback.unwrap_or(false),
            http,
            header_timeout,
            max_connections,
            shutdown_grace,
            engine,
            threads: e.threads,
            max_context: e.max_context,
            device: e.device.clone().unwrap_or_else(|| "cpu".into()),
            kv_cache: match &e.kv_cache {
                Some(k) => k.parse().map_err(|m| format!("engine.kv_cache: {m}"))?,
                None => Default::default(),
            },
            router,
            models: cfg.models,
        })
    }

    /// Refuses non-loopback addresses unless allowed: the server has no TLS and, without
    /// `--api-key`, no authentication.
    pub fn check_bind(&self) -> Result<(), String> {
        let addrs: Vec<IpAddr> = match self.host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => (self.host.as_str(), self.port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve host `{}`: {e}", self.host))?
                .map(|a| a.ip())
                .collect(),
        };
        if addrs.iter().all(IpAddr::is_loopback) || self.allow_non_loopback {
            return Ok(());
        }
        Err(format!(
            "refusing to listen on `{}`, which is reachable from other machines; pass --allow-non-loopback \
             (and set --api-key) if that is what you want",
            self.host
        ))
    }
}

#[cfg(test)]
mod tests {
    /// A remote tier is named `host:port`, whatever credentials its URL carries.
    #[test]
    fn a_remote_model_is_named_by_host_and_port_without_credentials() {
        let e =
            super::ModelEntry::parse_flag("strong=http://alice:s3cret@127.0.0.1:8081/v1").unwrap();
        assert_eq!(e.id(), "127.0.0.1:8081");
        let e = super::ModelEntry::parse_flag("fast=https://example.org/").unwrap();
        assert_eq!(e.id(), "example.org");
    }

    use super::*;

    #[test]
    fn flags_parse_into_local_and_remote_replicas() {
        let m = ModelEntry::parse_flag("fast=/m/tiny-q8_0.gguf").unwrap();
        assert_eq!(
            (m.source.as_deref(), m.id()),
            (Some("/m/tiny-q8_0.gguf"), "tiny-q8_0".to_string())
        );
        let m = ModelEntry::parse_flag("strong=http://127.0.0.1:9/v1").unwrap();
        assert_eq!(m.url.as_deref(), Some("http://127.0.0.1:9/v1"));
        let m = ModelEntry::parse_flag("strong=openai:https://x.example/v1").unwrap();
        assert_eq!(m.url.as_deref(), Some("https://x.example/v1"));
        assert!(
            ModelEntry::parse_flag("medium=x")
                .unwrap_err()
                .contains("fast")
        );
        assert!(
            ModelEntry::parse_flag("x")
                .unwrap_err()
                .contains("TIER=SOURCE")
        );
    }

    #[test]
    fn config_file_resolves_with_defaults_and_checks() {
        let cfg: ConfigFile = toml::from_str(
            r#"
            port = 9000
            [router]
            policy = "cascade"
            cascade_logprob_threshold = -2.0
            [[models]]
            tier = "fast"
            source = "/m/a"
            "#,
        )
        .unwrap();
        let s = ServeSettings::resolve(cfg).unwrap();
        assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 9000));
        assert_eq!(s.router.policy, RoutingPolicy::Cascade);
        assert_eq!(s.engine.max_batch, 8);
        assert!(s.check_bind().is_ok());
        let mut open = s.clone();
        open.host = "0.0.0.0".into();
        assert!(
            open.check_bind()
                .unwrap_err()
                .contains("--allow-non-loopback")
        );
        open.allow_non_loopback = true;
        assert!(open.check_bind().is_ok());

        let bad: Result<ConfigFile, _> = toml::from_str("prot = 1");
        assert!(bad.unwrap_err().to_string().contains("prot"));
        let no_models = ServeSettings::resolve(ConfigFile::default()).unwrap_err();
        assert!(no_models.contains("no models"), "{no_models}");

        use bakeoff_engine::kernels::kvbuf::KvType;
        assert_eq!(s.kv_cache, KvType::Auto);
        let kv = |v: &str| {
            ServeSettings::resolve(ConfigFile {
                models: vec![ModelEntry::parse_flag("fast=/m/a").unwrap()],
                engine: EngineSection {
                    kv_cache: Some(v.into()),
                    ..Default::default()
                },
                ..Default::default()
            })
        };
        assert_eq!(kv("f32").unwrap().kv_cache, KvType::F32);
        let e = kv("q8").unwrap_err();
        assert!(e.contains("engine.kv_cache") && e.contains("`q8`"), "{e}");
    }

    /// A calibration file next to the config sets the weights and the threshold; the config's
    /// own threshold wins over the file's; weights from two places are refused.
    #[test]
    fn the_router_starts_from_a_calibration_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = complexity::shipped().unwrap();
        c.weights.code = 7.5;
        c.calibration.threshold = 0.625;
        std::fs::write(
            dir.path().join("routing.json"),
            serde_json::to_string(&c).unwrap(),
        )
        .unwrap();
        let base = "[[models]]\ntier = \"fast\"\nsource = \"/m/a\"\n[router]\ncalibration = \"routing.json\"\n";
        let path = dir.path().join("serve.toml");
        std::fs::write(&path, base).unwrap();
        let s = ServeSettings::resolve(ConfigFile::read(&path).unwrap()).unwrap();
        assert_eq!(s.router.complexity_weights.code, 7.5);
        assert_eq!(s.router.complexity_threshold, 0.625);

        std::fs::write(&path, format!("{base}complexity_threshold = 0.25\n")).unwrap();
        let s = ServeSettings::resolve(ConfigFile::read(&path).unwrap()).unwrap();
        assert_eq!(s.router.complexity_threshold, 0.25);
        assert_eq!(s.router.complexity_weights.code, 7.5);

        std::fs::write(
            &path,
            format!("{base}complexity_weights = {{ bias = 0.0, length = 0.0, code = 1.0, math = 0.0, reasoning = 0.0, turns = 0.0, max_tokens = 0.0 }}\n"),
        )
        .unwrap();
        let e = ServeSettings::resolve(ConfigFile::read(&path).unwrap()).unwrap_err();
        assert!(e.contains("give one"), "{e}");

        std::fs::write(dir.path().join("routing.json"), "{\"kind\": \"routing\"}").unwrap();
        std::fs::write(&path, base).unwrap();
        let e = ServeSettings::resolve(ConfigFile::read(&path).unwrap()).unwrap_err();
        assert!(
            e.contains("router.calibration") && e.contains("routing.json"),
            "{e}"
        );
        std::fs::remove_file(dir.path().join("routing.json")).unwrap();
        let e = ServeSettings::resolve(ConfigFile::read(&path).unwrap()).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");

        let defaults = RouterConfig::default();
        let shipped = complexity::shipped().unwrap();
        assert_eq!(defaults.complexity_weights, shipped.weights);
        assert_eq!(defaults.complexity_threshold, shipped.calibration.threshold);
    }
}
