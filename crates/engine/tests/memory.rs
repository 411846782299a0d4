//! Peak RSS is the process's own: a child started after its parent touched a large buffer must
//! not report the parent's peak (Linux keeps `ru_maxrss` across `execve`; the bench and quantize
//! probes are such children).

use std::process::Command;

use bakeoff_engine::memory::{current_rss_bytes, peak_rss_bytes};

const CHILD_ENV: &str = "BAKEOFF_PEAK_RSS_CHILD";
const PARENT_BYTES: usize = 400 << 20;

#[test]
fn peak_rss_of_a_child_is_its_own() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // The child: print this process's peak and nothing else of interest.
        println!("PEAK {}", peak_rss_bytes());
        return;
    }
    let mut big = vec![0u8; PARENT_BYTES];
    for i in (0..big.len()).step_by(4096) {
        big[i] = 1;
    }
    std::hint::black_box(&big);
    let parent = peak_rss_bytes();
    assert!(parent >= PARENT_BYTES as u64, "parent peak {parent}");
    // Read a moment later, the current RSS may have grown by a few pages since.
    assert!(parent + (16 << 20) >= current_rss_bytes());
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "peak_rss_of_a_child_is_its_own", "--nocapture"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let child: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("PEAK "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no PEAK line in {text}"));
    drop(big);
    assert!(child > 0);
    assert!(
        child < PARENT_BYTES as u64 / 2,
        "child reports {child} bytes, its parent's peak was {parent}"
    );
}
