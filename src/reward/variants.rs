//! The five reward variants of METHOD §3: RPT Eq. 3 and App. A, and RLP Eq. 3–5.

use super::{
    Case, FormatFailure, Needs, Reward, RewardError, RewardFn, parse_prediction, prefix_match,
};

/// The prediction of a completion, why it has none, and whether it is correct under `prefix_match`.
pub(super) fn judged<'a>(c: &Case<'a>) -> (Option<&'a [u8]>, Option<FormatFailure>, bool) {
    match parse_prediction(c.completion) {
        Ok(y) => (Some(y), None, prefix_match(y, c.continuation, c.boundaries)),
        Err(f) => (None, Some(f), false),
    }
}

/// 1 when the guess is a byte-exact prefix of the continuation ending on a token boundary (RPT Eq. 3).
pub struct PrefixMatch;

impl RewardFn for PrefixMatch {
    fn name(&self) -> &'static str {
        "prefix_match"
    }
    fn score_group(&self, group: &[Case<'_>]) -> Result<Vec<Reward>, RewardError> {
        Ok(group
            .iter()
            .map(|c| {
                let (_, format, correct) = judged(c);
                Reward {
                    value: correct as u8 as f64,
                    correct,
                    format,
                }
            })
            .collect())
    }
}

/// 1 when the first token of `tokenize(y)` is `x_t` (RPT App. A).
pub struct FirstToken;

fn first_token_hit(c: &Case<'_>, variant: &'static str) -> Result<(Reward, bool), RewardError> {
    let (y, format, correct) = judged(c);
    let hit = match y {
        Some(y) if !y.is_empty() => {
            c.guess_first_token.ok_or(RewardError::Missing {
                variant,
                field: "guess_first_token",
            })? == c.next_token
        }
        _ => false,
    };
    Ok((
        Reward {
            value: hit as u8 as f64,
            correct,
            format,
        },
        y.is_some_and(|y| !y.is_empty()),
    ))
}

impl RewardFn for FirstToken {
    fn name(&self) -> &'static str {
        "first_token"
    }
    fn needs(&self) -> Needs {
        Needs {
            guess_first_token: true,
            ..Needs::default()
        }
    }
    fn score_group(&self, group: &[Case<'_>]) -> Result<Vec<Reward>, RewardError> {
        group
            .iter()
            .map(|c| first_token_hit(c, self.name()).map(|(r, _)| r))
            .collect()
    }
}

/// 1 on a first-token hit, else the policy's own probability of its (wrong) first token (RPT App. A).
pub struct Dense;

fn dense(c: &Case<'_>, variant: &'static str) -> Result<Reward, RewardError> {
    let (mut r, has_guess) = first_token_hit(c, variant)?;
    if r.value == 0.0 && has_guess {
        let p = c.guess_prob.ok_or(RewardError::Missing {
            variant,
            field: "guess_prob",
        })?;
        r.value = if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.0
        };
    }
    Ok(r)
}

impl RewardFn for Dense {
    fn name(&self) -> &'static str {
        "dense"
    }
    fn needs(&self) -> Needs {
        Needs {
            guess_first_token: true,
            guess_prob: true,
            ..Needs::default()
        }
    }
    fn score_group(&self, group: &[Case<'_>]) -> Result<Vec<Reward>, RewardError> {
        group.iter().map(|c| dense(c, self.name())).collect()
    }
}

/// `dense` in groups where some completion hits; 0 for the whole group otherwise (RPT App. A).
pub struct ConditionalDense;

impl RewardFn for ConditionalDense {
    fn name(&self) -> &'static str {
        "conditional_dense"
    }
    fn needs(&self) -> Needs {
        Dense.needs()
    }
    fn score_group(&self, group: &[Case<'_>]) -> Result<Vec<Reward>, RewardError> {
        let mut rewards: Vec<Reward> = group
            .iter()
            .map(|c| dense(c, self.name()))
            .collect::<Result<_, _>>()?;
        if !rewards.iter().any(|r| r.value == 1.0) {
            for r in &mut rewards {
                r.value = 0.0;
            }
        }
        Ok(rewards)
    }
}

/// The thought's gain in log-prob of the true next token over the no-thought EMA baseline (RLP Eq. 3–5).
/// Needs no `\boxed{}`: the format fields still report on the answer for metrics.
pub struct InfoGain;

