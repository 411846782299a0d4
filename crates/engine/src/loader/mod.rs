//! From a `--model` argument to a [`LoadedModel`]: probe the source, read the config, map the
//! weights, build the tokenizer and chat template, and put the decoder on its device.

pub mod catalog;
pub mod gguf;
pub mod hub;
pub mod packcache;
pub mod safetensors;
pub mod store;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::WeightType;

use crate::backend::DeviceKind;
use crate::backend::cpu::CpuBackend;
use crate::generate::{LoadedModel, Scheduler, SchedulerOptions};
use crate::kernels::CpuCaps;
use crate::model::{CausalLm, GenerationDefaults, ModelFormat, ModelInfo, WeightTypeUse};
use crate::models::decoder::Decoder;
use crate::models::{Arch, DecoderConfig, GgufMeta};
use crate::prompt::{Prompter, PrompterParts};
use crate::template::ChatTemplate;
use crate::tokenizer::{Tokenizer, TokenizerConfig};
use crate::{Error, Result};
use hub::HubId;
use store::{Blob, RawTensor, TensorStore};

/// Where a model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face folder: config.json, safetensors, tokenizer files.
    Dir(PathBuf),
    Gguf(PathBuf),
    Hub {
        id: HubId,
        gguf_file: Option<String>,
    },
    /// A short name from the model catalog (`bakeoff list`).
    Catalog(Box<catalog::CatalogModel>),
}

impl ModelSource {
    /// Existing paths win; then catalog names; otherwise `owner/name[@rev]` is a hub id.
    pub fn parse(s: &str, gguf_file: Option<&str>) -> Result<Self> {
        let p = Path::new(s);
        if p.is_dir() {
            return Ok(ModelSource::Dir(p.to_path_buf()));
        }
        if p.is_file() {
            return Ok(ModelSource::Gguf(p.to_path_buf()));
        }
        let catalog = if s.contains(['/', '\\']) {
            None
        } else {
            let cat = catalog::Catalog::from_env()?;
            if let Some(m) = cat.get(s) {
                if gguf_file.is_some() {
                    return Err(Error::InvalidArgument(format!(
                        "`{s}` is a catalog name for one GGUF file; --gguf-file applies to hub ids"
                    )));
                }
                return Ok(ModelSource::Catalog(Box::new(m.clone())));
            }
            Some(cat)
        };
        if let Some(id) = HubId::parse(s)
            && !s.starts_with('.')
            && !s.starts_with('/')
        {
            return Ok(ModelSource::Hub {
                id,
                gguf_file: gguf_file.map(str::to_string),
            });
        }
        let names = catalog
            .map(|c| format!(" or a catalog name ({})", c.names().join(", ")))
            .unwrap_or_default();
        Err(Error::NotFound(format!(
            "`{s}` is neither an existing folder or .gguf file nor a hub id like \
             owner/name[@revision]{names}"
        )))
    }
}

/// Storage type for safetensors weights (`--dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FloatType {
    F32,
    F16,
    Bf16,
}

impl std::str::FromStr for FloatType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(FloatType::F32),
            "f16" => Ok(FloatType::F16),
            "bf16" => Ok(FloatType::Bf16),
            o => Err(Error::InvalidArgument(format!(
                "unknown dtype `{o}` (f32, f16, bf16)"
            ))),
        }
    }
}

