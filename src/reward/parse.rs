//! The answer parser (METHOD §2): the prediction is the full text inside the last `\boxed{…}` after the
//! last `</think>`, with nested braces counted. Works on bytes of any kind and never panics.

/// Why a completion has no prediction; each is counted in the metrics.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum FormatFailure {
    /// No `</think>` anywhere.
    NoThinkEnd,
    /// `</think>` but no `\boxed{` after it.
    NoBoxed,
    /// The last `\boxed{` is never closed.
    Unclosed,
}

impl FormatFailure {
    pub const ALL: [FormatFailure; 3] = [
        FormatFailure::NoThinkEnd,
        FormatFailure::NoBoxed,
        FormatFailure::Unclosed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FormatFailure::NoThinkEnd => "no_think_end",
            FormatFailure::NoBoxed => "no_boxed",
            FormatFailure::Unclosed => "unclosed",
        }
    }
}

pub const THINK_END: &[u8] = b"</think>";
pub const BOXED: &[u8] = b"\\boxed{";

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    (0..=hay.len() - needle.len())
        .rev()
        .find(|&i| &hay[i..i + needle.len()] == needle)
}

/// The bytes inside the last complete `\boxed{…}` after the last `</think>`.
pub fn parse_prediction(completion: &[u8]) -> Result<&[u8], FormatFailure> {
    let start = rfind(completion, THINK_END).ok_or(FormatFailure::NoThinkEnd)? + THINK_END.len();
    let tail = &completion[start..];
    let mut found: Option<&[u8]> = None;
    let mut i = 0;
    while i < tail.len() {
        if tail[i..].starts_with(BOXED) {
            let open = i + BOXED.len();
            match closing_brace(&tail[open..]) {
                Some(len) => {
                    found = Some(&tail[open..open + len]);
                    i = open + len + 1;
                }
                None => return Err(FormatFailure::Unclosed),
            }
        } else {
            i += 1;
        }
    }
    found.ok_or(FormatFailure::NoBoxed)
}

/// Length of the text before the `}` that balances an already opened `{`, if any.
fn closing_brace(s: &[u8]) -> Option<usize> {
    let mut depth = 1usize;
    for (i, &c) in s.iter().enumerate() {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Whether `answer` can be written inside `\boxed{…}` and read back whole by [`parse_prediction`]:
/// its braces balance and never close more than they opened.
pub fn boxable_answer(answer: &[u8]) -> bool {
    let mut depth = 0i64;
    answer.iter().all(|&b| {
        depth += (b == b'{') as i64 - (b == b'}') as i64;
        depth >= 0
    }) && depth == 0
}

/// True once `generated` holds a complete answer: a `\boxed{…}` closed after the last `</think>`.
/// The sampler's stop rule for RPT completions.
pub fn answer_closed(generated: &[u8]) -> bool {
    let Some(p) = rfind(generated, THINK_END) else {
        return false;
    };
    let tail = &generated[p + THINK_END.len()..];
    match rfind(tail, BOXED) {
        Some(b) => closing_brace(&tail[b + BOXED.len()..]).is_some(),
        None => false,
    }
}

/// The thought: everything before the first `</think>` (the whole completion when there is none).
pub fn thought(completion: &[u8]) -> &[u8] {
    let end = (0..completion.len())
        .find(|&i| completion[i..].starts_with(THINK_END))
        .unwrap_or(completion.len());
    &completion[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Result<&[u8], FormatFailure> {
        parse_prediction(s.as_bytes())
    }

    #[test]
    fn takes_the_last_box_after_the_last_think_end() {
        assert_eq!(p("a</think>\\boxed{ 4}"), Ok(&b" 4"[..]));
        assert_eq!(p("x</think>\\boxed{1} then \\boxed{2}"), Ok(&b"2"[..]));
        assert_eq!(p("\\boxed{9}</think>no box"), Err(FormatFailure::NoBoxed));
        assert_eq!(p("</think>\\boxed{1}</think>\\boxed{2}"), Ok(&b"2"[..]));
        assert_eq!(p("</think>\\boxed{1}</think>"), Err(FormatFailure::NoBoxed));
    }

    #[test]
    fn counts_nested_braces() {
        assert_eq!(p("</think>\\boxed{\\frac{1}{2}}"), Ok(&b"\\frac{1}{2}"[..]));
        assert_eq!(p("</think>\\boxed{{}"), Err(FormatFailure::Unclosed));
        assert_eq!(p("</think>\\boxed{}"), Ok(&b""[..]));
        assert_eq!(p("</think>\\boxed{a}}"), Ok(&b"a"[..]));
    }

    #[test]
    fn names_each_failure() {
        assert_eq!(p("\\boxed{1}"), Err(FormatFailure::NoThinkEnd));
        assert_eq!(p("</think> 4"), Err(FormatFailure::NoBoxed));
        assert_eq!(p("</think>\\boxed{ 4"), Err(FormatFailure::Unclosed));
        assert_eq!(
            p("</think>\\boxed{1}\\boxed{2"),
            Err(FormatFailure::Unclosed)
        );
    }

    #[test]
    fn invalid_utf8_inside_the_box_is_kept_as_bytes() {
        let c = b"</think>\\boxed{\xc3}";
        assert_eq!(parse_prediction(c), Ok(&b"\xc3"[..]));
    }

    #[test]
    fn stop_rule_fires_when_the_box_closes() {
        assert!(!answer_closed(b"think \\boxed{1}"));
        assert!(!answer_closed(b"t</think>\\boxed{1"));
        assert!(answer_closed(b"t</think>\\boxed{1}"));
        assert!(!answer_closed(b"t</think>\\boxed{{1}"));
        assert_eq!(thought(b"abc</think>x"), b"abc");
        assert_eq!(thought(b"abc"), b"abc");
    }

    proptest! {
        #[test]
        fn never_panics_and_prediction_is_inside_the_input(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(pred) = parse_prediction(&bytes) {
                let start = pred.as_ptr() as usize - bytes.as_ptr() as usize;
                prop_assert!(start + pred.len() <= bytes.len());
                prop_assert_eq!(bytes[start + pred.len()], b'}');
            }
            let _ = answer_closed(&bytes);
        }

        #[test]
        fn any_braced_answer_round_trips(answer in "[a-z0-9 {}]{0,12}", thought in "[a-z ]{0,12}") {
            // Balanced answers only.
            prop_assume!(boxable_answer(answer.as_bytes()));
            let text = format!("{thought}</think>\\boxed{{{answer}}}");
            prop_assert_eq!(parse_prediction(text.as_bytes()), Ok(answer.as_bytes()));
            prop_assert!(answer_closed(text.as_bytes()));
        }
    }
}
