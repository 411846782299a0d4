//! The worker: the part of the bench that runs inside a child process, one model per process, so
//! memory accounting starts clean and models cannot disturb each other. It loads the model (cold
//! where the page cache can be dropped, then warm), runs warm-ups and the measured repetitions of
//! every scenario and context depth, and returns a [`ModelResult`] with the raw samples.
//!
//! Protocol with the parent: a [`Job`] as JSON on stdin; the result as JSON on stdout; progress
//! as lines starting with [`PROGRESS_PREFIX`] on stderr (anything else on stderr is passed on).

use std::io::{Read, Write};
use std::time::Instant;

use bakeoff_engine::generate::LoadedModel;
use bakeoff_engine::generate::{Event, Flow, GenParams, generate};
use bakeoff_engine::loader::{LoadOptions, load};
use bakeoff_engine::sampling::SamplingParams;
use bakeoff_engine::template::Message;
use serde::{Deserialize, Serialize};

use crate::env::{self, Rapl, cpu_seconds};
use crate::error::{BenchError, Result};
use crate::job::{Job, ModelRef, WARMUP_TOKENS};
use crate::remote::Client;
use crate::scenarios::{DEPTH_PROMPT, ScenarioId, estimate_tokens, fit_to_tokens};
use bakeoff_record::bench::{
    DepthResult, LoadTimes, Memory, ModelResult, Overhead, RunSample, Runtime, ScenarioResult,
    Stats,
};
use bakeoff_record::hash::sha256_file;
use bakeoff_record::{EngineKind, FileDigest, ModelIdentity};

pub const PROGRESS_PREFIX: &str = "@@bakeoff-bench-progress ";

/// One finished step of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub done: u64,
    pub what: String,
}

/// Reads a job from `input`, runs it, writes the result to `output` and progress to `progress_out`.
pub fn worker_main(
    mut input: impl Read,
    mut output: impl Write,
    mut progress_out: impl Write,
) -> Result<()> {
    let mut text = String::new();
    input
        .read_to_string(&mut text)
        .map_err(BenchError::Output)?;
    let job: Job = serde_json::from_str(&text)?;
    let result = run_job(&job, &mut |p| {
        if let Ok(line) = serde_json::to_string(p) {
            // Progress is best effort: a parent that stopped reading must not fail the run.
            let _ = writeln!(progress_out, "{PROGRESS_PREFIX}{line}")
                .and_then(|_| progress_out.flush());
        }
    });
    serde_json::to_writer(&mut output, &result)?;
    writeln!(output)
        .and_then(|_| output.flush())
        .map_err(BenchError::Output)
}

/// Runs a job in this process. Failures end up in `error`, with everything measured before them.
pub fn run_job(job: &Job, progress: &mut dyn FnMut(&Progress)) -> ModelResult {
    let start = Instant::now();
    let mut result = empty_result(job);
    let mut steps = Steps { done: 0, progress };
    let outcome = match &job.model {
        ModelRef::Local { source, gguf_file } => {
            run_local(job, source, gguf_file.as_deref(), &mut result, &mut steps)
        }
        ModelRef::Openai { base_url, model } => {
            run_remote(job, base_url, model, &mut result, &mut steps)
        }
    };
    if let Err(e) = outcome {
        result.error = Some(error_chain(&e));
    }
    if job.model.is_local() {
        // Read last, so it covers the whole job, including a failed one.
        result.memory.peak_rss_bytes = Some(bakeoff_engine::memory::peak_rss_bytes());
    }
    result.overhead = overhead(
        &result,
        result.overhead.as_ref().map_or(0.0, |o| o.clock_read_ns),
    );
    result.job_s = start.elapsed().as_secs_f64();
    result
}

/// The error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

struct Steps<'a> {
    done: u64,
    progress: &'a mut dyn FnMut(&Progress),
}

impl Steps<'_> {
    fn tick(&mut self, what: String) {
        self.done += 1;
        (self.progress)(&Progress {
            done: self.done,
            what,
        });
    }
}

