//! `rpt bootstrap`: the built-in model, made on this machine with nothing downloaded.
//!
//! 1. a byte-level BPE tokenizer trained on the corpus (with `<think>`, `</think>`, `<|endoftext|>`),
//!    every digit its own token where `split_digits` (the default);
//! 2. a tiny Qwen2-family model pre-trained by next-token prediction on the training documents, a
//!    share `pretrain_thought_share` of the windows with the generic thought's re-read token inserted
//!    at a random place (`… a b<think>b c …`, `<think>` unscored; `rows::insert_thought`), so that
//!    continuing a text through it is learned from whole documents, not only from the warm-up's rows;
//! 3. a supervised warm-up on the answer format `CONTEXT<think>THOUGHT</think>\boxed{NEXT TOKEN}`,
//!    the answer written as the corpus's own token; loss on the completion only, interleaved with
//!    next-token batches so that standard mode is kept.
//!
//! Two kinds of warm-up thought:
//! - **teacher thoughts**, where the corpus offers one for the position (`TokenizedDoc::teacher_at`,
//!   from `corpus.teacher`'s solver): the solver's worked steps, then the box holds the rest of the
//!   span they compute (e.g. the whole number after `=`). A share `teacher_share` of the answer-format
//!   rows is drawn from such positions and teaches their thought (default 0.5).
//! - the **generic thought** in every other row: the end of the context (up to `thought_bytes` bytes, at
//!   least its last token) copied after `<think>`, then the next token, which the box repeats, so the
//!   guess is made right after the text it continues.
//!
//! Positions whose answer has unbalanced braces are skipped: it cannot be written inside `\boxed{}`
//! and parsed back.
//!
//! `bootstrap.json` records what was measured and the `[corpus]` and `[bootstrap]` sections the model
//! was built from; a later run with other sections is refused
//! ([`super::model_dir::check_settings`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::config::Config;
use crate::env::{TokenizedDoc, make_state};
use crate::error::Result;
use crate::model::{
    AdamW, AdamWConfig, Checkpoint, Decoder, Device, Family, ModelConfig, Rng, SampleParams,
    Tensor, Tokenizer, Trainable, init_weights,
};
use crate::prompt::Prompt;

use super::evaluate::{EvalItem, evaluate};
use super::model_dir::{check_target, settings, write_model_dir};
use super::rows::{lm_window, lm_windows, sft_batch, teacher_positions};
use super::{NllBatch, cosine_lr, load_texts, masked_nll, progress, tokenize_splits};

/// What `rpt bootstrap` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootstrapReport {
    pub parameters: usize,
    pub vocab_size: usize,
    pub train_documents: usize,
    pub heldout_documents: usize,
    pub train_loss: f64,
    pub heldout_loss: f64,
    pub sft_loss: f64,
    /// Held-out standard-mode next-token accuracy (prefix_match rule), over `eval_positions`.
    pub heldout_standard_accuracy: f64,
    pub heldout_reasoning_accuracy: f64,
    /// Share of completions at temperature 0.8 that parse to a `\boxed{}` prediction.
    pub format_rate: f64,
    pub eval_positions: usize,
    pub seconds: f64,
    /// The config sections the model was built from ([`settings`]): a later run whose sections
    /// differ is refused rather than handed a model built another way ([`check_settings`](super::model_dir::check_settings)).
    pub settings: BTreeMap<String, String>,
}

/// The architecture of the built-in model.
pub fn builtin_config(cfg: &Config, vocab_size: usize) -> ModelConfig {
    let b = &cfg.bootstrap;
    ModelConfig {
        family: Family::Qwen2,
        vocab_size,
        hidden_size: b.hidden_size,
        intermediate_size: b.intermediate_size,
        num_hidden_layers: b.layers,
        num_attention_heads: b.heads,
        num_key_value_heads: b.kv_heads,
        head_dim: b.hidden_size / b.heads,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        max_position_embeddings: 512,
        tie_word_embeddings: true,
        qkv_bias: true,
        o_bias: false,
        mlp_bias: false,
        qk_norm: false,
        eos_token_ids: vec![0],
        bos_token_id: None,
        pad_token_id: Some(0),
    }
}

