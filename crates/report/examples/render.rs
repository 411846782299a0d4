//! Renders a report from results files without the CLI (and so without building the engine):
//! `cargo run -p bakeoff-report --example render -- OUT_DIR RESULTS...`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().ok_or("usage: render OUT_DIR RESULTS...")?);
    let paths: Vec<PathBuf> = args.map(PathBuf::from).collect();
    let inputs = bakeoff_report::Inputs::load(&paths)?;
    let r = bakeoff_report::render(&inputs)?;
    for p in bakeoff_report::write(&r, &out)? {
        println!("{}", p.display());
    }
    Ok(())
}
