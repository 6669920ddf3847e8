//! The `rpt` command line.

mod cmd;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    /// mimalloc's option setter, linked in with the allocator.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    /// mimalloc's collection: with `force`, freed memory waiting to go back to the system goes now.
    fn mi_collect(force: bool);
}

/// mimalloc's `mi_option_purge_delay` (the same place in the option list of mimalloc 2 and 3).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// How long freed memory waits before it goes back to the system, in milliseconds: 6 minutes, and
/// an hour for the large blocks that mimalloc's arenas hold (they wait its `arena_purge_mult`, 10,
/// times as long).
const KEEP_FREED_MS: std::ffi::c_long = 360_000;

/// Freed memory is kept for reuse instead of going back to the system after mimalloc's 10 ms, so that
/// a training step's large buffers are reused by the next pass and the next step rather than faulted
/// in and zeroed by the kernel again. At Qwen3-0.6B's shape (one GRPO step of 8 × 48 tokens, six
/// steps) the update took 6.7 s a step with freed memory kept for good against 10.5 s with a 10 s
/// delay and 15.3–16.2 s with 1 s. It is kept for an hour rather than for good so that
/// [`release_freed_memory`] can hand it back between the phases of a command (a delay of -1 never
/// even schedules it to go). `MIMALLOC_PURGE_DELAY` in the environment (milliseconds) still wins.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain option setter of the allocator in use; any value is valid for the option.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, KEEP_FREED_MS) };
    }
}

/// Hands the memory freed so far back to the system now, between phases of a command that hold
/// different data: the evaluation after training would otherwise stack its model on top of the
/// learner's freed weights, gradients and moments, kept for reuse that never comes.
pub(crate) fn release_freed_memory() {
    // SAFETY: a plain call into the allocator in use.
    unsafe { mi_collect(true) };
}

/// User-facing errors read the same whatever `RUST_BACKTRACE` says. candle and anyhow capture a
/// backtrace into an error when that variable is set (and print it with the message); the standard
/// library lets `RUST_LIB_BACKTRACE` switch that off for errors while panics keep theirs.
fn no_backtraces_in_errors() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: the first thing `main` does, before any other thread exists.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Reinforcement Pre-Training: turn a text corpus into reinforcement learning.
#[derive(Parser, Debug)]
#[command(name = "rpt", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build the built-in model (tokenizer, pre-training, answer-format warm-up).
    Bootstrap(cmd::pipeline::BootstrapArgs),
    /// Train with RPT (GRPO over corpus positions); with no config, the built-in default.
    Train(cmd::train::TrainArgs),
    /// Build the difficulty (entropy) index of the corpus.
    Prepare(cmd::pipeline::ConfigArgs),
    /// Held-out next-token accuracy, standard and reasoning mode, per difficulty split.
    Eval(cmd::pipeline::EvalArgs),
    /// Sample from a checkpoint.
    Generate(cmd::generate::GenerateArgs),
    /// Log-prob of each next token of a text under a checkpoint.
    Logprobs(cmd::generate::LogprobsArgs),
    /// Score completions with a reward variant.
    Reward(cmd::reward::RewardArgs),
    /// One HTML page (and PNG/SVG figures) comparing run directories: curves, accuracy, samples.
    Report(cmd::report::ReportArgs),
    /// Run every cell of a run matrix (a base config, a grid of keys, seeds), then report them.
    Sweep(cmd::sweep::SweepArgs),
    /// Write a checkpoint of any supported config.json with random weights (benchmarks at real sizes).
    Init(cmd::init::InitArgs),
    /// Measure generation and training speed on the benchmark shapes.
    Bench(cmd::bench::BenchArgs),
    /// Join a run as a policy worker (the run's config has a [cluster] section).
    Worker(cmd::worker::WorkerArgs),
}

fn main() -> std::process::ExitCode {
    no_backtraces_in_errors();
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RPT_LOG")
                .unwrap_or_else(|_| "info,ractor_cluster=warn".into()),
        )
        .with_writer(rpt::pipeline::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let done = match &cli.command {
        Command::Bootstrap(a) => cmd::pipeline::run_bootstrap(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Prepare(a) => cmd::pipeline::run_prepare(a),
        Command::Eval(a) => cmd::pipeline::run_eval(a),
        Command::Generate(a) => cmd::generate::run_generate(a),
        Command::Logprobs(a) => cmd::generate::run_logprobs(a),
        Command::Reward(a) => cmd::reward::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::Sweep(a) => cmd::sweep::run(a),
        Command::Init(a) => cmd::init::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Worker(a) => cmd::worker::run(a),
    };
    exit_code(done)
}

/// 0 when the command succeeded; 130, the status of an interrupted command, when Ctrl-C stopped a
/// run after its checkpoint; otherwise 1, with the error and its causes as `main` returning the
/// error would print them.
fn exit_code(done: Result<()>) -> std::process::ExitCode {
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.chain().any(|c| c.is::<cmd::train::Stopped>()) => {
            eprintln!("{e:#}");
            std::process::ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::FAILURE
        }
    }
}
