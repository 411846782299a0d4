//! Arguments shared by the commands that load a model or sample from one.

use anyhow::{Context, Result};
use bakeoff_engine::backend::DeviceKind;
use bakeoff_engine::constrain::OutputConstraint;
use bakeoff_engine::generate::GenParams;
use bakeoff_engine::generate::LoadedModel;
use bakeoff_engine::kernels::CpuCaps;
use bakeoff_engine::loader::{FloatType, LoadOptions};
use bakeoff_engine::sampling::SamplingParams;
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A Hugging Face folder, a .gguf file, a hub id `owner/name[@revision]`, or a catalog name
    /// (`bakeoff list`; pulled and verified on first use).
    #[arg(long, short = 'm')]
    pub model: String,
    /// The file to use from a GGUF hub repository.
    #[arg(long)]
    pub gguf_file: Option<String>,
    /// cpu, cuda or metal (the latter two need a build with that cargo feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Weight type for safetensors models: f32, f16 or bf16 (default: as stored).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Use at most this many positions of the model's context.
    #[arg(long)]
    pub max_context: Option<usize>,
    /// CPU kernels: best (default), no-amx, avx2 or portable; lower levels are for comparing paths.
    #[arg(long, default_value = "best")]
    pub cpu_kernels: String,
    /// Repack the quantized matrices at load instead of reading them from the packed-weights file in
    /// $BAKEOFF_WEIGHT_CACHE (default: the user cache folder, bakeoff/packed; "off" disables).
    #[arg(long)]
    pub no_weight_cache: bool,
    /// Element type of the CPU KV cache: auto (default: f16 where a SIMD attention kernel runs,
    /// AVX-512 or AVX2, as llama.cpp, else f32), f16 or f32.
    #[arg(long, default_value = "auto")]
    pub kv_cache: String,
    /// Prompt tokens computed per step: a longer prompt runs in chunks of this many, which
    /// bounds its activations' memory (as llama.cpp's --ubatch-size).
    #[arg(long, default_value_t = bakeoff_engine::generate::DEFAULT_PREFILL_CHUNK)]
    pub prefill_chunk: usize,
}

impl ModelArgs {
    pub fn options(&self, progress: bool) -> Result<LoadOptions> {
        let device: DeviceKind = self.device.parse()?;
        let dtype: Option<FloatType> = self.dtype.as_deref().map(str::parse).transpose()?;
        if self.threads == Some(0) {
            anyhow::bail!("--threads must be at least 1");
        }
        if self.prefill_chunk == 0 {
            anyhow::bail!("--prefill-chunk must be at least 1");
        }
        Ok(LoadOptions {
            device,
            threads: self.threads,
            dtype,
            max_context: self.max_context,
            progress,
            cpu_kernels: match self.cpu_kernels.as_str() {
                "best" => None,
                "no-amx" => Some(CpuCaps::without_amx()),
                "avx2" => Some(CpuCaps::avx2_only()),
                "portable" => Some(CpuCaps::portable()),
                other => {
                    anyhow::bail!(
                        "--cpu-kernels {other:?} is not one of best, no-amx, avx2, portable"
                    )
                }
            },
            weight_cache: if self.no_weight_cache {
                None
            } else {
                bakeoff_engine::loader::default_weight_cache()?
            },
            kv_cache: self
                .kv_cache
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--kv-cache: {e}"))?,
            prefill_chunk: self.prefill_chunk,
            background_cache_write: false,
        })
    }

    pub fn load(&self, progress: bool) -> Result<LoadedModel> {
        self.load_with(progress, false)
    }

    /// [`ModelArgs::load`], with a first load's packed-weights file written in the background
    /// when `background_cache_write` (an interactive chat, which waits for its first prompt).
    pub fn load_with(&self, progress: bool, background_cache_write: bool) -> Result<LoadedModel> {
        let opts = LoadOptions {
            background_cache_write,
            ..self.options(progress)?
        };
        bakeoff_engine::loader::load(&self.model, self.gguf_file.as_deref(), &opts)
            .with_context(|| format!("cannot load model `{}`", self.model))
    }
}

#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Maximum new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy (the default, so runs are reproducible).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    pub top_p: f32,
    /// Drop tokens below min-p × the top probability (0 = off).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub min_p: f32,
    /// Penalise repeated tokens (1 = off).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    pub repetition_penalty: f32,
    /// Random seed: the same seed gives the same output.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens until --max-tokens (for timing runs).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Hold the answer to any JSON object (constrained decoding).
    #[arg(long, conflicts_with_all = ["json_schema", "regex"])]
    pub json_object: bool,
    /// Hold the answer to the JSON schema in this file (constrained decoding).
    #[arg(long, value_name = "FILE", conflicts_with = "regex")]
    pub json_schema: Option<std::path::PathBuf>,
    /// Hold the answer to this regular expression, matched whole (constrained decoding).
    #[arg(long, value_name = "PATTERN")]
    pub regex: Option<String>,
}

impl SamplingArgs {
    pub fn params(&self) -> Result<GenParams> {
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        };
        sampling.validate()?;
        if self.max_tokens == 0 {
            anyhow::bail!("--max-tokens must be at least 1");
        }
        Ok(GenParams {
            max_tokens: self.max_tokens,
            sampling,
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
            top_logprobs: 0,
            prompt_logprobs: None,
            report_stop_token: false,
            response_format: self.response_format()?,
            compiled_format: None,
        })
    }

    fn response_format(&self) -> Result<Option<OutputConstraint>> {
        if self.json_object {
            return Ok(Some(OutputConstraint::JsonObject));
        }
        if let Some(pattern) = &self.regex {
            return Ok(Some(OutputConstraint::Regex {
                pattern: pattern.clone(),
            }));
        }
        let Some(path) = &self.json_schema else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--json-schema: cannot read {}", path.display()))?;
        let schema: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("--json-schema: {} is not JSON", path.display()))?;
        Ok(Some(OutputConstraint::JsonSchema { schema }))
    }
}

/// Reads all of stdin as UTF-8, naming the problem when it is not.
pub fn read_stdin() -> Result<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .context("cannot read standard input")?;
    String::from_utf8(buf).map_err(|e| {
        anyhow::anyhow!(
            "standard input is not valid UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

pub fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}
