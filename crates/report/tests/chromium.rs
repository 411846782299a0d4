//! The HTML report opened in headless Chromium: the page must parse with every chart as an SVG
//! element, and the screenshot must show the charts' series colours (so the SVG was painted,
//! not just present in the source). Skipped when no Chromium is installed, unless
//! `BAKEOFF_E2E_REQUIRED=1` (CI, after `scripts/ci-python.sh` installed it), which makes a
//! missing browser a failure. `BAKEOFF_SCREENSHOT=PATH` keeps the screenshot (docs/report-demo/).

use std::path::{Path, PathBuf};
use std::process::Command;

use bakeoff_report::{Inputs, render, write};

fn chromium() -> Option<PathBuf> {
    let names = [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ];
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn browser(bin: &Path, args: &[&str], page: &Path) -> std::process::Output {
    Command::new(bin)
        // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
        ])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium")
}

/// Pixels within a small distance of `rgb`.
fn count_colour(img: &[u8], channels: usize, rgb: [u8; 3]) -> usize {
    img.chunks(channels)
        .filter(|p| (0..3).all(|i| (p[i] as i32 - rgb[i] as i32).abs() <= 6))
        .count()
}

#[test]
fn html_report_renders_with_its_charts_in_chromium() {
    let Some(bin) = chromium() else {
        if std::env::var("BAKEOFF_E2E_REQUIRED").is_ok_and(|v| v == "1") {
            panic!("chromium is required (BAKEOFF_E2E_REQUIRED=1); run scripts/ci-python.sh");
        }
        eprintln!("skipped: no chromium on PATH");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let inputs = Inputs::load(&[PathBuf::from("tests/fixtures/tiny")]).expect("fixtures");
    let r = render(&inputs).expect("render");
    write(&r, dir.path()).expect("write");
    let page = dir.path().join("report.html");
    let charts = r.doc.charts().count();

    // The DOM after parsing: every chart is an <svg> inside its figure.
    let dom = browser(&bin, &["--dump-dom"], &page);
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    assert_eq!(
        html.matches("<figure class=\"chart\"").count(),
        charts,
        "figures in the DOM"
    );
    assert_eq!(
        html.matches("<svg").count(),
        charts,
        "svg elements in the DOM"
    );
    assert!(html.contains("Executive summary") && html.contains("Deployment matrix"));

    // The painted page: tall enough for the speed and context charts.
    let shot = dir.path().join("shot.png");
    let o = browser(
        &bin,
        &[
            "--window-size=1200,4400",
            &format!("--screenshot={}", shot.display()),
        ],
        &page,
    );
    assert!(
        shot.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&shot).expect("open png"),
    ));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png frame");
    let channels = info.color_type.samples();
    let px = &buf[..info.buffer_size()];
    // Model A's and model B's series colours (charts.rs): both must be painted.
    let a = count_colour(px, channels, [31, 119, 180]);
    let b = count_colour(px, channels, [230, 120, 20]);
    assert!(
        a > 500 && b > 500,
        "series colours painted: A {a} px, B {b} px"
    );
    if let Some(keep) = std::env::var_os("BAKEOFF_SCREENSHOT") {
        std::fs::copy(&shot, &keep).expect("keep screenshot");
    }
}
