//! The worker on tiny synthetic models, in this process: exact token counts, EOS ignored,
//! metrics that are finite and consistent with each other, depths measured as asked.
#![allow(clippy::unwrap_used)]

mod common;

use bakeoff_bench::job::{BenchConfig, RunParams, default_params};
use bakeoff_bench::scenarios::ScenarioId;
use bakeoff_bench::worker::{Probes, measure, run_job};
use bakeoff_engine::loader::{LoadOptions, load};
use bakeoff_engine::template::Message;
use bakeoff_record::bench::Stats;

fn config(model: &str) -> BenchConfig {
    BenchConfig {
        models: vec![model.to_string()],
        threads: vec![1],
        params: RunParams {
            scenarios: vec![ScenarioId::Short, ScenarioId::Code],
            depths: vec![128, 160],
            repetitions: 2,
            warmup: 1,
            max_tokens: 12,
            depth_tokens: 6,
            ..default_params()
        },
        cold_load: false,
        ..BenchConfig::default()
    }
}

#[test]
fn token_counts_metrics_and_depths_are_as_asked() {
    for preset in ["tiny-llama", "tiny-qwen2"] {
        let path = common::tiny_model(preset);
        let jobs = config(path.to_str().unwrap()).jobs().unwrap();
        let mut steps = 0;
        let r = run_job(&jobs[0], &mut |_| steps += 1);
        assert_eq!(r.error, None, "{preset}");
        assert_eq!(
            steps,
            jobs[0].work_units(),
            "{preset}: one progress step per unit of work"
        );

        // Identity and load.
        assert_eq!(r.model.format, "gguf");
        assert_eq!(r.model.files.len(), 1);
        let bytes = std::fs::metadata(&path).unwrap().len();
        assert_eq!(r.model.files[0].bytes, Some(bytes));
        assert_eq!(r.model.files[0].sha256.as_ref().map(String::len), Some(64));
        assert!(r.model.parameters.unwrap() > 0);
        assert_eq!(r.run.threads, Some(1));
        assert!(r.load.warm_s.unwrap() > 0.0);
        assert_eq!(r.load.cold_s, None);
        assert!(r.load.note.as_deref().unwrap().contains("--no-cold-load"));
        // Weights are memory-mapped and all read by decoding, so the process holds them all.
        assert!(
            r.memory.peak_rss_bytes.unwrap() >= r.model.file_bytes.unwrap(),
            "{preset}"
        );
        assert!(r.memory.kv_cache_bytes.unwrap() > 0);

        assert_eq!(
            r.scenarios.iter().map(|s| s.scenario).collect::<Vec<_>>(),
            [ScenarioId::Short, ScenarioId::Code]
        );
        for s in &r.scenarios {
            assert_eq!(s.samples.len(), 2);
            let target = bakeoff_bench::scenarios::scenario(s.scenario).target_tokens;
            for n in &s.content_tokens {
                assert!(
                    *n <= target && *n + 12 >= target,
                    "{preset} {}: {n} content tokens for {target}",
                    s.scenario
                );
            }
            for x in &s.samples {
                assert_eq!(
                    x.generated_tokens, 12,
                    "{preset}: EOS is ignored, so the count is exact"
                );
                assert_eq!(x.token_times_s.len(), 12);
                assert_eq!(x.finish_reason, "length");
                assert!(x.e2e_s().unwrap() >= x.ttft_s().unwrap());
                assert!(x.ttft_s().unwrap() >= x.prefill_s.unwrap() * 0.999);
                assert!(x.wall_s >= x.e2e_s().unwrap());
                assert!(x.token_times_s.windows(2).all(|w| w[1] >= w[0]));
            }
            let st = &s.stats;
            assert_eq!(st.generated_tokens_min, 12);
            for e in [
                &st.ttft_ms,
                &st.prefill_tok_s,
                &st.decode_tok_s,
                &st.median_tok_s,
                &st.peak_tok_s,
                &st.e2e_s,
            ] {
                let e = e.as_ref().unwrap();
                assert!(
                    e.mean.is_finite()
                        && e.mean > 0.0
                        && e.ci95_low <= e.mean
                        && e.mean <= e.ci95_high
                );
            }
            let itl = st.itl_ms.as_ref().unwrap();
            assert!(itl.p50 <= itl.p90 && itl.p90 <= itl.p99 && itl.p99 <= itl.max);
            assert!(
                st.peak_tok_s.as_ref().unwrap().mean
                    >= st.decode_tok_s.as_ref().unwrap().min * 0.999
            );
            let cpu = st.cpu_util.as_ref().unwrap().mean;
            assert!(cpu > 0.0 && cpu.is_finite());
            // Stats are a pure function of the raw samples.
            assert_eq!(Stats::of(&s.samples, bakeoff_bench::env::cores()), *st);
        }

        let depths: Vec<usize> = r.depths.iter().map(|d| d.depth).collect();
        assert_eq!(depths, [128, 160]);
        for d in &r.depths {
            let p = d.stats.prompt_tokens;
            assert!(!d.clamped);
            assert!(
                p <= d.depth && p + 6 >= d.depth,
                "{preset}: {p} prompt tokens at depth {}",
                d.depth
            );
            assert!(
                d.samples
                    .iter()
                    .all(|x| x.generated_tokens == 6 && x.prompt_tokens == p)
            );
        }
        let o = r.overhead.as_ref().unwrap();
        assert!(
            o.fraction < 0.01,
            "{preset}: bench overhead {:.4}% of decode time",
            o.fraction * 100.0
        );
        assert!(o.bench_s > 0.0 && o.clock_read_ns > 0.0);
    }
}

