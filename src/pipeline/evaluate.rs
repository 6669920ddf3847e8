//! Next-token accuracy (METHOD §5): standard mode (greedy next token on the raw context) and reasoning
//! mode (one templated completion, its `\boxed{}` answer), both scored with the `prefix_match` rule, per
//! difficulty split, with the format-failure rate of reasoning mode and the standard error of each
//! accuracy (√(p(1 − p)/n)). Positions where the corpus offers a teacher thought (a computed number
//! of the built-in corpus) are also scored on their own, as the `taught` split: where a thought can
//! do work that a direct prediction cannot.
//!
//! Some positions cannot be answered in reasoning mode at all: every right answer (each prefix of
//! the continuation that ends on a token boundary) has unbalanced braces, as after `\frac{8` where the
//! next token is `}{`, and a `\boxed{…}` answer is read with its braces counted (METHOD §2). Standard
//! mode can still be right there. Each split counts these positions (`unboxable`) and standard mode's
//! right guesses among them, so that a reader can see how much of a gap between the modes is the
//! answer format's.

use std::collections::BTreeMap;

use crate::env::{Difficulty, State};
use crate::error::Result;
use crate::model::{Decoder, Rng, SampleParams, Tokenizer, generate};
use crate::prompt::Prompt;
use crate::reward::{answer_closed, boxable_answer, parse_prediction, prefix_match};

/// A held-out position and, when an index exists, its proxy entropy.
#[derive(Debug, Clone)]
pub struct EvalItem {
    pub state: State,
    pub entropy: Option<f32>,
    /// The corpus offers a teacher thought for this position.
    pub taught: bool,
}

/// Accuracy of one split.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SplitScore {
    pub positions: usize,
    pub standard_correct: usize,
    pub reasoning_correct: usize,
    pub format_failures: usize,
    /// Positions no `\boxed{}` answer can get right (see the module doc).
    pub unboxable: usize,
    /// Standard mode's right guesses among those positions.
    pub standard_correct_unboxable: usize,
    pub standard_accuracy: f64,
    pub reasoning_accuracy: f64,
    pub format_failure_rate: f64,
    /// Standard errors of the two accuracies, √(p(1 − p)/n).
    pub standard_se: f64,
    pub reasoning_se: f64,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct EvalReport {
    /// `all`, `easy` / `medium` / `hard` when entropies are known, and `taught` when any position has
    /// a teacher thought.
    pub splits: BTreeMap<String, SplitScore>,
    /// Format failures of reasoning mode by reason.
    pub failures_by_reason: BTreeMap<String, usize>,
    /// The first few positions as written: what the model thought and answered.
    pub samples: Vec<EvalSample>,
}

/// One evaluated position, as text (lossy where tokens split characters).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct EvalSample {
    /// The end of the context (its last 80 bytes).
    pub context_end: String,
    /// The true next token.
    pub next_token: String,
    /// Standard mode's guess.
    pub standard: String,
    /// Reasoning mode's whole completion (thought and answer).
    pub completion: String,
    pub reasoning_correct: bool,
    pub standard_correct: bool,
    /// The proxy entropy of the position, where an index is known.
    pub entropy: Option<f32>,
    /// No `\boxed{}` answer can be right here (see the module doc).
    pub unboxable: bool,
    /// The corpus offers a teacher thought for this position.
    pub taught: bool,
}

/// Positions an [`EvalReport`] writes out as a rule.
pub const SAMPLES: usize = 6;

/// Greedy next token on each raw context: (predicted token) per item.
pub fn standard_predictions(model: &Decoder, items: &[EvalItem], batch: usize) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(batch.max(1)) {
        let contexts: Vec<&[u32]> = chunk.iter().map(|i| i.state.context.as_slice()).collect();
        out.extend(model.last_logits(&contexts)?.argmax(1)?.to_vec1::<u32>()?);
    }
    Ok(out)
}

