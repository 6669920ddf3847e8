//! `reward.variant = "command"`: rewards computed by a process of the user's (`reward.command`), one
//! JSON line per group over a pipe (protocol in the README, example in `examples/`).
//!
//! Request, one line per group: `context`, `continuation` (text, invalid UTF-8 replaced) and
//! `context_b64`, `continuation_b64` (the exact bytes), `boundaries` (the valid prefix lengths `L_gt`
//! in bytes), `next_token` (its id), `completions` and `completions_b64` (the G sampled completions).
//! Answer, one line: `{"rewards": [r_1, …, r_G]}`, each a finite number in [−1e6, 1e6].
//!
//! `correct` and the format failure of each completion are still judged by `rpt` under the
//! `prefix_match` rule, so accuracy means the same whatever the plug-in rewards.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::variants::judged;
use super::{Case, Needs, Reward, RewardError, RewardFn};
use crate::plugin::{Plugin, PluginSpec, Pool};

/// The largest reward magnitude a plug-in may answer.
pub const MAX_REWARD: f64 = 1e6;

pub struct CommandReward {
    pool: Pool,
}

impl CommandReward {
    pub fn new(spec: PluginSpec) -> Self {
        CommandReward {
            pool: Pool::new(spec),
        }
    }

    /// The request line for one group.
    pub fn request(group: &[Case<'_>]) -> serde_json::Value {
        let first = group.first().cloned().unwrap_or_default();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        serde_json::json!({
            "context": text(first.context),
            "context_b64": B64.encode(first.context),
            "continuation": text(first.continuation),
            "continuation_b64": B64.encode(first.continuation),
            "boundaries": first.boundaries,
            "next_token": first.next_token,
            "completions": group.iter().map(|c| text(c.completion)).collect::<Vec<_>>(),
            "completions_b64": group.iter().map(|c| B64.encode(c.completion)).collect::<Vec<_>>(),
        })
    }

    /// The G rewards of an answer line, or why it is not one.
    fn rewards(
        p: &Plugin,
        n: usize,
        answer: &serde_json::Value,
        g: usize,
    ) -> Result<Vec<f64>, String> {
        let bad = |why: String| p.bad_answer(n, &why, answer);
        let list = answer
            .get("rewards")
            .and_then(|r| r.as_array())
            .ok_or_else(|| bad("expected {\"rewards\": [...]}".into()))?;
        if list.len() != g {
            return Err(bad(format!(
                "{} rewards for a group of {g} completions",
                list.len()
            )));
        }
        list.iter()
            .enumerate()
            .map(|(i, v)| match v.as_f64() {
                Some(x) if x.is_finite() && x.abs() <= MAX_REWARD => Ok(x),
                _ => Err(bad(format!(
                    "reward {i} is {v}; expected a finite number in [-{MAX_REWARD:e}, {MAX_REWARD:e}]"
                ))),
            })
            .collect()
    }
}

impl RewardFn for CommandReward {
    fn name(&self) -> &'static str {
        "command"
    }

    fn needs(&self) -> Needs {
        Needs {
            context: true,
            ..Needs::default()
        }
    }

    fn score_group(&self, group: &[Case<'_>]) -> Result<Vec<Reward>, RewardError> {
        let request = Self::request(group);
        let values = self
            .pool
            .with(|p| {
                let (n, answer) = p.ask(&request)?;
                Self::rewards(p, n, &answer, group.len())
            })
            .map_err(RewardError::Plugin)?;
        Ok(group
            .iter()
            .zip(values)
            .map(|(c, value)| {
                let (_, format, correct) = judged(c);
                Reward {
                    value,
                    correct,
                    format,
                }
            })
            .collect())
    }
}
