//! The config's checks, run once at load: every float finite and in range, every count within an upper
//! bound, and the keys that depend on each other checked together. Each error names the key, the bound
//! and the value given.

use std::path::Path;

use super::{Config, ConfigError, CorpusKind};

/// Upper bounds of the counts: far above any run this program can do, low enough that no size
/// computed from them overflows an allocation.
pub mod limits {
    pub const GROUP: usize = 4096;
    pub const STATES: usize = 1 << 20;
    /// `states_per_step × group_size`.
    pub const ROLLOUTS: usize = 1 << 22;
    pub const TOKENS: usize = 1 << 20;
    pub const ACTORS: usize = 1024;
    pub const STALENESS: u64 = 1024;
    pub const EPOCHS: usize = 1024;
    pub const STEPS: u64 = 1 << 32;
    pub const DOCUMENTS: usize = 1 << 30;
    pub const VOCAB: usize = 1 << 22;
    pub const WIDTH: usize = 1 << 16;
    pub const LAYERS: usize = 1024;
    pub const SECONDS: f64 = 1e7;
}

/// Where a float must lie.
#[derive(Debug, Clone, Copy)]
enum Range {
    AtLeast(f64),
    Closed(f64, f64),
    OpenClosed(f64, f64),
    ClosedOpen(f64, f64),
}

impl Range {
    fn contains(self, x: f64) -> bool {
        match self {
            Range::AtLeast(lo) => x >= lo,
            Range::Closed(lo, hi) => (lo..=hi).contains(&x),
            Range::OpenClosed(lo, hi) => x > lo && x <= hi,
            Range::ClosedOpen(lo, hi) => (lo..hi).contains(&x),
        }
    }

    fn describe(self) -> String {
        match self {
            Range::AtLeast(lo) => format!(">= {lo}"),
            Range::Closed(lo, hi) => format!("in [{lo}, {hi}]"),
            Range::OpenClosed(lo, hi) => format!("in ({lo}, {hi}]"),
            Range::ClosedOpen(lo, hi) => format!("in [{lo}, {hi})"),
        }
    }
}

/// A float as a person reads it: exponent form when very large or very small.
fn show(x: f64) -> String {
    if x != 0.0 && x.is_finite() && !(1e-4..1e6).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// The checks of [`Config::validate`], each naming its key.
struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn bad<T>(&self, key: &str, reason: String) -> Result<T, ConfigError> {
        Err(ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.into(),
            reason,
        })
    }

    /// A finite number in `range`; NaN and infinities are refused by name.
    fn float(&self, key: &str, x: f64, range: Range) -> Result<(), ConfigError> {
        if !x.is_finite() {
            return self.bad(
                key,
                format!(
                    "must be a finite number {}, got {}",
                    range.describe(),
                    show(x)
                ),
            );
        }
        if !range.contains(x) {
            return self.bad(
                key,
                format!("must be {}, got {}", range.describe(), show(x)),
            );
        }
        Ok(())
    }

    fn count(&self, key: &str, n: usize, lo: usize, hi: usize) -> Result<(), ConfigError> {
        self.count_u64(key, n as u64, lo as u64, hi as u64)
    }

    fn count_u64(&self, key: &str, n: u64, lo: u64, hi: u64) -> Result<(), ConfigError> {
        if n < lo {
            return self.bad(key, format!("must be >= {lo}, got {n}"));
        }
        if n > hi {
            return self.bad(key, format!("must be <= {hi}, got {n}"));
        }
        Ok(())
    }
}

