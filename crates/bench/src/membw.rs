//! `bakeoff bench --membw`: the machine's streaming read bandwidth, which caps decode speed
//! (one decode step reads every weight once), and each model's cap and the share of it that
//! bakeoff's decode reaches.

use std::time::Instant;

/// Best-of-`reps` read bandwidth in GB/s over a buffer of `bytes` (make it far larger than the
/// last-level cache), split evenly across `threads`, on huge pages: the packed weights are
/// decoded from huge pages (the packed-weights file's huge folios, or anonymous huge pages), which
/// read faster than 4 KiB pages (docs/bench.md, "Memory bandwidth and the decode cap").
pub fn stream_read_gbs(bytes: usize, threads: usize, reps: usize) -> f64 {
    stream_read_gbs_on(bytes, threads, reps, true)
}

/// [`stream_read_gbs`] on huge pages (`huge`: the engine's own anonymous huge-page buffer, as
/// the weights get) or on the allocator's pages as they come.
pub fn stream_read_gbs_on(bytes: usize, threads: usize, reps: usize, huge: bool) -> f64 {
    use bakeoff_engine::loader::store::Blob;
    let words = (bytes / 8).max(threads * 8);
    // Written once so every page is backed before timing (untouched pages all map the zero page
    // and would read from cache).
    let blob = huge
        .then(|| {
            Blob::anon(words * 8, |b| {
                for (i, w) in b.chunks_exact_mut(8).enumerate() {
                    w.copy_from_slice(&(i as u64).to_ne_bytes());
                }
            })
        })
        .and_then(Result::ok);
    // SAFETY: any 8 bytes are a valid u64; `align_to` puts whatever is misaligned in the prefix.
    let mapped = blob
        .as_ref()
        .map(|b| unsafe { b.bytes().align_to::<u64>() });
    let owned;
    let buf: &[u64] = match mapped {
        // A mapping starts on a page boundary, so it is all words.
        Some(([], words_of_map, [])) => words_of_map,
        _ => {
            owned = (0..words as u64).collect::<Vec<u64>>();
            &owned
        }
    };
    let threads = threads.max(1);
    let chunk = words.div_ceil(threads);
    let mut best = f64::MAX;
    let mut sink = 0u64;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(chunk)
                .map(|c| s.spawn(move || sum_words(c)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        best = best.min(t.elapsed().as_secs_f64());
        sink = sink.wrapping_add(sums.iter().fold(0, |a, b| a.wrapping_add(*b)));
    }
    std::hint::black_box(sink);
    (words * 8) as f64 / best / 1e9
}

/// Four independent sums so the loop is bound by loads, not by one addition chain.
fn sum_words(c: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut it = c.chunks_exact(8);
    for w in &mut it {
        for (a, v) in acc.iter_mut().zip(w) {
            *a = a.wrapping_add(*v);
        }
    }
    let tail = it.remainder().iter().fold(0u64, |a, b| a.wrapping_add(*b));
    acc.iter().fold(tail, |a, b| a.wrapping_add(*b))
}

/// Decode tokens per second that a bandwidth allows for a model reading `bytes_per_token`.
pub fn cap_tok_s(gbs: f64, bytes_per_token: u64) -> f64 {
    if bytes_per_token == 0 {
        return 0.0;
    }
    gbs * 1e9 / bytes_per_token as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_page_sizes_give_a_bandwidth() {
        for huge in [true, false] {
            let g = stream_read_gbs_on(8 << 20, 2, 1, huge);
            assert!(g.is_finite() && g > 0.0, "{huge}: {g}");
        }
    }

    #[test]
    fn sums_every_word() {
        let v: Vec<u64> = (1..=1001).collect();
        assert_eq!(sum_words(&v), 1001 * 1002 / 2);
    }

    #[test]
    fn cap_divides_bandwidth_by_bytes() {
        assert!((cap_tok_s(20.0, 500_000_000) - 40.0).abs() < 1e-9);
        assert_eq!(cap_tok_s(20.0, 0), 0.0);
    }

    #[test]
    fn bandwidth_is_positive_and_finite() {
        let g = stream_read_gbs(8 << 20, 2, 2);
        assert!(g.is_finite() && g > 0.0, "{g}");
    }
}