impl FloatType {
    fn ggml(self) -> WeightType {
        match self {
            FloatType::F32 => WeightType::F32,
            FloatType::F16 => WeightType::F16,
            FloatType::Bf16 => WeightType::BF16,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub device: DeviceKind,
    /// CPU threads; all cores when `None`.
    pub threads: Option<usize>,
    /// Convert safetensors weights to this type at load; as stored when `None`.
    pub dtype: Option<FloatType>,
    /// Lower the usable context (memory bound); the model's own when `None`.
    pub max_context: Option<usize>,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// CPU kernel level; the best the processor supports when `None`. Lower levels exist to
    /// compare the paths (`--cpu-kernels avx2` against the AVX-512 packed kernels).
    pub cpu_kernels: Option<CpuCaps>,
    /// Folder of packed-weights files (`packcache`): the first load of a Q4_0 / Q8_0 model
    /// writes its repacked matrices there, later loads copy them from there. Off when `None`.
    pub weight_cache: Option<packcache::WeightCache>,
    /// Element type of the CPU backend's KV cache (`Auto`: f16 where a SIMD attention kernel
    /// runs, AVX-512 or AVX2, as llama.cpp, else f32).
    pub kv_cache: crate::kernels::kvbuf::KvType,
    /// Prompt tokens computed per step by the model's scheduler
    /// ([`crate::generate::DEFAULT_PREFILL_CHUNK`] by default): what bounds a long prompt's
    /// activations.
    pub prefill_chunk: usize,
    /// Write a first load's packed-weights file on a thread of its own, waited for by the
    /// first forward pass, instead of before the load returns: for a chat or a server, which
    /// wait for their first prompt meanwhile. Off, a load's time includes the write and a
    /// first prompt's latency does not.
    pub background_cache_write: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: DeviceKind::Cpu,
            threads: None,
            dtype: None,
            max_context: None,
            progress: false,
            cpu_kernels: None,
            weight_cache: None,
            kv_cache: Default::default(),
            prefill_chunk: crate::generate::DEFAULT_PREFILL_CHUNK,
            background_cache_write: false,
        }
    }
}