/// Mean next-token loss over `n` windows (no gradient).
fn lm_loss(
    model: &Decoder,
    docs: &[TokenizedDoc],
    cfg: &Config,
    n: usize,
    seed: u64,
) -> Result<f64> {
    let mut rng = Rng::new(seed);
    let rows: Vec<Vec<u32>> = (0..n)
        .map(|_| lm_window(docs, cfg.bootstrap.seq_len, &mut rng))
        .collect();
    let (loss, _) = masked_nll(model, &rows, &vec![1; rows.len()])?;
    Ok(loss.to_scalar::<f32>()? as f64)
}

/// Builds the built-in model into `out` and reports what it measured. The model is written into a
/// sibling `.partial` directory and renamed into place, so `out` never holds half a model; `out` must be
/// new, empty, or an earlier built-in model ([`check_target`]).
pub fn bootstrap(cfg: &Config, out: &Path, device: &Device) -> Result<BootstrapReport> {
    check_target(out)?;
    let t0 = Instant::now();
    let b = &cfg.bootstrap;
    let texts = load_texts(cfg)?;
    let (train_idx, _) =
        crate::env::split_documents(texts.len(), cfg.corpus.heldout_fraction, cfg.seed);
    let train_texts: Vec<String> = train_idx.iter().map(|&i| texts[i].clone()).collect();
    let tok = Tokenizer::train_bpe(&train_texts, b.vocab_size, b.split_digits)?;
    tracing::info!(vocab = tok.vocab_size(), "tokenizer trained");
    let splits = tokenize_splits(cfg, &texts, &tok)?;
    if splits.train.is_empty() || splits.heldout.is_empty() {
        return Err(crate::Error::Run(
            "bootstrap needs at least one training and one held-out document".into(),
        ));
    }
    let model_cfg = builtin_config(cfg, tok.vocab_size());
    let params = Trainable::new(
        &model_cfg,
        &init_weights(&model_cfg, cfg.seed, 0.02, device)?,
    )?;
    let parameters: usize = params.vars().map(|(_, v)| v.elem_count()).sum::<usize>();
    let prompt = Prompt::new(&cfg.prompt.template, &tok)?;
    let mut opt = AdamW::new(AdamWConfig {
        lr: b.lr,
        weight_decay: 0.01,
        ..Default::default()
    });
    let mut rng = Rng::new(Rng::derive(&[cfg.seed, 0xB007]));
    let think = tok.token_id("<think>").ok_or_else(|| {
        crate::Error::Run("the bootstrap tokenizer has no `<think>` token".into())
    })?;

    let bar = progress(b.pretrain_steps as u64, "pretrain");
    for step in 0..b.pretrain_steps {
        let (rows, skip) = lm_windows(&splits.train, cfg, think, &mut rng);
        let (loss, grads) =
            nll_grads_skipping(&params, &rows, &vec![1; rows.len()], &skip, device)?;
        let scale = (1.0 / AdamW::grad_norm(&grads)?.max(1.0)).min(1.0);
        opt.step(
            &params,
            &grads,
            cosine_lr(b.lr, step, 20, b.pretrain_steps),
            scale,
        )?;
        bar.set_message(format!("loss {:.3}", loss.to_scalar::<f32>()?));
        bar.inc(1);
    }
    bar.finish();

    let taught = teacher_positions(&splits.train);
    if b.teacher_share > 0.0 {
        tracing::info!(
            positions = taught.len(),
            share = b.teacher_share,
            "warm-up rows taught a teacher thought"
        );
    }
    let bar = progress(b.sft_steps as u64, "warm-up");
    let mut sft_loss = f64::NAN;
    let sft_lr = b.lr / 3.0;
    for step in 0..b.sft_steps {
        // Two answer-format steps, then one next-token step, so standard mode is not forgotten.
        let (rows, from, skip) = if step % 3 == 2 {
            let (rows, skip) = lm_windows(&splits.train, cfg, think, &mut rng);
            let n = rows.len();
            (rows, vec![1; n], skip)
        } else {
            let (rows, from) = sft_batch(
                &splits.train,
                &taught,
                b.batch,
                &tok,
                &prompt,
                cfg,
                &mut rng,
            );
            let n = rows.len();
            (rows, from, vec![None; n])
        };
        let (loss, grads) = nll_grads_skipping(&params, &rows, &from, &skip, device)?;
        let scale = (1.0 / AdamW::grad_norm(&grads)?.max(1.0)).min(1.0);
        opt.step(
            &params,
            &grads,
            cosine_lr(sft_lr, step, 10, b.sft_steps),
            scale,
        )?;
        if step % 3 != 2 {
            sft_loss = loss.to_scalar::<f32>()? as f64;
        }
        bar.set_message(format!("loss {sft_loss:.3}"));
        bar.inc(1);
    }
    bar.finish();

    let weights = params.snapshot()?;
    let model = Decoder::new(&model_cfg, &weights)?;
    let train_loss_eval = lm_loss(&model, &splits.train, cfg, 32, 1)?;
    let heldout_loss = lm_loss(&model, &splits.heldout, cfg, 32, 2)?;
    // Held-out positions in a seeded order.
    let mut items = vec![];
    let mut erng = Rng::new(Rng::derive(&[cfg.seed, 0xE7A1]));
    while items.len()
        < cfg.eval.positions.min(
            splits
                .heldout
                .iter()
                .map(|d| d.len().saturating_sub(1))
                .sum(),
        )
    {
        let d = &splits.heldout[erng.below(splits.heldout.len())];
        if d.len() < 2 {
            continue;
        }
        if let Some(state) = make_state(
            d,
            1 + erng.below(d.len() - 1),
            &tok,
            cfg.states.max_context_tokens,
            cfg.states.max_target_bytes,
        ) {
            items.push(EvalItem {
                taught: d.teacher_at(state.pos).is_some(),
                state,
                entropy: None,
            });
        }
    }
    let params_sample = SampleParams {
        temperature: 0.8,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: cfg.rollout.max_new_tokens,
    };
    let report = evaluate(
        &model,
        &tok,
        &prompt,
        &items,
        &params_sample,
        cfg.seed,
        32,
        super::evaluate::SAMPLES,
    )?;
    let all = report.splits.get("all").cloned().unwrap_or_default();

    let r = BootstrapReport {
        parameters,
        vocab_size: tok.vocab_size(),
        train_documents: splits.train.len(),
        heldout_documents: splits.heldout.len(),
        train_loss: train_loss_eval,
        heldout_loss,
        sft_loss,
        heldout_standard_accuracy: all.standard_accuracy,
        heldout_reasoning_accuracy: all.reasoning_accuracy,
        format_rate: 1.0 - all.format_failure_rate,
        eval_positions: all.positions,
        seconds: t0.elapsed().as_secs_f64(),
        settings: settings(cfg),
    };
    let json = serde_json::to_vec_pretty(&r).expect("report serialises");
    write_model_dir(out, true, |tmp| {
        Checkpoint::save(tmp, &model_cfg, &tok, &weights)?;
        crate::model::write_atomic(&tmp.join("bootstrap.json"), &json)?;
        Ok(())
    })?;
    Ok(r)
}

/// The masked next-token loss of `rows` (see `masked_nll`) and its gradients.
pub(super) fn nll_grads(
    params: &Trainable,
    rows: &[Vec<u32>],
    loss_from: &[usize],
    device: &Device,
) -> Result<(Tensor, crate::model::Grads)> {
    nll_grads_skipping(params, rows, loss_from, &vec![None; rows.len()], device)
}

/// [`nll_grads`] leaving out token `skip[i]` of row `i` where one is given.
fn nll_grads_skipping(
    params: &Trainable,
    rows: &[Vec<u32>],
    loss_from: &[usize],
    skip: &[Option<usize>],
    device: &Device,
) -> Result<(Tensor, crate::model::Grads)> {
    let (batch, nll) = NllBatch::skipping(rows, loss_from, skip, device)?;
    params.value_and_grad(&batch.ids, &batch.pad, 1, 1.0, |lp| {
        let loss = nll.loss(lp)?;
        Ok((loss.clone(), loss))
    })
}