impl Config {
    /// Checks every bound; the error names the key, the bound and the value given. Every float is
    /// checked finite (NaN and infinities are refused, never read as a default), every count has an
    /// upper bound (so that no size overflows an allocation later), and keys that depend on each
    /// other are checked together.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let v = Validator { path };
        let r = &self.rollout;
        v.count("rollout.group_size", r.group_size, 2, limits::GROUP)?;
        v.count(
            "rollout.states_per_step",
            r.states_per_step,
            1,
            limits::STATES,
        )?;
        if r.group_size.saturating_mul(r.states_per_step) > limits::ROLLOUTS {
            return v.bad(
                "rollout.states_per_step",
                format!(
                    "times rollout.group_size must be <= {}, got {} x {}",
                    limits::ROLLOUTS,
                    r.states_per_step,
                    r.group_size
                ),
            );
        }
        v.float("rollout.temperature", r.temperature, Range::AtLeast(0.0))?;
        v.float("rollout.top_p", r.top_p, Range::OpenClosed(0.0, 1.0))?;
        v.count("rollout.top_k", r.top_k, 0, limits::TOKENS)?;
        v.count(
            "rollout.max_new_tokens",
            r.max_new_tokens,
            1,
            limits::TOKENS,
        )?;
        v.count("rollout.policies", r.policies, 1, limits::ACTORS)?;
        v.count(
            "rollout.kv_cache_tokens",
            r.kv_cache_tokens,
            1,
            limits::ROLLOUTS,
        )?;
        v.count("rollout.verifiers", r.verifiers, 1, limits::ACTORS)?;
        v.count_u64(
            "rollout.max_staleness",
            r.max_staleness,
            0,
            limits::STALENESS,
        )?;
        if self.reward.variant == "command" {
            if self.reward.command.is_empty() || self.reward.command[0].is_empty() {
                return v.bad(
                    "reward.command",
                    "must name the plug-in's program and arguments for variant = \"command\", e.g. [\"python3\", \"my_reward.py\"]".into(),
                );
            }
        } else if let Err(e) = crate::reward::by_name(&self.reward.variant) {
            return v.bad("reward.variant", e.to_string());
        }
        v.float(
            "reward.timeout_s",
            self.reward.timeout_s,
            Range::OpenClosed(0.0, 86_400.0),
        )?;
        v.float(
            "reward.ema_tau",
            self.reward.ema_tau,
            Range::Closed(0.0, 1.0),
        )?;
        let g = &self.grpo;
        v.float(
            "grpo.epsilon_low",
            g.epsilon_low,
            Range::ClosedOpen(0.0, 1.0),
        )?;
        v.float("grpo.epsilon_high", g.epsilon_high, Range::Closed(0.0, 1e3))?;
        v.float("grpo.beta", g.beta, Range::Closed(0.0, 1e6))?;
        // Up to 20: the gate's e^(τ(1 − ρ)) stays finite in f32 (ρ ≥ 0).
        for (key, tau) in [
            ("grpo.sapo_tau_pos", g.sapo_tau_pos),
            ("grpo.sapo_tau_neg", g.sapo_tau_neg),
        ] {
            v.float(key, tau, Range::OpenClosed(0.0, 20.0))?;
        }
        if g.is_cap != f64::INFINITY {
            v.float("grpo.is_cap", g.is_cap, Range::OpenClosed(1.0, 1e9))?;
        }
        v.count(
            "grpo.overlong_buffer",
            g.overlong_buffer,
            0,
            r.max_new_tokens,
        )?;
        v.float(
            "grpo.overlong_penalty",
            g.overlong_penalty,
            Range::Closed(0.0, 1e6),
        )?;
        v.count("grpo.ppo_epochs", g.ppo_epochs, 1, limits::EPOCHS)?;
        v.count(
            "grpo.micro_batch_tokens",
            g.micro_batch_tokens,
            1,
            limits::TOKENS,
        )?;
        v.count("grpo.mini_batches", g.mini_batches, 1, r.states_per_step)?;
        if g.dynamic_sampling {
            v.count("grpo.max_gen_batches", g.max_gen_batches, 1, limits::EPOCHS)?;
        }
        let o = &self.optim;
        v.float("optim.lr", o.lr, Range::OpenClosed(0.0, 1.0))?;
        v.count_u64("optim.warmup_steps", o.warmup_steps, 0, limits::STEPS)?;
        v.float(
            "optim.weight_decay",
            o.weight_decay,
            Range::Closed(0.0, 1.0),
        )?;
        v.float(
            "optim.max_grad_norm",
            o.max_grad_norm,
            Range::Closed(0.0, 1e9),
        )?;
        if let Some(c) = &self.cluster {
            if c.listen.parse::<std::net::SocketAddr>().is_err() {
                return v.bad(
                    "cluster.listen",
                    format!(
                        "expected IP:PORT such as \"0.0.0.0:4870\", got {:?}",
                        c.listen
                    ),
                );
            }
            if c.cookie.is_empty() {
                return v.bad("cluster.cookie", "must not be empty".into());
            }
            v.count("cluster.min_workers", c.min_workers, 0, limits::ACTORS)?;
            for (key, s) in [
                ("cluster.wait_s", c.wait_s),
                ("cluster.request_timeout_s", c.request_timeout_s),
            ] {
                if !(s > 0.0 && s <= limits::SECONDS) {
                    return v.bad(
                        key,
                        format!(
                            "must be a positive number of seconds <= {}, got {s}",
                            limits::SECONDS
                        ),
                    );
                }
            }
        }
        let t = &self.train;
        v.count_u64("train.steps", t.steps, 0, limits::STEPS)?;
        v.count_u64(
            "train.checkpoint_every",
            t.checkpoint_every,
            1,
            limits::STEPS,
        )?;
        v.count("eval.positions", self.eval.positions, 0, limits::DOCUMENTS)?;
        if t.eval_before_after && self.eval.positions == 0 {
            return v.bad(
                "eval.positions",
                "must be >= 1 while train.eval_before_after = true (set it to false to skip evaluation)"
                    .into(),
            );
        }
        v.float(
            "eval.temperature",
            self.eval.temperature,
            Range::Closed(0.0, 1e3),
        )?;
        let s = &self.states;
        v.count(
            "states.max_context_tokens",
            s.max_context_tokens,
            1,
            limits::TOKENS,
        )?;
        v.count(
            "states.max_target_bytes",
            s.max_target_bytes,
            1,
            limits::TOKENS,
        )?;
        v.count("states.entropy_top_k", s.entropy_top_k, 2, limits::TOKENS)?;
        v.float(
            "states.min_entropy",
            f64::from(s.min_entropy),
            Range::Closed(0.0, 1e3),
        )?;
        if !self.prompt.template.contains("{context}") {
            return v.bad(
                "prompt.template",
                format!("must contain {{context}}, got {:?}", self.prompt.template),
            );
        }
        match self.corpus.kind {
            CorpusKind::Builtin => {
                v.count(
                    "corpus.documents",
                    self.corpus.documents,
                    2,
                    limits::DOCUMENTS,
                )?;
            }
            CorpusKind::Files => match &self.corpus.path {
                None => return v.bad("corpus.path", "is required with kind = \"files\"".into()),
                Some(p) if !p.exists() => {
                    return v.bad("corpus.path", format!("{} does not exist", p.display()));
                }
                Some(_) => {}
            },
            CorpusKind::Command => {
                if self.corpus.command.first().is_none_or(|p| p.is_empty()) {
                    return v.bad(
                        "corpus.command",
                        "must name the environment plug-in's program and arguments for kind = \"command\", e.g. [\"python3\", \"examples/environment_documents.py\", \"docs.jsonl\"]".into(),
                    );
                }
            }
        }
        v.float(
            "corpus.timeout_s",
            self.corpus.timeout_s,
            Range::OpenClosed(0.0, 86_400.0),
        )?;
        v.count("corpus.chunk_bytes", self.corpus.chunk_bytes, 0, 1 << 30)?;
        v.float(
            "corpus.heldout_fraction",
            self.corpus.heldout_fraction,
            Range::ClosedOpen(0.0, 1.0),
        )?;
        if !self.model.bootstrap_if_missing && !self.model.path.join("config.json").exists() {
            return v.bad(
                "model.path",
                format!(
                    "{} has no config.json (and bootstrap_if_missing = false)",
                    self.model.path.display()
                ),
            );
        }
        let b = &self.bootstrap;
        v.count("bootstrap.vocab_size", b.vocab_size, 300, limits::VOCAB)?;
        v.count("bootstrap.hidden_size", b.hidden_size, 2, limits::WIDTH)?;
        v.count("bootstrap.layers", b.layers, 1, limits::LAYERS)?;
        v.count("bootstrap.heads", b.heads, 1, limits::LAYERS)?;
        v.count("bootstrap.kv_heads", b.kv_heads, 1, limits::LAYERS)?;
        v.count(
            "bootstrap.intermediate_size",
            b.intermediate_size,
            1,
            limits::WIDTH,
        )?;
        v.count(
            "bootstrap.pretrain_steps",
            b.pretrain_steps,
            0,
            limits::STEPS as usize,
        )?;
        v.count(
            "bootstrap.sft_steps",
            b.sft_steps,
            0,
            limits::STEPS as usize,
        )?;
        v.count("bootstrap.batch", b.batch, 1, limits::STATES)?;
        v.count("bootstrap.seq_len", b.seq_len, 2, limits::TOKENS)?;
        v.count(
            "bootstrap.thought_bytes",
            b.thought_bytes,
            0,
            limits::TOKENS,
        )?;
        v.float("bootstrap.lr", b.lr, Range::OpenClosed(0.0, 1.0))?;
        v.float(
            "bootstrap.teacher_share",
            b.teacher_share,
            Range::Closed(0.0, 1.0),
        )?;
        v.float(
            "bootstrap.pretrain_thought_share",
            b.pretrain_thought_share,
            Range::Closed(0.0, 1.0),
        )?;
        if !b.heads.is_multiple_of(b.kv_heads)
            || !b.hidden_size.is_multiple_of(b.heads)
            || !(b.hidden_size / b.heads).is_multiple_of(2)
        {
            return v.bad(
                "bootstrap.heads",
                format!(
                    "need heads divisible by kv_heads and an even head size; got hidden_size {}, heads {}, kv_heads {}",
                    b.hidden_size, b.heads, b.kv_heads
                ),
            );
        }
        Ok(())
    }
}