pub(crate) fn empty_result(job: &Job) -> ModelResult {
    let local = job.model.is_local();
    ModelResult {
        label: job.label.clone(),
        model: ModelIdentity {
            source: job.source.clone(),
            engine: if local {
                EngineKind::Local
            } else {
                EngineKind::Openai
            },
            path: None,
            revision: None,
            format: if local {
                "unknown".into()
            } else {
                "remote".into()
            },
            arch: None,
            dtype: None,
            parameters: None,
            file_bytes: None,
            files: Vec::new(),
            max_context: None,
            synthetic: None,
            chat_template: None,
        },
        run: Runtime {
            device: job.device.clone(),
            backend: String::new(),
            threads: job.threads,
            dtype: job.dtype.clone(),
            max_context: job.max_context,
        },
        load: LoadTimes {
            warm_s: None,
            cold_s: None,
            note: None,
        },
        memory: Memory {
            peak_rss_bytes: None,
            rss_after_load_bytes: None,
            kv_cache_bytes: None,
            device_bytes: None,
        },
        scenarios: Vec::new(),
        depths: Vec::new(),
        overhead: None,
        job_s: 0.0,
        worker_pid: std::process::id(),
        error: None,
    }
}

/// Sums the bench's cost and the decode time over every measured sample.
fn overhead(r: &ModelResult, clock_read_ns: f64) -> Option<Overhead> {
    let samples = r
        .scenarios
        .iter()
        .flat_map(|s| &s.samples)
        .chain(r.depths.iter().flat_map(|d| &d.samples));
    let (mut bench_s, mut decode_s) = (0.0, 0.0);
    for s in samples {
        bench_s += s.bench_overhead_s;
        decode_s += s.decode_span_s().unwrap_or(0.0);
    }
    (decode_s > 0.0).then(|| Overhead {
        bench_s,
        decode_s,
        fraction: bench_s / decode_s,
        clock_read_ns,
    })
}

/// Nanoseconds per `Instant::now()`: the callback's own timing costs two reads per token.
fn clock_read_ns() -> f64 {
    const N: u32 = 20_000;
    let t0 = Instant::now();
    let mut last = t0;
    for _ in 0..N {
        last = std::hint::black_box(Instant::now());
    }
    last.duration_since(t0).as_nanos() as f64 / f64::from(N)
}

/// Probes read around every measured run.
pub struct Probes {
    rapl: Option<Rapl>,
    clock_ns: f64,
    cores: usize,
}

impl Probes {
    pub fn new() -> Probes {
        Probes {
            rapl: Rapl::open(),
            clock_ns: clock_read_ns(),
            cores: env::cores(),
        }
    }
}

impl Default for Probes {
    fn default() -> Self {
        Probes::new()
    }
}

