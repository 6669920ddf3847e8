//! `rpt generate` and `rpt logprobs`: check that a checkpoint loads and behaves.

use std::path::PathBuf;

use anyhow::Result;
use rpt::model::{Mode, SampleParams, Tensor, generate, token_logprobs};

use super::{load_checkpoint, prompt_ids};

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Hugging Face-layout checkpoint directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt text (tokenized with the model's tokenizer).
    #[arg(long, conflicts_with = "ids")]
    pub prompt: Option<String>,
    /// Prompt as comma-separated token ids.
    #[arg(long)]
    pub ids: Option<String>,
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run_generate(a: &GenerateArgs) -> Result<()> {
    anyhow::ensure!(
        a.temperature >= 0.0,
        "--temperature must be >= 0, got {}",
        a.temperature
    );
    anyhow::ensure!(
        a.top_p > 0.0 && a.top_p <= 1.0,
        "--top-p must be in (0, 1], got {}",
        a.top_p
    );
    let ck = load_checkpoint(&a.model)?;
    let prompt = prompt_ids(&ck, a.prompt.as_deref(), a.ids.as_deref())?;
    let params = SampleParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        max_new_tokens: a.max_new_tokens,
    };
    let model = ck.decoder()?;
    let t0 = std::time::Instant::now();
    let out = generate(
        &model,
        std::slice::from_ref(&prompt),
        &params,
        &[a.seed],
        &ck.config.eos_token_ids,
        &|_, _| false,
    )?;
    let secs = t0.elapsed().as_secs_f64();
    let s = &out[0];
    let text = ck.tokenizer.decode(&s.tokens);
    if a.json {
        let v = serde_json::json!({
            "prompt_ids": prompt, "ids": s.tokens, "logprobs": s.logprobs, "text": text,
            "finish": s.finish, "seconds": secs,
        });
        println!("{v}");
    } else {
        println!("{text}");
        eprintln!(
            "[{} tokens, {:?}, {:.1} tokens/s]",
            s.tokens.len(),
            s.finish,
            s.tokens.len() as f64 / secs
        );
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct LogprobsArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, conflicts_with = "ids")]
    pub text: Option<String>,
    #[arg(long)]
    pub ids: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn run_logprobs(a: &LogprobsArgs) -> Result<()> {
    let ck = load_checkpoint(&a.model)?;
    let ids = prompt_ids(&ck, a.text.as_deref(), a.ids.as_deref())?;
    anyhow::ensure!(
        ids.len() >= 2,
        "need at least 2 tokens to score a next token, got {}",
        ids.len()
    );
    let model = ck.decoder()?;
    let input = Tensor::from_vec(ids.clone(), (1, ids.len()), model.device())?;
    let lp: Vec<f32> = token_logprobs(&model, &input, &[0], 1, 1.0, Mode::Infer)?
        .squeeze(0)?
        .to_vec1()?;
    if a.json {
        let total: f64 = lp.iter().map(|&x| x as f64).sum();
        println!(
            "{}",
            serde_json::json!({"ids": ids, "logprobs": lp, "total": total})
        );
    } else {
        println!("{:>6}  {:>8}  {:>10}  token", "pos", "id", "logprob");
        for (i, (&id, l)) in ids[1..].iter().zip(&lp).enumerate() {
            println!(
                "{:>6}  {:>8}  {:>10.4}  {:?}",
                i + 1,
                id,
                l,
                String::from_utf8_lossy(ck.tokenizer.bytes(id))
            );
        }
    }
    Ok(())
}