/// Scores `items` in both modes. Reasoning completions use `params` and per-item seeds from `seed`.
/// The first `samples` positions are written out in the report ([`SAMPLES`] as a rule, all of them
/// with `usize::MAX`).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &Decoder,
    tok: &Tokenizer,
    prompt: &Prompt,
    items: &[EvalItem],
    params: &SampleParams,
    seed: u64,
    batch: usize,
    samples: usize,
) -> Result<EvalReport> {
    let standard = standard_predictions(model, items, batch)?;
    let mut reasoning: Vec<std::result::Result<Vec<u8>, crate::reward::FormatFailure>> =
        Vec::with_capacity(items.len());
    let mut completions: Vec<Vec<u8>> = vec![];
    for (c, chunk) in items.chunks(batch.max(1)).enumerate() {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .map(|i| prompt.build(&i.state.context))
            .collect();
        let seeds: Vec<u64> = (0..chunk.len())
            .map(|j| Rng::derive(&[seed, (c * batch + j) as u64]))
            .collect();
        let drawn = generate(model, &prompts, params, &seeds, &[0], &|_, toks| {
            answer_closed(&tok.decode_bytes(toks))
        })?;
        for s in drawn {
            let bytes = tok.decode_bytes(&s.tokens);
            reasoning.push(parse_prediction(&bytes).map(<[u8]>::to_vec));
            if completions.len() < samples {
                completions.push(bytes);
            }
        }
    }
    let mut report = EvalReport::default();
    let known = items.iter().all(|i| i.entropy.is_some());
    for (i, item) in items.iter().enumerate() {
        let st = &item.state;
        let std_ok = prefix_match(tok.bytes(standard[i]), &st.continuation, &st.boundaries);
        let (rsn_ok, failure) = match &reasoning[i] {
            Ok(y) => (prefix_match(y, &st.continuation, &st.boundaries), None),
            Err(f) => (false, Some(*f)),
        };
        if let Some(f) = failure {
            *report
                .failures_by_reason
                .entry(f.as_str().to_string())
                .or_default() += 1;
        }
        let unboxable = !boxable(&st.continuation, &st.boundaries);
        let mut splits = vec!["all"];
        if known {
            let h = item.entropy.unwrap_or(0.0);
            splits.extend(
                Difficulty::ALL
                    .iter()
                    .filter(|d| h >= d.threshold())
                    .map(|d| d.as_str()),
            );
        }
        if item.taught {
            splits.push("taught");
        }
        if i < completions.len() {
            let ctx = tok.decode_bytes(&st.context);
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            report.samples.push(EvalSample {
                context_end: text(&ctx[ctx.len().saturating_sub(80)..]),
                next_token: text(tok.bytes(st.next_token)),
                standard: text(tok.bytes(standard[i])),
                completion: text(&completions[i]),
                reasoning_correct: rsn_ok,
                standard_correct: std_ok,
                entropy: item.entropy,
                unboxable,
                taught: item.taught,
            });
        }
        for name in splits {
            let s = report.splits.entry(name.to_string()).or_default();
            s.positions += 1;
            s.standard_correct += std_ok as usize;
            s.reasoning_correct += rsn_ok as usize;
            s.format_failures += failure.is_some() as usize;
            s.unboxable += unboxable as usize;
            s.standard_correct_unboxable += (unboxable && std_ok) as usize;
        }
    }
    for s in report.splits.values_mut() {
        let n = s.positions.max(1) as f64;
        s.standard_accuracy = s.standard_correct as f64 / n;
        s.reasoning_accuracy = s.reasoning_correct as f64 / n;
        s.format_failure_rate = s.format_failures as f64 / n;
        s.standard_se = standard_error(s.standard_accuracy, s.positions);
        s.reasoning_se = standard_error(s.reasoning_accuracy, s.positions);
    }
    Ok(report)
}

/// Whether some right answer (a prefix of `continuation` ending at one of `boundaries`) can be written
/// inside `\boxed{}` and read back: its braces balance and never close more than they opened.
pub fn boxable(continuation: &[u8], boundaries: &[usize]) -> bool {
    boundaries
        .iter()
        .any(|&l| l > 0 && boxable_answer(&continuation[..l.min(continuation.len())]))
}

/// √(p(1 − p)/n), the standard error of an accuracy `p` over `n` positions (0 for none).
pub fn standard_error(p: f64, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    (p * (1.0 - p) / n as f64).sqrt()
}

impl EvalReport {
    /// A table: one row per split, accuracies ± their standard errors, in percent.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<8} {:>9} {:>13} {:>13} {:>11} {:>18}\n",
            "split", "positions", "standard", "reasoning", "format-fail", "unboxable (std ok)"
        );
        for name in ["all", "easy", "medium", "hard", "taught"] {
            if let Some(s) = self.splits.get(name) {
                let pct = |p: f64, se: f64| format!("{:.1}±{:.1}%", 100.0 * p, 100.0 * se);
                out.push_str(&format!(
                    "{:<8} {:>9} {:>13} {:>13} {:>10.1}% {:>18}\n",
                    name,
                    s.positions,
                    pct(s.standard_accuracy, s.standard_se),
                    pct(s.reasoning_accuracy, s.reasoning_se),
                    100.0 * s.format_failure_rate,
                    format!("{} ({})", s.unboxable, s.standard_correct_unboxable)
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::boxable;

    #[test]
    fn an_answer_is_boxable_when_some_right_prefix_balances_its_braces() {
        // A plain token, and a longer right answer that closes what the first token opened.
        assert!(boxable(b" 5 +", &[2, 4]));
        assert!(boxable(b"{3}+", &[1, 3, 4]));
        assert!(boxable(b"^{2}", &[2, 3, 4]));
        // Closing first can never be undone; an opening never closed within the window stays open.
        assert!(!boxable(b"}{3}", &[2, 3, 4]));
        assert!(!boxable(b"}$.", &[3]));
        assert!(!boxable(b"{3", &[1, 2]));
        // The balanced prefix must end on a boundary: `{3}` inside one token with `x` is `{3}x`.
        assert!(boxable(b"{3}x", &[4]));
        assert!(!boxable(b"{3}x{", &[5]));
    }
}