fn run_local(
    job: &Job,
    source: &str,
    gguf_file: Option<&str>,
    result: &mut ModelResult,
    steps: &mut Steps<'_>,
) -> Result<()> {
    let opts = LoadOptions {
        device: job.device.parse()?,
        threads: job.threads,
        dtype: job.dtype.as_deref().map(str::parse).transpose()?,
        max_context: job.max_context,
        progress: false,
        cpu_kernels: None,
        weight_cache: job.weight_cache.clone(),
        kv_cache: job.kv_cache,
        prefill_chunk: bakeoff_engine::generate::DEFAULT_PREFILL_CHUNK,
        // A load's measured time includes the packed-weights file it writes, and no measured
        // prompt shares the machine with that write.
        background_cache_write: false,
    };
    // First load: cold when the page cache can be dropped. It also names the files to hash.
    let cold = job.cold_load && env::can_drop_caches();
    if cold {
        env::drop_caches()?;
    }
    let t = Instant::now();
    let mut lm = load(source, gguf_file, &opts)?;
    touch_weights(&mut lm)?;
    let first_s = t.elapsed().as_secs_f64();
    let files = lm.info.files.clone();
    drop(lm);
    steps.tick(if cold {
        "cold load".into()
    } else {
        "first load".into()
    });

    // Hashing reads every file, which also leaves them in the page cache for the warm load.
    let mut digests = Vec::new();
    for f in &files {
        let bytes = std::fs::metadata(f)
            .map_err(|e| BenchError::io(f, e))?
            .len();
        digests.push(FileDigest {
            path: f.clone(),
            bytes: Some(bytes),
            sha256: Some(sha256_file(f).map_err(|e| BenchError::io(f, e))?),
        });
    }
    steps.tick("sha-256".into());

    let t = Instant::now();
    let mut lm = load(source, gguf_file, &opts)?;
    touch_weights(&mut lm)?;
    let warm_s = t.elapsed().as_secs_f64();
    result.memory.rss_after_load_bytes = Some(bakeoff_engine::memory::current_rss_bytes());
    result.load = LoadTimes {
        warm_s: Some(warm_s),
        cold_s: cold.then_some(first_s),
        note: if cold {
            None
        } else if !job.cold_load {
            Some("cold load not measured: disabled with --no-cold-load".into())
        } else {
            Some("cold load not measured: /proc/sys/vm/drop_caches is not writable".into())
        },
    };
    let info = &lm.info;
    result.model = info.identity(&job.source, digests);
    result.run.backend = info.device.clone();
    steps.tick("warm load".into());

    let probes = Probes::new();
    result.overhead = Some(Overhead {
        bench_s: 0.0,
        decode_s: 0.0,
        fraction: 0.0,
        clock_read_ns: probes.clock_ns,
    });
    let mut kv_max = 0u64;
    for &id in &job.params.scenarios {
        let r = local_scenario(&mut lm, job, id, &probes, &mut kv_max, steps)?;
        result.scenarios.push(r);
    }
    if !job.params.depths.is_empty() {
        local_depths(&mut lm, job, &probes, &mut kv_max, result, steps)?;
    }
    result.memory.kv_cache_bytes = Some(kv_max);
    Ok(())
}

/// Weights are memory-mapped, so pages a load did not touch are read on first use; one forward
/// pass reads every weight once, so a load time includes it to mean "ready to answer".
fn touch_weights(lm: &mut LoadedModel) -> Result<()> {
    let id = lm.info.config.bos_token_id.unwrap_or(0);
    lm.extend(&[id], false)?;
    lm.reset_cache();
    Ok(())
}

fn user(content: String) -> Vec<Message> {
    vec![Message::user(content)]
}

fn local_scenario(
    lm: &mut LoadedModel,
    job: &Job,
    id: ScenarioId,
    probes: &Probes,
    kv_max: &mut u64,
    steps: &mut Steps<'_>,
) -> Result<ScenarioResult> {
    let s = crate::scenarios::scenario(id);
    let mut prompts = Vec::new();
    let mut content_tokens = Vec::new();
    for p in s.prompts {
        let tok = &lm.prompter.tokenizer();
        let (text, n) = fit_to_tokens(p, s.filler, s.target_tokens, &mut |t| {
            Ok(tok.encode(t, false)?.len())
        })?;
        prompts.push(lm.prompter.encode_chat(&user(text))?);
        content_tokens.push(n);
    }
    // A prompt that leaves no room for the tokens asked would end early: skip, and say so.
    let ctx = lm.model.config().max_context;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest + job.params.max_tokens > ctx {
        for _ in 0..job.params.warmup + job.params.repetitions {
            steps.tick(format!("{id} skipped"));
        }
        return Ok(ScenarioResult {
            scenario: id,
            content_tokens,
            samples: Vec::new(),
            stats: Stats::of(&[], probes.cores),
            note: Some(format!(
                "skipped: a {longest}-token prompt and {} generated tokens exceed the context of {ctx}",
                job.params.max_tokens
            )),
        });
    }
    for w in 0..job.params.warmup {
        measure(
            lm,
            &prompts[w % prompts.len()],
            WARMUP_TOKENS.min(job.params.max_tokens),
            true,
            w,
            w % prompts.len(),
            probes,
        )?;
        steps.tick(format!("{id} warm-up"));
    }
    let mut samples = Vec::new();
    for r in 0..job.params.repetitions {
        let i = r % prompts.len();
        samples.push(measure(
            lm,
            &prompts[i],
            job.params.max_tokens,
            true,
            r,
            i,
            probes,
        )?);
        *kv_max = (*kv_max).max(lm.model.kv_cache_bytes() as u64);
        steps.tick(format!("{id} {}/{}", r + 1, job.params.repetitions));
    }
    let stats = Stats::of(&samples, probes.cores);
    Ok(ScenarioResult {
        scenario: id,
        content_tokens,
        samples,
        stats,
        note: None,
    })
}