/// The packed-weights cache the command-line tools use: the folder `$BAKEOFF_WEIGHT_CACHE` (empty
/// or `off` disables it), else `bakeoff/packed` in the user's cache folder, holding at most
/// `$BAKEOFF_WEIGHT_CACHE_MAX` (a size such as `8G`; default
/// [`packcache::DEFAULT_MAX_BYTES`]).
pub fn default_weight_cache() -> Result<Option<packcache::WeightCache>> {
    let dir = match std::env::var_os("BAKEOFF_WEIGHT_CACHE") {
        Some(v) if v.is_empty() || v == "off" => return Ok(None),
        Some(v) => PathBuf::from(v),
        None => match dirs::cache_dir() {
            Some(d) => d.join("bakeoff").join("packed"),
            None => return Ok(None),
        },
    };
    let mut cache = packcache::WeightCache::new(dir);
    if let Some(v) = std::env::var_os("BAKEOFF_WEIGHT_CACHE_MAX") {
        let v = v.to_string_lossy();
        cache.max_bytes = packcache::parse_size(&v)
            .map_err(|e| Error::InvalidArgument(format!("BAKEOFF_WEIGHT_CACHE_MAX: {e}")))?;
    }
    Ok(Some(cache))
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Everything about a model except its weights on a device.
struct Parts {
    cfg: DecoderConfig,
    store: Box<dyn TensorStore>,
    tokenizer: Tokenizer,
    template: Option<String>,
    defaults: GenerationDefaults,
    add_bos: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
    format: ModelFormat,
    path: PathBuf,
}

/// The tokenizer of a model, without its weights (`bakeoff tokenize`): the files are opened
/// and their metadata read, no tensor is touched.
pub fn load_tokenizer(source: &str, gguf_file: Option<&str>) -> Result<Tokenizer> {
    let (parts, _) = open_parts(source, gguf_file)?;
    Ok(parts.tokenizer)
}

/// Resolves `source` (downloading a hub model when needed) and opens its files.
fn open_parts(source: &str, gguf_file: Option<&str>) -> Result<(Parts, Option<String>)> {
    let parsed = ModelSource::parse(source, gguf_file)?;
    let (local, revision) = match &parsed {
        ModelSource::Dir(p) => (ModelSource::Dir(p.clone()), None),
        ModelSource::Gguf(p) => (ModelSource::Gguf(p.clone()), None),
        ModelSource::Hub { id, gguf_file } => match gguf_file {
            Some(f) => {
                let dir = hub::fetch(id, std::slice::from_ref(f), &[])?;
                (ModelSource::Gguf(dir.join(f)), Some(id.revision.clone()))
            }
            None => (
                ModelSource::Dir(hub::fetch_hf_model(id)?),
                Some(id.revision.clone()),
            ),
        },
        ModelSource::Catalog(m) => {
            let opts = catalog::PullOptions {
                progress: true,
                ..Default::default()
            };
            (ModelSource::Gguf(m.pull(&opts)?.path), None)
        }
    };
    let parts = match &local {
        ModelSource::Dir(dir) => open_hf_dir(dir)?,
        ModelSource::Gguf(path) => open_gguf(path)?,
        ModelSource::Hub { .. } | ModelSource::Catalog(_) => unreachable_hub()?,
    };
    Ok((parts, revision))
}

pub fn load(source: &str, gguf_file: Option<&str>, opts: &LoadOptions) -> Result<LoadedModel> {
    let start = Instant::now();
    let (mut parts, revision) = open_parts(source, gguf_file)?;
    if let Some(ctx) = opts.max_context {
        if ctx == 0 {
            return Err(Error::InvalidArgument(
                "--max-context must be positive".into(),
            ));
        }
        parts.cfg.max_context = parts.cfg.max_context.min(ctx);
    }
    if opts.dtype.is_some() && parts.format == ModelFormat::Gguf {
        return Err(Error::InvalidArgument(
            "--dtype applies to safetensors models; GGUF weights run in their stored types \
             (use `bakeoff quantize` to change them)"
                .into(),
        ));
    }
    check_last_layer(parts.store.as_ref(), &parts.cfg)?;
    let listed = list_matrices(parts.store.as_ref(), &parts.cfg);
    let parameters = count_parameters(parts.store.as_ref(), &parts.cfg);
    let weight_types = weight_type_use(parts.store.as_ref(), &parts.cfg);
    let files = parts.store.files();
    let file_bytes = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let target = opts.dtype.map(FloatType::ggml);
    let transform = move |t: RawTensor| -> Result<RawTensor> {
        match target {
            Some(to) if to != t.dtype => convert_float(t, to),
            _ => Ok(t),
        }
    };
    let mut weight_dtype = describe_dtypes(&listed);
    if let Some(t) = target {
        weight_dtype = dtype_name(t).to_string();
    }
    // The vocabulary's metadata values, freed once the tokenizer holds it, stay in the process
    // until the heap is trimmed: trimmed only after the weights, they were the peak (Qwen2.5-0.5B:
    // 60 MB of freed heap beside its 489 MB of packed weights).
    crate::memory::release_free_heap();
    let model = build_model(&parts.cfg, parts.store.as_ref(), opts, &transform)?;
    crate::memory::release_free_heap();
    let template = match &parts.template {
        Some(src) => Some(ChatTemplate::new(src)?),
        None => None,
    };
    let info = ModelInfo {
        source: source.to_string(),
        revision,
        path: parts.path.clone(),
        format: parts.format,
        arch: parts.cfg.arch,
        config: parts.cfg.clone(),
        weight_dtype,
        weight_types,
        parameters,
        file_bytes,
        files,
        eos_token_ids: parts.cfg.eos_token_ids.clone(),
        chat_template: parts.template.clone(),
        device: model.describe(),
        load_s: start.elapsed().as_secs_f64(),
    };
    let prompter = Prompter::new(PrompterParts {
        tokenizer: parts.tokenizer,
        template,
        add_bos: parts.add_bos,
        bos_token: parts.bos_token,
        eos_token: parts.eos_token,
        eos_ids: info.eos_token_ids.clone(),
        source: source.to_string(),
    });
    Ok(LoadedModel {
        model,
        prompter,
        info,
        defaults: parts.defaults,
        scheduler: Scheduler::new(SchedulerOptions {
            prefill_chunk: opts.prefill_chunk,
            ..SchedulerOptions::default()
        }),
    })
}

/// Puts the decoder for `cfg` on the device `opts` names, reading weights from `store`.
pub fn build_model(
    cfg: &DecoderConfig,
    store: &dyn TensorStore,
    opts: &LoadOptions,
    transform: &dyn Fn(RawTensor) -> Result<RawTensor>,
) -> Result<Box<dyn CausalLm>> {
    let bar = progress_bar(opts.progress, cfg.n_layers as u64 + 2, "loading");
    let progress = |done: usize, _total: usize| {
        if let Some(b) = &bar {
            b.set_position(done as u64);
        }
    };
    let model: Box<dyn CausalLm> = match opts.device {
        DeviceKind::Cpu => {
            let threads = opts.threads.unwrap_or_else(default_threads);
            let caps = opts.cpu_kernels.unwrap_or_else(CpuCaps::detect);
            let cache = opts
                .weight_cache
                .as_ref()
                .filter(|_| caps.avx2)
                .and_then(|wc| packcache::PackCache::open(wc, &store.files()))
                .map(std::sync::Arc::new);
            let backend = CpuBackend::new(threads, caps)?
                .with_pack_cache(cache.clone())
                .with_kv_type(opts.kv_cache);
            let model = Decoder::load(cfg.clone(), store, backend, transform, progress)?;
            // The cache only saves time on later loads; a full disk or a read-only folder must
            // not fail this one, but a user watching the load is told.
            model.backend().persist_in_background(opts.progress);
            if !opts.background_cache_write {
                crate::backend::Backend::settle(model.backend());
            }
            Box::new(model)
        }
        device => {
            let backend = crate::backend::candle::CandleBackend::new(device)?;
            Box::new(Decoder::load(
                cfg.clone(),
                store,
                backend,
                transform,
                progress,
            )?)
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(model)
}

/// Config and weights of a local folder or GGUF file, without tokenizer or template: for tools
/// and tests that work on token ids.
pub fn open_weights(path: &Path) -> Result<(DecoderConfig, Box<dyn TensorStore>)> {
    if path.is_dir() {
        let cfg_path = path.join("config.json");
        if !cfg_path.is_file() {
            return Err(Error::NotFound(format!(
                "{}: missing config.json",
                path.display()
            )));
        }
        let mut cfg = DecoderConfig::from_hf_json(&read_json(&cfg_path)?).map_err(|e| match e {
            Error::InvalidArgument(m) => Error::format(&cfg_path, m),
            other => other,
        })?;
        let store = safetensors::SafetensorsStore::open_dir(path)?;
        if !cfg.tied_embeddings && !store.has("lm_head.weight") {
            cfg.tied_embeddings = true;
        }
        Ok((cfg, Box::new(store)))
    } else {
        let store = gguf::GgufStore::open(path)?;
        let mut cfg = DecoderConfig::from_gguf(&GgufMeta {
            map: store.metadata(),
        })
        .map_err(|e| match e {
            Error::InvalidArgument(m) => Error::format(path, m),
            other => other,
        })?;
        store.check_block_count(cfg.n_layers)?;
        cfg.tied_embeddings = !store.has("lm_head.weight");
        if let Some(emb) = store.content.tensor_infos.get("token_embd.weight") {
            cfg.vocab_size = emb.shape[0];
        }
        apply_rope_freqs(&mut cfg, &store, path)?;
        Ok((cfg, Box::new(store)))
    }
}

/// llama.cpp's converter writes Llama 3.x rope scaling as the `rope_freqs.weight` tensor (one
/// divisor per frequency) rather than as metadata.
fn apply_rope_freqs(cfg: &mut DecoderConfig, store: &dyn TensorStore, path: &Path) -> Result<()> {
    if !store.has("rope_freqs.weight") {
        return Ok(());
    }
    if cfg.rope_scaling != crate::models::RopeScaling::None {
        return Err(Error::format(
            path,
            format!(
                "both rope scaling metadata ({:?}) and a rope_freqs.weight tensor",
                cfg.rope_scaling
            ),
        ));
    }
    let factors = store.tensor("rope_freqs.weight")?.to_f32()?;
    cfg.rope_scaling = crate::models::RopeScaling::Factors { factors };
    cfg.validate().map_err(|e| match e {
        Error::InvalidArgument(m) => Error::format(path, m),
        other => other,
    })
}

/// [`open_weights`] then [`build_model`], with `--dtype` applied.
pub fn load_model_only(path: &Path, opts: &LoadOptions) -> Result<Box<dyn CausalLm>> {
    let (mut cfg, store) = open_weights(path)?;
    if let Some(ctx) = opts.max_context {
        cfg.max_context = cfg.max_context.min(ctx);
    }
    let target = opts.dtype.map(FloatType::ggml);
    let transform = move |t: RawTensor| -> Result<RawTensor> {
        match target {
            Some(to) if to != t.dtype => convert_float(t, to),
            _ => Ok(t),
        }
    };
    check_last_layer(store.as_ref(), &cfg)?;
    build_model(&cfg, store.as_ref(), opts, &transform)
}

/// The layer count comes from the config; per-layer lists and caches are sized by it, so its
/// last layer must exist before anything is allocated for the others.
fn check_last_layer(store: &dyn TensorStore, cfg: &DecoderConfig) -> Result<()> {
    let Some(last) = cfg.n_layers.checked_sub(1) else {
        return Ok(());
    };
    let name = &crate::models::layer_tensor_names(last, false)[1];
    if !store.has(name) {
        return Err(Error::tensor(
            name,
            format!(
                "missing: the config says {} layers but the weights have no layer {last}",
                cfg.n_layers
            ),
        ));
    }
    Ok(())
}

fn unreachable_hub() -> Result<Parts> {
    Err(Error::InvalidArgument(
        "hub sources are resolved to local files first".into(),
    ))
}

pub(crate) fn progress_bar(show: bool, len: u64, what: &str) -> Option<indicatif::ProgressBar> {
    if !show {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {elapsed}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    Some(bar)
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

fn open_hf_dir(dir: &Path) -> Result<Parts> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.is_file() {
        return Err(Error::NotFound(format!(
            "{}: missing config.json (is this a Hugging Face model folder?)",
            dir.display()
        )));
    }
    let cfg_json = read_json(&cfg_path)?;
    let mut cfg = DecoderConfig::from_hf_json(&cfg_json).map_err(|e| match e {
        Error::InvalidArgument(m) => Error::format(&cfg_path, m),
        other => other,
    })?;
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(Error::NotFound(format!(
            "{}: missing tokenizer.json",
            dir.display()
        )));
    }
    let mut tokenizer = Tokenizer::from_file(&tok_path)?;
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.is_file() {
        Some(TokenizerConfig::from_file(&tc_path)?)
    } else {
        None
    };
    if let Some(tc) = &tc {
        tokenizer.apply_config(tc);
    }
    let gen_path = dir.join("generation_config.json");
    let mut defaults = GenerationDefaults::default();
    if gen_path.is_file() {
        let g = read_json(&gen_path)?;
        for id in crate::models::eos_ids_from_json(g.get("eos_token_id")) {
            if !cfg.eos_token_ids.contains(&id) {
                cfg.eos_token_ids.push(id);
            }
        }
        defaults = serde_json::from_value(g).unwrap_or_default();
    }
    let eos_token = tc.as_ref().and_then(|t| t.eos_token());
    if let Some(id) = eos_token.as_deref().and_then(|t| tokenizer.token_to_id(t))
        && !cfg.eos_token_ids.contains(&id)
    {
        cfg.eos_token_ids.push(id);
    }
    let store = safetensors::SafetensorsStore::open_dir(dir)?;
    // Tied checkpoints may still ship lm_head; untied ones must.
    if !cfg.tied_embeddings && !store.has("lm_head.weight") {
        cfg.tied_embeddings = true;
    }
    Ok(Parts {
        add_bos: tc
            .as_ref()
            .and_then(|t| t.add_bos_token)
            .unwrap_or(cfg.arch == Arch::Llama),
        bos_token: tc.as_ref().and_then(|t| t.bos_token()),
        eos_token,
        template: tc.as_ref().and_then(|t| t.chat_template()),
        cfg,
        store: Box::new(store),
        tokenizer,
        defaults,
        format: ModelFormat::Safetensors,
        path: dir.to_path_buf(),
    })
}

fn open_gguf(path: &Path) -> Result<Parts> {
    let mut store = gguf::GgufStore::open(path)?;
    let md = GgufMeta {
        map: store.metadata(),
    };
    let mut cfg = DecoderConfig::from_gguf(&md).map_err(|e| match e {
        Error::InvalidArgument(m) => Error::format(path, m),
        other => other,
    })?;
    // A vocabulary-only file has no tensors at all and still tokenizes; loading its weights
    // fails later, on the first missing tensor.
    if !store.content.tensor_infos.is_empty() {
        store.check_block_count(cfg.n_layers)?;
    }
    cfg.tied_embeddings = !store.has("lm_head.weight");
    apply_rope_freqs(&mut cfg, &store, path)?;
    let template = md.str("tokenizer.chat_template").ok().map(str::to_string);
    let tokenizer = Tokenizer::from_gguf_taking(&mut store.content, path)?;
    if cfg.vocab_size == 0 {
        cfg.vocab_size = tokenizer.vocab_size();
    }
    if let Some(emb) = store.content.tensor_infos.get("token_embd.weight") {
        cfg.vocab_size = emb.shape[0];
    }
    if cfg.arch == Arch::Qwen2 {
        for t in crate::models::qwen2::END_OF_TURN_TOKENS {
            if let Some(id) = tokenizer.token_to_id(t)
                && !cfg.eos_token_ids.contains(&id)
            {
                cfg.eos_token_ids.push(id);
            }
        }
    }
    // As llama.cpp decides it: the file's add_bos_token, else the tokenizer kind's default
    // (SentencePiece and llama-bpe add BOS; smollm and qwen2 do not).
    let add_bos = tokenizer.adds_bos();
    // The vocabulary and merges went into the tokenizer; the scores and token types it was
    // built from, as metadata values, would be held through the weight load and the first
    // prompt, the process's peak.
    for key in ["tokenizer.ggml.scores", "tokenizer.ggml.token_type"] {
        store.content.metadata.remove(key);
    }
    let bos_token = cfg.bos_token_id.and_then(|id| tokenizer.id_to_token(id));
    let eos_token = cfg
        .eos_token_ids
        .first()
        .and_then(|&id| tokenizer.id_to_token(id));
    Ok(Parts {
        cfg,
        tokenizer,
        template,
        defaults: GenerationDefaults::default(),
        add_bos,
        bos_token,
        eos_token,
        format: ModelFormat::Gguf,
        path: path.to_path_buf(),
        store: Box::new(store),
    })
}

fn list_matrices(store: &dyn TensorStore, cfg: &DecoderConfig) -> Vec<WeightType> {
    let mut names: Vec<String> = (0..cfg.n_layers)
        .flat_map(|i| crate::models::layer_tensor_names(i, false))
        .filter(|n| !n.ends_with("layernorm.weight"))
        .collect();
    names.push("model.embed_tokens.weight".into());
    names.push("lm_head.weight".into());
    names
        .iter()
        .filter_map(|n| store.tensor(n).ok())
        .map(|t| t.dtype)
        .collect()
}

/// Every tensor name the config implies, the output head included (absent when tied).
fn model_tensor_names(cfg: &DecoderConfig) -> Vec<String> {
    let mut names: Vec<String> = (0..cfg.n_layers)
        .flat_map(|i| crate::models::layer_tensor_names(i, cfg.qkv_bias))
        .collect();
    names.extend(
        [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "lm_head.weight",
        ]
        .map(String::from),
    );
    names
}

fn count_parameters(store: &dyn TensorStore, cfg: &DecoderConfig) -> u64 {
    let names = model_tensor_names(cfg);
    names
        .iter()
        .filter_map(|n| store.tensor(n).ok())
        .map(|t| t.elem_count() as u64)
        .sum()
}

/// The storage types of the model's tensors as stored (before any `--dtype`), with the tensor
/// count and bytes of each, most bytes first.
fn weight_type_use(store: &dyn TensorStore, cfg: &DecoderConfig) -> Vec<WeightTypeUse> {
    let names = model_tensor_names(cfg);
    let mut by: Vec<(WeightType, usize, u64)> = Vec::new();
    for t in names.iter().filter_map(|n| store.tensor(n).ok()) {
        let bytes = t.data.bytes().len() as u64;
        match by.iter_mut().find(|e| e.0 == t.dtype) {
            Some(e) => {
                e.1 += 1;
                e.2 += bytes;
            }
            None => by.push((t.dtype, 1, bytes)),
        }
    }
    by.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    by.into_iter()
        .map(|(t, tensors, bytes)| WeightTypeUse {
            dtype: t.name().to_string(),
            tensors,
            bytes,
        })
        .collect()
}

pub fn dtype_name(d: WeightType) -> &'static str {
    d.name()
}

fn describe_dtypes(ds: &[WeightType]) -> String {
    let mut names: Vec<&str> = ds.iter().map(|d| dtype_name(*d)).collect();
    // The most common type first: it is the one people name the file after.
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for n in &names {
        match counts.iter_mut().find(|(k, _)| k == n) {
            Some((_, c)) => *c += 1,
            None => counts.push((n, 1)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    names = counts.iter().map(|(k, _)| *k).collect();
    match names.len() {
        0 => "unknown".into(),
        1 => names[0].to_string(),
        _ => format!("mixed({})", names.join(",")),
    }
}

/// Float-to-float conversion of a stored tensor for `--dtype`.
pub fn convert_float(t: RawTensor, to: WeightType) -> Result<RawTensor> {
    if !matches!(
        t.dtype,
        WeightType::F32 | WeightType::F16 | WeightType::BF16
    ) {
        return Err(Error::tensor(
            &t.name,
            format!("cannot convert {:?} weights with --dtype", t.dtype),
        ));
    }
    let vals = t.to_f32()?;
    let bytes: Vec<u8> = match to {
        WeightType::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        WeightType::F16 => vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        WeightType::BF16 => vals
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        other => {
            return Err(Error::tensor(
                &t.name,
                format!("--dtype cannot target {other:?}"),
            ));
        }
    };
    Ok(RawTensor {
        name: t.name,
        dtype: to,
        shape: t.shape,
        data: Blob::Owned(std::sync::Arc::new(bytes)),
    })
}

/// Bytes of weights one decode step reads: every layer tensor, the final norm and the output
/// head (the embedding table when tied; an untied table is only indexed, one row per token).
/// Divided into the memory bandwidth this gives the decode speed cap.
pub fn bytes_read_per_token(path: &Path) -> Result<u64> {
    let (cfg, store) = open_weights(path)?;
    let mut names: Vec<String> = (0..cfg.n_layers)
        .flat_map(|i| crate::models::layer_tensor_names(i, cfg.qkv_bias))
        .collect();
    names.push("model.norm.weight".into());
    names.push(if cfg.tied_embeddings || !store.has("lm_head.weight") {
        "model.embed_tokens.weight".into()
    } else {
        "lm_head.weight".into()
    });
    let mut total = 0u64;
    for n in names {
        total += store.tensor(&n)?.data.bytes().len() as u64;
    }
    Ok(total)
}
