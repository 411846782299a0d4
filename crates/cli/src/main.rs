//! `bakeoff`: the only binary. Parses arguments with clap, turns them into validated engine
//! options, and prints errors with their cause chain and a non-zero exit code.

mod args;
mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bakeoff",
    version,
    about = "Put small local chat models side by side, with measured numbers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process, so the size of the largest variant (compare's options) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt or a chat, streamed to stdout with a timing summary on stderr.
    Generate(commands::generate::GenerateArgs),
    /// Show a model's architecture, size, context, stop tokens and chat template.
    Info(commands::info::InfoArgs),
    /// Print the token ids of a text as a JSON array (or decode ids with --decode).
    Tokenize(commands::tokenize::TokenizeArgs),
    /// Fetch catalog models by name into the cache, verified by SHA-256.
    Pull(commands::models::PullArgs),
    /// The model catalog: names usable with --model, and which are cached.
    List(commands::models::ListArgs),
    /// Write a random-weight model with the exact architecture of a real one.
    Synth(commands::synth::SynthArgs),
    /// Quantize a model to a GGUF file (q8_0, q4_0, q4_k, q5_k, q6_k), or measure the quality cost.
    Quantize(commands::quantize::QuantizeArgs),
    /// WikiText-2 perplexity by llama-perplexity's protocol (20 chunks of 512 by default).
    Perplexity(commands::perplexity::PerplexityArgs),
    /// Synthesize a full-size model and chat with it: the offline demo of the engine.
    Demo(commands::demo::DemoArgs),
    /// Quality scores per category from public benchmarks and verifiable checks, with intervals,
    /// paired tests and an audit trail.
    Eval(commands::eval::EvalArgs),
    /// Benchmark and evaluate two models and write the comparison report (Markdown, HTML, SVG).
    Compare(commands::compare::CompareArgs),
    /// Re-render the comparison report from results files (or a compare output folder).
    Report(commands::report::ReportArgs),
    /// List recorded compare/report runs, or show the difference between two.
    History(commands::history::HistoryArgs),
    /// Measure speed, latency and memory of models, each in its own process, with repetitions.
    Bench(commands::bench::BenchArgs),
    /// Internal: the child process of `bench` (a JSON job on stdin, the result on stdout).
    #[command(hide = true)]
    BenchWorker(commands::bench::BenchWorkerArgs),
    /// An OpenAI-compatible server with a tiered router (fast/strong), batching and metrics.
    Serve(commands::serve::ServeArgs),
    /// An interactive streaming chat in the terminal (--vs B: two models side by side).
    Chat(commands::chat::ChatArgs),
    /// Router tools: calibrate the complexity threshold from eval results, score a prompt.
    Route(commands::route::RouteArgs),
}

/// glibc returns large freed blocks to the kernel at once (blocks over its mmap threshold, and
/// the heap top beyond 128 KiB), so the megabyte-sized buffers of every prompt matmul came back
/// as fresh pages the kernel zeroed again: 10% of a 512-token prefill on the reference VM.
/// Keeping them in the heap costs at most the largest working set, which is reused anyway.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator tunables; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => commands::generate::run(a),
        Command::Info(a) => commands::info::run(a),
        Command::Tokenize(a) => commands::tokenize::run(a),
        Command::Pull(a) => commands::models::pull(a),
        Command::List(a) => commands::models::list(a),
        Command::Synth(a) => commands::synth::run(a),
        Command::Quantize(a) => commands::quantize::run(a),
        Command::Perplexity(a) => commands::perplexity::run(a),
        Command::Demo(a) => commands::demo::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Compare(a) => commands::compare::run(a),
        Command::Report(a) => commands::report::run(a),
        Command::History(a) => commands::history::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::BenchWorker(a) => commands::bench::run_worker(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Chat(a) => commands::chat::run(a),
        Command::Route(a) => commands::route::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes joined by ": ", as `{:#}` prints them, less the causes whose text
/// an outer message already includes: the libraries' errors name their cause in their own
/// message (so a plain `to_string()` is complete) and also chain it as their source.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