fn local_depths(
    lm: &mut LoadedModel,
    job: &Job,
    probes: &Probes,
    kv_max: &mut u64,
    result: &mut ModelResult,
    steps: &mut Steps<'_>,
) -> Result<()> {
    let ctx = lm.model.config().max_context;
    let room = ctx.saturating_sub(job.params.depth_tokens);
    let mut prompts = Vec::new();
    for &depth in &job.params.depths {
        let target = depth.min(room);
        let mut count =
            |t: &str| -> Result<usize> { Ok(lm.prompter.encode_chat(&user(t.to_string()))?.len()) };
        let (text, n) = fit_to_tokens(
            DEPTH_PROMPT,
            crate::scenarios::LONG.filler,
            target,
            &mut count,
        )?;
        // Not even one word of the instruction fits beside the chat template.
        if n > target {
            return Err(BenchError::InvalidArgument(format!(
                "depth {depth} is too small: the chat template with one word takes {n} tokens \
                 (context {ctx}, {} generated)",
                job.params.depth_tokens
            )));
        }
        prompts.push((depth, depth > room, lm.prompter.encode_chat(&user(text))?));
    }
    for w in 0..job.params.warmup {
        if let Some((_, _, ids)) = prompts.first() {
            measure(
                lm,
                ids,
                WARMUP_TOKENS.min(job.params.depth_tokens),
                true,
                w,
                0,
                probes,
            )?;
        }
        steps.tick("depth warm-up".into());
    }
    for (depth, clamped, ids) in prompts {
        let mut samples = Vec::new();
        for r in 0..job.params.repetitions {
            samples.push(measure(
                lm,
                &ids,
                job.params.depth_tokens,
                true,
                r,
                0,
                probes,
            )?);
            *kv_max = (*kv_max).max(lm.model.kv_cache_bytes() as u64);
            steps.tick(format!(
                "depth {depth} {}/{}",
                r + 1,
                job.params.repetitions
            ));
        }
        let stats = Stats::of(&samples, probes.cores);
        result.depths.push(DepthResult {
            depth,
            clamped,
            samples,
            stats,
        });
    }
    Ok(())
}

/// One timed generation from an empty KV cache: greedy, exactly `max_tokens` tokens unless the
/// context fills (or, with `ignore_eos` false, an end-of-sequence token comes). The bench's only
/// work inside the timed region is the callback, which counts tokens; it times itself, and that
/// time plus one clock read per token is reported as the bench's overhead.
pub fn measure(
    lm: &mut LoadedModel,
    ids: &[u32],
    max_tokens: usize,
    ignore_eos: bool,
    repetition: usize,
    prompt_index: usize,
    probes: &Probes,
) -> Result<RunSample> {
    lm.reset_cache();
    let params = GenParams {
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos,
        top_logprobs: 0,
        prompt_logprobs: None,
        report_stop_token: false,
        response_format: None,
        compiled_format: None,
    };
    let mut callback_ns: u128 = 0;
    let mut count = 0usize;
    let e0 = probes.rapl.as_ref().map(Rapl::read);
    let c0 = cpu_seconds();
    let t0 = Instant::now();
    let g = generate(lm, ids, &params, |ev| {
        let s = Instant::now();
        if matches!(ev, Event::Token(_)) {
            count += 1;
        }
        callback_ns += s.elapsed().as_nanos();
        Flow::Continue
    })?;
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - c0;
    let energy_j = match (&probes.rapl, e0) {
        (Some(r), Some(before)) => Some(r.joules(&before, &r.read())),
        _ => None,
    };
    if count != g.ids.len() || g.token_times.len() != g.ids.len() {
        return Err(BenchError::InvalidArgument(format!(
            "the engine reported {} tokens and {} timestamps, the callback saw {count}",
            g.ids.len(),
            g.token_times.len()
        )));
    }
    Ok(RunSample {
        repetition,
        prompt_index,
        prompt_tokens: ids.len(),
        generated_tokens: g.ids.len(),
        finish_reason: g.done.finish_reason.as_str().to_string(),
        token_times_s: g.token_times,
        prefill_s: Some(g.done.timings.prefill_ms / 1e3),
        wall_s,
        cpu_s: cpu_s.is_finite().then_some(cpu_s),
        energy_j,
        bench_overhead_s: callback_ns as f64 * 1e-9 + count as f64 * probes.clock_ns * 1e-9,
    })
}

