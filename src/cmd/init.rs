//! `rpt init`: a random checkpoint of a real shape.

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// A Hugging Face `config.json` (Qwen2, Qwen3 or Llama family).
    #[arg(long)]
    pub config_json: PathBuf,
    /// The new checkpoint's directory (new or empty).
    #[arg(long)]
    pub out: PathBuf,
    /// A `tokenizer.json` to ship with it; default: a byte-level BPE trained on the built-in corpus.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &InitArgs) -> Result<()> {
    let r = rpt::pipeline::init::random_checkpoint(
        &a.config_json,
        &a.out,
        a.tokenizer.as_deref(),
        a.seed,
    )?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{}: {} parameters ({}, vocab {}), random weights; tokenizer: {}",
            r.out.display(),
            r.parameters,
            r.family,
            r.vocab_size,
            r.tokenizer
        );
    }
    Ok(())
}
