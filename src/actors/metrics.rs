//! The metrics actor: one JSON line per step in `metrics.jsonl` (flushed each line), the same numbers as
//! TensorBoard scalars in `tensorboard/`, a few seeded completions per step in `samples.jsonl`, a
//! progress bar, and a `tracing` event per step; and [`step_line`] and [`step_samples`], which make a
//! step's line and samples from its record.

use std::collections::BTreeMap;
use std::io::Write;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::messages::{MetricsMsg, RunShared};
use super::schedule::StepWork;
use crate::learn::UpdateStats;
use crate::reward::FormatFailure;

/// Metrics keys that measure time; everything else is deterministic for a given seed.
pub const TIMING_KEYS: &[&str] = &["rollout_s", "verify_s", "learn_s", "step_s", "tokens_per_s"];

/// Metrics keys that say where work ran (which policy workers were connected); they do not change what
/// is learned.
pub const PLACEMENT_KEYS: &[&str] = &["remote_states"];

/// The metrics line of step `step` from its record `w` and its update's statistics `u`.
pub fn step_line(
    shared: &RunShared,
    step: u64,
    w: &StepWork,
    u: &UpdateStats,
    learn_s: f64,
) -> serde_json::Value {
    let scored = &w.scored;
    let rewards: Vec<f64> = scored
        .values()
        .flat_map(|g| g.rewards.iter().map(|r| r.value))
        .collect();
    let n = rewards.len().max(1) as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let std = (rewards.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / n).sqrt();
    let correct = scored
        .values()
        .flat_map(|g| &g.rewards)
        .filter(|r| r.correct)
        .count() as f64
        / n;
    let mut failures: BTreeMap<&str, usize> =
        FormatFailure::ALL.iter().map(|f| (f.as_str(), 0)).collect();
    for r in scored.values().flat_map(|g| &g.rewards) {
        if let Some(f) = r.format {
            *failures.entry(f.as_str()).or_default() += 1;
        }
    }
    let comps: Vec<&crate::rollout::Completion> =
        scored.values().flat_map(|g| &g.group.completions).collect();
    let tokens: usize = comps.iter().map(|c| c.tokens.len()).sum();
    let cn = comps.len().max(1) as f64;
    // The update counted what it learned from; dropped groups were sampled and scored too.
    let mut flops = u.flops;
    flops.add_unlearned(
        &shared.model,
        &w.dropped_shapes,
        crate::flops::scoring_passes(&shared.reward.needs()),
    );
    serde_json::json!({
        "step": step + 1,
        "reward_mean": mean,
        "reward_std": std,
        "accuracy": correct,
        "format_failures": failures,
        "format_failure_rate": failures.values().sum::<usize>() as f64 / n,
        "completion_len": tokens as f64 / cn,
        "thought_len": comps.iter().map(|c| c.thought_len).sum::<usize>() as f64 / cn,
        "entropy": u.loss.entropy,
        "approx_kl": u.loss.approx_kl,
        "kl_ref": u.loss.kl_ref,
        "flops": flops.total(),
        "flops_sampling": flops.sampling,
        "flops_scoring": flops.scoring,
        "flops_update": flops.update,
        "logprob_mismatch_max": u.loss.mismatch_max,
        "logprob_mismatch_mean": u.loss.mismatch_mean,
        "logprob_mismatch_k3": u.loss.mismatch_k3,
        "clip_low": u.loss.clip_low,
        "clip_high": u.loss.clip_high,
        "off_policy_share": u.loss.off_policy_share,
        "is_weight_mean": u.loss.is_weight_mean,
        "overlong_penalty": u.overlong_penalty,
        "loss": u.loss.loss,
        "grad_norm": u.grad_norm,
        "lr": u.lr,
        "advantage_mean": u.advantage_mean,
        "advantage_std": u.advantage_std,
        "groups": scored.len(),
        "states": scored.keys().collect::<Vec<_>>(),
        "groups_dropped": w.dropped_shapes.len(),
        "states_reissued": w.reissued,
        "remote_states": w.remote_states,
        "weight_version_lag": step - w.version,
        "rollout_s": w.rollout_s,
        "verify_s": w.verify_s,
        "learn_s": learn_s,
        "step_s": w.started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0),
        "tokens_per_s": tokens as f64 / w.rollout_s.max(1e-9),
        "reward_variant": shared.reward.name(),
    })
}

/// Completions recorded per step in `samples.jsonl`.
pub const SAMPLES_PER_STEP: usize = 2;

/// A seeded few of step `step`'s completions, decoded: which state, its context's tail, the true
/// continuation, the thought and answer, and the reward. The same seed picks the same ones.
pub fn step_samples(shared: &RunShared, step: u64, w: &StepWork) -> Vec<serde_json::Value> {
    let groups: Vec<&crate::rollout::ScoredGroup> = w.scored.values().collect();
    if groups.is_empty() {
        return vec![];
    }
    let tok = &shared.tokenizer;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut rng =
        crate::model::Rng::new(crate::model::Rng::derive(&[shared.cfg.seed, step, 0x5a3e]));
    (0..SAMPLES_PER_STEP.min(groups.len()))
        .map(|_| {
            let g = groups[rng.below(groups.len())];
            let i = rng.below(g.group.completions.len().max(1));
            let c = &g.group.completions[i];
            let r = &g.rewards[i];
            let context = tok.decode_bytes(&g.group.state.context);
            let tail = &context[context.len().saturating_sub(160)..];
            serde_json::json!({
                "step": step + 1,
                "state": g.group.seq,
                "context_tail": text(tail),
                "continuation": text(&g.group.state.continuation),
                "thought": text(&tok.decode_bytes(&c.tokens[..c.thought_len])),
                "answer": text(&tok.decode_bytes(&c.tokens[c.thought_len..])),
                "reward": r.value,
                "correct": r.correct,
                "format": r.format.map(|f| f.as_str()),
            })
        })
        .collect()
}