/// Servers such as llama.cpp's reuse the KV cache of a previous request's matching prompt
/// prefix, while the local bench starts every run from an empty cache. Tagging each remote
/// request with its own number makes prompts differ right after the chat template's header, so
/// time to first token includes the whole prompt on both sides (a few more prompt tokens).
fn tagged(counter: &mut usize, text: &str) -> String {
    *counter += 1;
    format!("[{counter}] {text}")
}

/// What scenario and depth results of a remote engine say about [`tagged`].
const TAG_NOTE: &str = "each request starts with a unique tag such as `[3] ` so that a server's prompt-prefix cache cannot serve it";

fn run_remote(
    job: &Job,
    base_url: &str,
    model: &str,
    result: &mut ModelResult,
    steps: &mut Steps<'_>,
) -> Result<()> {
    let client = Client::new(base_url, model, job.timeout_s, &job.allowed_hosts)?;
    result.run.backend = bakeoff_record::redact::redact_url(client.url());
    result.model.arch = Some(model.to_string());
    result.load.note = Some("not measured: remote engine".into());
    let mut count = |t: &str| -> Result<usize> { Ok(estimate_tokens(t)) };
    let mut sent = 0usize;
    for &id in &job.params.scenarios {
        let s = crate::scenarios::scenario(id);
        let mut prompts = Vec::new();
        for p in s.prompts {
            prompts.push(fit_to_tokens(p, s.filler, s.target_tokens, &mut count)?);
        }
        for w in 0..job.params.warmup {
            client.stream(
                &tagged(&mut sent, &prompts[w % prompts.len()].0),
                WARMUP_TOKENS.min(job.params.max_tokens),
            )?;
            steps.tick(format!("{id} warm-up"));
        }
        let mut samples = Vec::new();
        for r in 0..job.params.repetitions {
            let i = r % prompts.len();
            let (text, n) = &prompts[i];
            samples.push(
                client
                    .stream(&tagged(&mut sent, text), job.params.max_tokens)?
                    .into_sample(r, i, *n),
            );
            steps.tick(format!("{id} {}/{}", r + 1, job.params.repetitions));
        }
        let content_tokens = prompts.iter().map(|p| p.1).collect();
        let stats = Stats::of(&samples, env::cores());
        result.scenarios.push(ScenarioResult {
            scenario: id,
            content_tokens,
            samples,
            stats,
            note: Some(TAG_NOTE.into()),
        });
    }
    let mut depth_prompts = Vec::new();
    for &depth in &job.params.depths {
        depth_prompts.push((
            depth,
            fit_to_tokens(
                DEPTH_PROMPT,
                crate::scenarios::LONG.filler,
                depth,
                &mut count,
            )?,
        ));
    }
    if let Some((_, (text, _))) = depth_prompts.first() {
        for _ in 0..job.params.warmup {
            client.stream(
                &tagged(&mut sent, text),
                WARMUP_TOKENS.min(job.params.depth_tokens),
            )?;
            steps.tick("depth warm-up".into());
        }
    }
    for (depth, (text, n)) in depth_prompts {
        let mut samples = Vec::new();
        for r in 0..job.params.repetitions {
            samples.push(
                client
                    .stream(&tagged(&mut sent, &text), job.params.depth_tokens)?
                    .into_sample(r, 0, n),
            );
            steps.tick(format!(
                "depth {depth} {}/{}",
                r + 1,
                job.params.repetitions
            ));
        }
        let stats = Stats::of(&samples, env::cores());
        result.depths.push(DepthResult {
            depth,
            clamped: false,
            samples,
            stats,
        });
    }
    Ok(())
}
