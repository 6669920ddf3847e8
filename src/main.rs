//! The `rpt` command line.

mod cmd;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Measure generation and training speed on the benchmark shapes.
    Bench(cmd::bench::BenchArgs),
    /// Join a run as a policy worker (the run's config has a [cluster] section).
    Worker(cmd::worker::WorkerArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RPT_LOG")
                .unwrap_or_else(|_| "info,ractor_cluster=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match &cli.command {
        Command::Bootstrap(a) => cmd::pipeline::run_bootstrap(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Prepare(a) => cmd::pipeline::run_prepare(a),
        Command::Eval(a) => cmd::pipeline::run_eval(a),
        Command::Generate(a) => cmd::generate::run_generate(a),
        Command::Logprobs(a) => cmd::generate::run_logprobs(a),
        Command::Reward(a) => cmd::reward::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Worker(a) => cmd::worker::run(a),
    }
}