/// `flops_cumulative` of the last line of a metrics file (0 when there is none): where a resumed run's
/// count continues from.
pub fn last_cumulative_flops(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            let line = t.lines().rev().find(|l| !l.trim().is_empty())?.to_string();
            serde_json::from_str::<serde_json::Value>(&line).ok()
        })
        .and_then(|v| v["flops_cumulative"].as_u64())
        .unwrap_or(0)
}

pub struct MetricsActor;

pub struct MetricsState {
    file: std::fs::File,
    samples: Option<std::fs::File>,
    /// TensorBoard scalars; `None` where the event file could not be made (logged once).
    events: Option<crate::tensorboard::EventWriter>,
    bar: indicatif::ProgressBar,
    /// Steps since the last summary line, and their sums (reward, accuracy, tokens/s).
    window: (u64, f64, f64, f64),
    summary_every: u64,
    /// Model FLOPs of every step so far, the resumed ones included (read back from the file).
    flops_cumulative: u64,
    /// The command that makes this run's report, shown with the bar.
    report_hint: String,
}

pub struct MetricsArgs {
    pub path: std::path::PathBuf,
    /// The run's progress bar, at the step the run starts from.
    pub bar: indicatif::ProgressBar,
}

impl Actor for MetricsActor {
    type Msg = MetricsMsg;
    type State = MetricsState;
    type Arguments = MetricsArgs;

    async fn pre_start(
        &self,
        _: ActorRef<MetricsMsg>,
        a: MetricsArgs,
    ) -> Result<MetricsState, ActorProcessingErr> {
        let flops_cumulative = last_cumulative_flops(&a.path);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&a.path)?;
        let dir = a.path.parent().unwrap_or(std::path::Path::new("."));
        let samples = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("samples.jsonl"))
            .map_err(|e| tracing::warn!("samples.jsonl: {e}; no samples are recorded"))
            .ok();
        let events = crate::tensorboard::rewrite_from(&dir.join("tensorboard"), &a.path)
            .map_err(|e| tracing::warn!("tensorboard/: {e}; no TensorBoard events are written"))
            .ok();
        // About ten summary lines a run (the per-step line is at debug level).
        let summary_every = (a.bar.length().unwrap_or(0) / 10).max(1);
        Ok(MetricsState {
            file,
            samples,
            events,
            bar: a.bar,
            window: (0, 0.0, 0.0, 0.0),
            summary_every,
            flops_cumulative,
            report_hint: format!("curves: rpt report {}", dir.display()),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<MetricsMsg>,
        msg: MetricsMsg,
        st: &mut MetricsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MetricsMsg::Step {
                line: mut v,
                samples,
            } => {
                st.flops_cumulative += v["flops"].as_u64().unwrap_or(0);
                v["flops_cumulative"] = st.flops_cumulative.into();
                writeln!(st.file, "{v}")?;
                st.file.flush()?;
                if let Some(f) = &mut st.samples {
                    for s in &samples {
                        writeln!(f, "{s}")?;
                    }
                    f.flush()?;
                }
                if let Some(ev) = &mut st.events {
                    let step = v["step"].as_u64().unwrap_or(0);
                    if let Err(e) = ev.scalars(step, &crate::tensorboard::scalars_of(&v)) {
                        tracing::warn!("{}: {e}; no more TensorBoard events", ev.path().display());
                        st.events = None;
                    }
                }
                let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
                tracing::debug!(
                    step = f("step"),
                    reward = f("reward_mean"),
                    accuracy = f("accuracy"),
                    tokens_per_s = f("tokens_per_s"),
                    "step"
                );
                let w = &mut st.window;
                *w = (
                    w.0 + 1,
                    w.1 + f("reward_mean"),
                    w.2 + f("accuracy"),
                    w.3 + f("tokens_per_s"),
                );
                let step = v["step"].as_u64().unwrap_or(0);
                if step % st.summary_every == 0 {
                    let n = w.0 as f64;
                    tracing::info!(
                        "step {step}: mean over the last {} steps: reward {:.3}, accuracy {:.3}, {:.0} tokens/s",
                        w.0,
                        w.1 / n,
                        w.2 / n,
                        w.3 / n
                    );
                    *w = (0, 0.0, 0.0, 0.0);
                }
                st.bar.set_message(format!(
                    "reward {:.3} acc {:.3} {:.0} tok/s · {}",
                    f("reward_mean"),
                    f("accuracy"),
                    f("tokens_per_s"),
                    st.report_hint
                ));
                st.bar.inc(1);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<MetricsMsg>,
        st: &mut MetricsState,
    ) -> Result<(), ActorProcessingErr> {
        st.bar.finish_and_clear();
        Ok(())
    }
}
