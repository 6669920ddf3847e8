//! Rollouts and their scores, as functions the actors call.
//!
//! Policy side: G completions per state, sampled with seeds derived from (seed, step, state, sample), so
//! a state re-issued after a failure gets the same completions. Verifier side: the model numbers a reward
//! variant needs (`dense`: the policy's probability of its guess; `info_gain`: log-probs with and without
//! the thought), computed without gradient, then the reward itself.

use std::sync::Arc;

use crate::env::State;
use crate::error::Result;
use crate::model::{Decoder, Rng, SampleParams, Tokenizer, generate};
use crate::prompt::Prompt;
use crate::reward::{Case, Reward, RewardFn, answer_closed, parse_prediction};

/// One sampled completion.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Completion {
    pub tokens: Vec<u32>,
    /// log π_old of each token, under the sampling temperature.
    pub logprobs: Vec<f32>,
    /// Tokens before `</think>` (the whole completion when it has none).
    pub thought_len: usize,
}

/// The G completions of one state, with where they came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Group {
    /// The state's index in the environment's order.
    pub seq: u64,
    pub state: State,
    pub prompt: Vec<u32>,
    pub completions: Vec<Completion>,
    /// Weight version that sampled them.
    pub version: u64,
}

/// A group with its rewards.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScoredGroup {
    pub group: Group,
    pub rewards: Vec<Reward>,
}

/// What a policy needs to sample: the weights of one version, shared read-only.
#[derive(Clone)]
pub struct PolicySnapshot {
    pub version: u64,
    pub model: Arc<Decoder>,
}

/// Samples `group_size` completions for each state. With `until_answer`, a completion
/// ends at EOS or when its `\boxed{}` answer closes (training); without, every completion runs to
/// `max_new_tokens` (benchmarks that must match a fixed-length workload). Rows are sampled in
/// sub-batches whose KV cache holds at most `kv_cache_tokens` tokens (`rollout.kv_cache_tokens`), so
/// cache memory is set by the budget, not by how many states and completions a step has.
#[allow(clippy::too_many_arguments)]
pub fn sample_groups(
    snap: &PolicySnapshot,
    tok: &Tokenizer,
    prompt: &Prompt,
    states: &[(u64, State)],
    group_size: usize,
    params: &SampleParams,
    seed: u64,
    step: u64,
    until_answer: bool,
    kv_cache_tokens: usize,
) -> Result<Vec<Group>> {
    let think_end = tok.token_id("</think>");
    let mut prompts = Vec::with_capacity(states.len() * group_size);
    let mut seeds = Vec::with_capacity(states.len() * group_size);
    for (seq, st) in states {
        let p = prompt.build(&st.context);
        for i in 0..group_size {
            prompts.push(p.clone());
            seeds.push(Rng::derive(&[seed, step, *seq, i as u64]));
        }
    }
    let eos: Vec<u32> = if until_answer {
        snap.model.config().eos_token_ids.clone()
    } else {
        vec![]
    };
    // Sub-batches of rows whose KV cache (longest prompt + new tokens, per row) fits the budget.
    // Sampling is batch-invariant on the CPU, so the rows come out the same bits in any sub-batch.
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let per_row = width.saturating_add(params.max_new_tokens).max(1);
    let rows = (kv_cache_tokens / per_row).max(1);
    let mut samples = Vec::with_capacity(prompts.len());
    for (ps, ss) in prompts.chunks(rows).zip(seeds.chunks(rows)) {
        samples.extend(generate(&snap.model, ps, params, ss, &eos, &|_, toks| {
            until_answer && answer_closed(&tok.decode_bytes(toks))
        })?);
    }
    let mut it = samples.into_iter();
    Ok(states
        .iter()
        .enumerate()
        .map(|(k, (seq, st))| Group {
            seq: *seq,
            state: st.clone(),
            prompt: prompts[k * group_size].clone(),
            completions: (&mut it)
                .take(group_size)
                .map(|s| Completion {
                    thought_len: think_end
                        .and_then(|e| s.tokens.iter().position(|&t| t == e))
                        .unwrap_or(s.tokens.len()),
                    tokens: s.tokens,
                    logprobs: s.logprobs,
                })
                .collect(),
            version: snap.version,
        })
        .collect())
}

/// Log-softmax of the last position of each row of a left-padded batch: (rows, vocab).
fn last_logprobs(model: &Decoder, rows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
    let logits = model.last_logits(rows)?;
    Ok(candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?.to_vec2()?)
}

/// Scores one group: computes what `reward` needs with `policy` (and `ema` for `info_gain`), then the
/// reward itself.
pub fn score_group(
    reward: &dyn RewardFn,
    group: &Group,
    policy: &Decoder,
    ema: Option<&Decoder>,
    tok: &Tokenizer,
) -> Result<Vec<Reward>> {
    let needs = reward.needs();
    let st = &group.state;
    let texts: Vec<Vec<u8>> = group
        .completions
        .iter()
        .map(|c| tok.decode_bytes(&c.tokens))
        .collect();
    let context = if needs.context {
        tok.decode_bytes(&st.context)
    } else {
        vec![]
    };
    let mut cases: Vec<Case> = texts
        .iter()
        .map(|t| Case {
            context: &context,
            completion: t,
            continuation: &st.continuation,
            boundaries: &st.boundaries,
            next_token: st.next_token,
            ..Case::default()
        })
        .collect();
    if needs.guess_first_token || needs.guess_prob {
        let standard = if needs.guess_prob {
            Some(last_logprobs(policy, std::slice::from_ref(&st.context))?.remove(0))
        } else {
            None
        };
        for c in cases.iter_mut() {
            if let Ok(y) = parse_prediction(c.completion)
                && !y.is_empty()
            {
                let first = tok.encode(&String::from_utf8_lossy(y))?.first().copied();
                c.guess_first_token = first;
                if let (Some(lp), Some(f)) = (&standard, first) {
                    c.guess_prob = Some(lp.get(f as usize).map_or(0.0, |&l| (l as f64).exp()));
                }
            }
            if needs.guess_prob && c.guess_prob.is_none() {
                c.guess_prob = Some(0.0);
            }
        }
    }
    if needs.info_gain {
        let think_end = tok.token_id("</think>").ok_or_else(|| {
            crate::Error::Run("info_gain needs a `</think>` token in the tokenizer".into())
        })?;
        let rows: Vec<Vec<u32>> = group
            .completions
            .iter()
            .map(|c| {
                let mut r = group.prompt.clone();
                r.extend_from_slice(&c.tokens[..c.thought_len]);
                r.push(think_end);
                r
            })
            .collect();
        let with = last_logprobs(policy, &rows)?;
        let baseline_model = ema.unwrap_or(policy);
        let base = last_logprobs(baseline_model, std::slice::from_ref(&st.context))?.remove(0)
            [st.next_token as usize] as f64;
        for (c, lp) in cases.iter_mut().zip(&with) {
            c.logp_with_thought = Some(lp[st.next_token as usize] as f64);
            c.logp_baseline = Some(base);
        }
    }
    Ok(reward.score_group(&cases)?)
}