#[test]
fn depths_beyond_the_context_are_clamped_and_marked() {
    let path = common::tiny_model("tiny-llama");
    let base = config(path.to_str().unwrap());
    let cfg = BenchConfig {
        params: RunParams {
            scenarios: vec![],
            depths: vec![1_000_000],
            repetitions: 1,
            warmup: 0,
            ..base.params.clone()
        },
        ..base
    };
    let r = run_job(&cfg.jobs().unwrap()[0], &mut |_| {});
    assert_eq!(r.error, None);
    let d = &r.depths[0];
    assert!(d.clamped);
    let room = r.model.max_context.unwrap() - 6;
    let p = d.stats.prompt_tokens;
    assert!(
        p <= room && p + 16 >= room,
        "{p} prompt tokens for {room} free positions"
    );
    assert_eq!(d.samples[0].generated_tokens, 6);
}

#[test]
fn eos_ignore_keeps_generating_past_an_end_token() {
    let path = common::tiny_model("tiny-llama");
    let opts = LoadOptions {
        threads: Some(1),
        ..LoadOptions::default()
    };
    let mut lm = load(path.to_str().unwrap(), None, &opts).unwrap();
    let ids = lm
        .prompter
        .encode_chat(&[Message::user("Hello there")])
        .unwrap();
    let probes = Probes::new();
    let free = bakeoff_engine::generate::generate(
        &mut lm,
        &ids,
        &bakeoff_engine::generate::GenParams {
            max_tokens: 8,
            ignore_eos: true,
            ..Default::default()
        },
        |_| bakeoff_engine::generate::Flow::Continue,
    )
    .unwrap();
    // Make the model's first greedy token an end-of-sequence token.
    lm.prompter = lm.prompter.with_eos_ids(vec![free.ids[0]]);
    let stopped = measure(&mut lm, &ids, 8, false, 0, 0, &probes).unwrap();
    assert_eq!(
        (stopped.generated_tokens, stopped.finish_reason.as_str()),
        (0, "stop")
    );
    let ignored = measure(&mut lm, &ids, 8, true, 0, 0, &probes).unwrap();
    assert_eq!(
        (ignored.generated_tokens, ignored.finish_reason.as_str()),
        (8, "length")
    );
}