impl RewardFn for InfoGain {
    fn name(&self) -> &'static str {
        "info_gain"
    }
    fn needs(&self) -> Needs {
        Needs {
            info_gain: true,
            ema_teacher: true,
            ..Needs::default()
        }
    }
    fn score_group(&self, group: &[Case<'_>]) -> Result<Vec<Reward>, RewardError> {
        group
            .iter()
            .map(|c| {
                let (_, format, correct) = judged(c);
                let with = c.logp_with_thought.ok_or(RewardError::Missing {
                    variant: "info_gain",
                    field: "logp_with_thought",
                })?;
                let base = c.logp_baseline.ok_or(RewardError::Missing {
                    variant: "info_gain",
                    field: "logp_baseline",
                })?;
                let value = if with.is_finite() && base.is_finite() {
                    with - base
                } else {
                    0.0
                };
                Ok(Reward {
                    value,
                    correct,
                    format,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::by_name;
    use super::*;

    // Continuation " 42." tokenized as " 4", "2", "." (METHOD §1's example); x_t = id 7.
    const CONT: &[u8] = b" 42.";
    const BOUNDS: &[usize] = &[2, 3, 4];

    fn case(completion: &str) -> Case<'_> {
        Case {
            completion: completion.as_bytes(),
            continuation: CONT,
            boundaries: BOUNDS,
            next_token: 7,
            ..Case::default()
        }
    }

    fn prefix(completion: &str) -> f64 {
        PrefixMatch.score_group(&[case(completion)]).unwrap()[0].value
    }

    #[test]
    fn prefix_match_cases() {
        assert_eq!(prefix("t</think>\\boxed{ 4}"), 1.0); // one token
        assert_eq!(prefix("t</think>\\boxed{ 42}"), 1.0); // two tokens
        assert_eq!(prefix("t</think>\\boxed{ 42.}"), 1.0); // the whole window
        assert_eq!(prefix("t</think>\\boxed{ }"), 0.0); // stops inside the token " 4"
        assert_eq!(prefix("t</think>\\boxed{4}"), 0.0); // leading space missing
        assert_eq!(prefix("t</think>\\boxed{ 42.5}"), 0.0); // longer than the continuation
        assert_eq!(prefix("t</think>\\boxed{}"), 0.0); // empty prediction: 0 is not a boundary
        assert_eq!(prefix("t</think>\\boxed{ 9} \\boxed{ 4}"), 1.0); // the last box counts
        assert_eq!(prefix("t</think>\\boxed{ 4} \\boxed{ 9}"), 0.0);
        assert_eq!(prefix("\\boxed{ 4}"), 0.0); // no </think>
        assert_eq!(prefix("</think>\\boxed{ 4}</think>\\boxed{ 9}"), 0.0); // </think> twice: the last wins
        assert_eq!(prefix("</think>\\boxed{ 9}</think>\\boxed{ 4}"), 1.0);
        let bad = Case {
            completion: b"</think>\\boxed{\xff 4}",
            ..case("")
        };
        assert_eq!(PrefixMatch.score_group(&[bad]).unwrap()[0].value, 0.0);
    }

    #[test]
    fn braces_inside_the_answer_are_compared_as_written() {
        let cont = b"{x}+1";
        let c = Case {
            completion: b"</think>\\boxed{{x}}",
            continuation: cont,
            boundaries: &[3, 5],
            ..Case::default()
        };
        assert_eq!(PrefixMatch.score_group(&[c]).unwrap()[0].value, 1.0);
    }

    #[test]
    fn format_failures_are_reported() {
        let r = &PrefixMatch.score_group(&[case("no think")]).unwrap()[0];
        assert_eq!(r.format, Some(FormatFailure::NoThinkEnd));
        let r = &PrefixMatch
            .score_group(&[case("</think>\\boxed{ 4")])
            .unwrap()[0];
        assert_eq!(r.format, Some(FormatFailure::Unclosed));
    }

    #[test]
    fn first_token_compares_ids() {
        let hit = Case {
            guess_first_token: Some(7),
            ..case("</think>\\boxed{ 4}")
        };
        let miss = Case {
            guess_first_token: Some(8),
            ..case("</think>\\boxed{ 4}")
        };
        let r = FirstToken.score_group(&[hit, miss]).unwrap();
        assert_eq!((r[0].value, r[1].value), (1.0, 0.0));
        let missing = case("</think>\\boxed{ 4}");
        assert_eq!(
            FirstToken.score_group(&[missing]).unwrap_err(),
            RewardError::Missing {
                variant: "first_token",
                field: "guess_first_token"
            }
        );
    }

    #[test]
    fn dense_gives_the_guess_probability_when_wrong() {
        let hit = Case {
            guess_first_token: Some(7),
            guess_prob: Some(0.3),
            ..case("</think>\\boxed{ 4}")
        };
        let miss = Case {
            guess_first_token: Some(9),
            guess_prob: Some(0.3),
            ..case("</think>\\boxed{ 5}")
        };
        let none = Case {
            guess_prob: Some(0.3),
            ..case("no answer")
        };
        let r = Dense
            .score_group(&[hit.clone(), miss.clone(), none.clone()])
            .unwrap();
        assert_eq!(
            r.iter().map(|r| r.value).collect::<Vec<_>>(),
            vec![1.0, 0.3, 0.0]
        );
        // conditional: kept when someone hits, zeroed otherwise.
        let r = ConditionalDense.score_group(&[hit, miss.clone()]).unwrap();
        assert_eq!((r[0].value, r[1].value), (1.0, 0.3));
        let r = ConditionalDense.score_group(&[miss.clone(), miss]).unwrap();
        assert_eq!((r[0].value, r[1].value), (0.0, 0.0));
    }

    #[test]
    fn info_gain_is_the_log_prob_difference() {
        let c = Case {
            logp_with_thought: Some(-1.0),
            logp_baseline: Some(-3.5),
            ..case("thinking")
        };
        let r = InfoGain.score_group(&[c]).unwrap();
        assert!((r[0].value - 2.5).abs() < 1e-12);
        assert!(by_name("info_gain").unwrap().needs().info_gain);
    }
}
