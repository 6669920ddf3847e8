//! Checks made when a run is set up, before anything is written: that the configured lengths fit the
//! model, and that a resumed run still computes what its earlier steps computed.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::prompt::Prompt;

/// The longest prompt (template + `states.max_context_tokens`) plus `rollout.max_new_tokens` must fit
/// the model's `max_position_embeddings`; `model_dir` names the model in the message.
pub fn check_lengths(
    cfg: &Config,
    model: &ModelConfig,
    prompt: &Prompt,
    model_dir: &Path,
) -> Result<()> {
    let ctx = cfg.states.max_context_tokens;
    let new = cfg.rollout.max_new_tokens;
    let total = prompt.overhead().saturating_add(ctx).saturating_add(new);
    let limit = model.max_position_embeddings;
    if total > limit {
        return Err(Error::Run(format!(
            "`states.max_context_tokens` = {ctx} + `rollout.max_new_tokens` = {new} + the prompt \
             template's {} tokens = {total} exceed the model's max_position_embeddings = {limit} \
             ({}); lower one of the two keys so that they sum to at most {}",
            prompt.overhead(),
            model_dir.join("config.json").display(),
            limit.saturating_sub(prompt.overhead())
        )));
    }
    Ok(())
}

/// Keys a resumed run may change freely: how long it runs, how often it saves and evaluates, how
/// many actors do the work, and where workers connect. Every other key changes what the run computes.
pub const RESUMABLE_KEYS: &[&str] = &[
    "run_dir",
    "train.steps",
    "train.checkpoint_every",
    "train.eval_before_after",
    "eval.",
    "rollout.policies",
    "rollout.verifiers",
    "cluster",
];

/// The keys whose values differ between two configs, as `key: old -> new`, leaving out
/// [`RESUMABLE_KEYS`].
pub fn config_changes(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (flatten(old), flatten(new));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let absent = || "(absent)".to_string();
    keys.into_iter()
        .filter(|k| {
            !RESUMABLE_KEYS.iter().any(|r| {
                k.as_str() == *r
                    || k.starts_with(r) && (r.ends_with('.') || k[r.len()..].starts_with('.'))
            })
        })
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{k}: {} -> {}",
                a.get(k).cloned().unwrap_or_else(absent),
                b.get(k).cloned().unwrap_or_else(absent)
            )
        })
        .collect()
}

/// Every key of `cfg`, dotted (`bootstrap.split_digits`), with its value as TOML text.
pub(super) fn flatten(cfg: &Config) -> BTreeMap<String, String> {
    crate::config::flat_keys(&toml::Value::try_from(cfg).expect("config serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_meaningful_keys_only() {
        let old = Config::default();
        let mut new = old.clone();
        new.train.steps += 10;
        new.eval.positions = 7;
        new.rollout.policies = 3;
        assert!(config_changes(&old, &new).is_empty());
        new.rollout.group_size = 4;
        new.rollout.states_per_step = 4;
        let c = config_changes(&old, &new);
        assert_eq!(
            c,
            vec![
                "rollout.group_size: 8 -> 4".to_string(),
                "rollout.states_per_step: 8 -> 4".to_string()
            ]
        );
        new.optim.lr = 0.5;
        assert!(
            config_changes(&old, &new)
                .iter()
                .any(|k| k.starts_with("optim.lr"))
        );
    }
}
