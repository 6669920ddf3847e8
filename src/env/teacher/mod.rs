//! Teacher thoughts: worked reasoning that a corpus offers for a span of a document, for the warm-up to
//! teach before RL (the way R1-Distill's traces were distilled from a stronger solver).
//!
//! A [`TeacherThought`] covers the bytes `start..end` of a document: a position whose next token starts
//! inside the span may be taught `CONTEXT<think>TEXT</think>\boxed{REST}`, where `REST` is the span's
//! bytes from that position on. A position without one (all of ordinary prose) gets the generic
//! thought.
//!
//! The built-in corpus's solver, [`solver_thoughts`], reads every `X + Y = Z`, `X - Y = Z` and
//! `X \times Y = Z` of integers in a text ([`arithmetic_thoughts`]), every term of an arithmetic or
//! geometric progression from its third on ([`sequence_thoughts`]), and, keyed on a worksheet's words
//! (`cues.rs`), a progression's stated step, the right side after subtracting from both sides of an
//! equation, and the numerators of a fraction sum and the sum. Where the text's number is right, it
//! writes out the column arithmetic that computes it (`columns.rs`), least significant digit first,
//! with the carries or borrows named: the work a direct next-token prediction of the number's first
//! digit has to do in one pass. (Long division after `Divide both sides by A`, tried, was not kept:
//! the built-in model got its steps right 30% of the time, and reasoning mode fell below standard
//! mode there.)

mod columns;
mod cues;

use columns::{add, mul, solve, sub};
pub use cues::{both_sides_thoughts, fraction_part_thoughts, fraction_sum_thoughts, step_thoughts};

/// A worked thought for the bytes `start..end` of a document (the span includes the space before a
/// number, as the corpus's tokens do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeacherThought {
    pub start: usize,
    pub end: usize,
    pub text: String,
}

/// The built-in solver: a thought for each correct integer `X op Y = Z` in `text` (op: `+`, `-`,
/// `\times`), covering ` Z`. Results the text gets wrong, and operands too long to work by hand
/// (over 6 digits), get no thought.
pub fn arithmetic_thoughts(text: &str) -> Vec<TeacherThought> {
    let b = text.as_bytes();
    let mut out = vec![];
    for (eq, _) in text.match_indices(" = ") {
        let Some((y, ystart)) = int_before(b, eq) else {
            continue;
        };
        let left = &text[..ystart];
        let (op, opstart) = if let Some(s) = left.strip_suffix(" + ") {
            ('+', s.len())
        } else if let Some(s) = left.strip_suffix(" - ") {
            ('-', s.len())
        } else if let Some(s) = left.strip_suffix(" \\times ") {
            ('x', s.len())
        } else {
            continue;
        };
        let Some((x, _)) = int_before(b, opstart) else {
            continue;
        };
        let Some((z, zend)) = int_after(b, eq + 3) else {
            continue;
        };
        let Some(work) = solve(x, op, y) else {
            continue;
        };
        if work.1 != z {
            continue;
        }
        out.push(TeacherThought {
            start: eq + 2,
            end: zend,
            text: work.0,
        });
    }
    out
}

/// What the built-in solver reads, recorded with every built-in model (`bootstrap.json`), so that a
/// model taught by an earlier solver is not taken for one taught by this one: change it with the
/// solver.
pub const SOLVER: &str = "column arithmetic of: X op Y = Z, progressions from their third term and \
                          their step, the right side after subtracting from both sides, fraction \
                          numerators over a common denominator and their sums; carries added in \
                          steps of their own, products' digits summed in columns";

/// Every thought the built-in solver offers for `text`: [`arithmetic_thoughts`], then
/// `sequence_thoughts`, `step_thoughts`, `both_sides_thoughts`, `fraction_part_thoughts` and
/// `fraction_sum_thoughts`, one per span (the first found where two cover the same bytes), ordered
/// by where they start.
pub fn solver_thoughts(text: &str) -> Vec<TeacherThought> {
    let mut all = arithmetic_thoughts(text);
    for more in [
        sequence_thoughts(text),
        step_thoughts(text),
        both_sides_thoughts(text),
        fraction_part_thoughts(text),
        fraction_sum_thoughts(text),
    ] {
        for t in more {
            if !all.iter().any(|u| t.start < u.end && u.start < t.end) {
                all.push(t);
            }
        }
    }
    all.sort_by_key(|t| t.start);
    all
}

/// The terms of a list of integers written `a, b, c, …` (at least three), as (value, start of the
/// span with the space before it, end) each.
fn integer_lists(text: &str) -> Vec<Vec<(i64, usize, usize)>> {
    let b = text.as_bytes();
    let mut lists = vec![];
    let mut i = 0;
    while i < b.len() {
        // A list starts at a number that does not continue a word or another number.
        if !b[i].is_ascii_digit()
            || (i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.'))
        {
            i += 1;
            continue;
        }
        let mut terms = vec![];
        let mut at = i;
        let mut span_start = if i > 0 && b[i - 1] == b' ' { i - 1 } else { i };
        while let Some((v, end)) = int_after(b, at) {
            terms.push((v, span_start, end));
            if b.get(end..end + 2) == Some(b", ".as_slice())
                && b.get(end + 2).is_some_and(|c| c.is_ascii_digit())
            {
                span_start = end + 1;
                at = end + 2;
            } else {
                at = end;
                break;
            }
        }
        if terms.len() >= 3 {
            lists.push(terms);
        }
        i = at.max(i + 1);
    }
    lists
}

/// Arithmetic and geometric progressions in a list (`26, 31, 36, 41`; `3, 9, 27, 81`): from the third
/// term on, each is worked out from the two before it, e.g. for `41`: `the step: 1 - 6: borrow, 11 - 6
/// = 5; 3 - 2 - 1 = 0; so 5; then 6 + 5 = 11, carry 1; 3 + 1 = 4; so 41`. The rule must hold for the
/// whole list; terms are non-negative, the step positive, the ratio 2 to 9.
pub fn sequence_thoughts(text: &str) -> Vec<TeacherThought> {
    let mut out = vec![];
    for terms in integer_lists(text) {
        let v: Vec<i64> = terms.iter().map(|t| t.0).collect();
        if v.iter().any(|&x| x < 0) {
            continue;
        }
        let d = v[1] - v[0];
        let r = if v[0] > 0 && v[1] % v[0] == 0 {
            v[1] / v[0]
        } else {
            0
        };
        let arithmetic = d > 0 && v.windows(2).all(|w| w[1] - w[0] == d);
        let geometric = (2..10).contains(&r) && v.windows(2).all(|w| w[1] == w[0] * r);
        if !(arithmetic || geometric) {
            continue;
        }
        for (k, &(_, start, end)) in terms.iter().enumerate().skip(2) {
            let text = if arithmetic {
                format!("the step: {}; then {}", sub(v[1], v[0]), add(v[k - 1], d))
            } else {
                format!("the ratio is {r}; then {}", mul(v[k - 1], r))
            };
            out.push(TeacherThought { start, end, text });
        }
    }
    out
}

/// The integer that ends at byte `end` (digits, optionally after a `-` that does not follow a digit),
/// and where it starts.
fn int_before(b: &[u8], end: usize) -> Option<(i64, usize)> {
    let mut s = end;
    while s > 0 && b[s - 1].is_ascii_digit() {
        s -= 1;
    }
    if s == end || end - s > 6 {
        return None;
    }
    let mut v: i64 = std::str::from_utf8(&b[s..end]).ok()?.parse().ok()?;
    if s > 0 && b[s - 1] == b'-' && (s < 2 || !b[s - 2].is_ascii_alphanumeric()) {
        s -= 1;
        v = -v;
    }
    Some((v, s))
}

/// The integer that starts at byte `start`, and where it ends; the next byte must not continue it
/// (a digit, a decimal point followed by a digit, or a letter).
fn int_after(b: &[u8], start: usize) -> Option<(i64, usize)> {
    let neg = b.get(start) == Some(&b'-');
    let d0 = start + neg as usize;
    let mut e = d0;
    while e < b.len() && b[e].is_ascii_digit() {
        e += 1;
    }
    if e == d0 || e - d0 > 7 {
        return None;
    }
    if b.get(e).is_some_and(|c| c.is_ascii_alphabetic())
        || (b.get(e) == Some(&b'.') && b.get(e + 1).is_some_and(|c| c.is_ascii_digit()))
    {
        return None;
    }
    let v: i64 = std::str::from_utf8(&b[d0..e]).ok()?.parse().ok()?;
    Some((if neg { -v } else { v }, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> TeacherThought {
        let t = arithmetic_thoughts(text);
        assert_eq!(t.len(), 1, "{text}: {t:?}");
        t[0].clone()
    }

    #[test]
    fn spans_cover_the_result_with_its_space() {
        let text = "Then $47 + 115 = 162$.\n";
        let t = one(text);
        assert_eq!(&text[t.start..t.end], " 162");
        assert_eq!(
            t.text,
            "7 + 5 = 12, carry 1; 4 + 1 = 5, 5 + 1 = 6; 1; so 162"
        );
    }

    #[test]
    fn column_work_for_each_operation() {
        assert_eq!(
            one("$23 \\times 5 = 115$").text,
            "3 \\times 5 = 15; 2 \\times 5 = 10; 5; 0 + 1 = 1; 1; so 115"
        );
        assert_eq!(
            one("$32 - 17 = 15$").text,
            "2 - 7: borrow, 12 - 7 = 5; 3 - 1 - 1 = 1; so 15"
        );
        assert_eq!(
            one("$7 - 23 = -16$").text,
            "7 < 23, so the result is negative: 3 - 7: borrow, 13 - 7 = 6; 2 - 1 = 1; so 16"
        );
        assert_eq!(
            one("$14 \\times 12 = 168$").text,
            "14 \\times 2: 4 \\times 2 = 8; 1 \\times 2 = 2; 8; 2, so 28; 14 \\times 10 = 140; \
             28 + 140: 8 + 0 = 8; 2 + 4 = 6; 1; so 168"
        );
        assert_eq!(
            one("$47 \\times 9 = 423$").text,
            "7 \\times 9 = 63; 4 \\times 9 = 36; 3; 6 + 6 = 12, carry 1; 3 + 1 = 4; so 423"
        );
        assert_eq!(
            one("$56 \\times 11 = 616$").text,
            "56 \\times 1 = 56; 56 \\times 10 = 560; 56 + 560: 6 + 0 = 6; 5 + 6 = 11, carry 1; \
             5 + 1 = 6; so 616"
        );
        assert_eq!(
            one("$38 \\times 20 = 760$").text,
            "38 \\times 20: 8 \\times 2 = 16; 3 \\times 2 = 6; 6; 6 + 1 = 7; so 760"
        );
        assert_eq!(
            one("$99 + 1 = 100$").text,
            "9 + 1 = 10, carry 1; 9 + 1 = 10, carry 1; 1; so 100"
        );
    }

    #[test]
    fn additions_and_products_take_two_numbers_a_step() {
        // The form the built-in model learns best: no sum of three numbers (`4 + 1 + 1`) and no
        // carry inside a product (`4 \times 9 + 6`), anywhere the solver writes.
        let mut steps = 0;
        for d in crate::env::generate_corpus(40, 7) {
            for t in solver_thoughts(&d) {
                for step in t.text.split([';', ',']) {
                    let Some((lhs, _)) = step.split_once(" = ") else {
                        continue;
                    };
                    let lhs = lhs.rsplit(':').next().unwrap();
                    let (plus, times) =
                        (lhs.matches(" + ").count(), lhs.matches(" \\times ").count());
                    if plus + times > 0 {
                        assert_eq!(plus + times + lhs.matches(" - ").count(), 1, "{}", t.text);
                        steps += 1;
                    }
                }
            }
        }
        assert!(steps > 400, "{steps}");
    }

    #[test]
    fn wrong_or_unsupported_statements_get_no_thought() {
        assert!(arithmetic_thoughts("$2 + 2 = 5$").is_empty());
        assert!(arithmetic_thoughts("$2 + x = 5$").is_empty());
        assert!(arithmetic_thoughts("$3x + 2 = 11$").is_empty());
        assert!(arithmetic_thoughts("$2 + 2 = 4.5$").is_empty());
        assert!(arithmetic_thoughts("no arithmetic here = at all").is_empty());
        assert!(arithmetic_thoughts(" = = ").is_empty());
    }

    #[test]
    fn progressions_are_worked_from_their_third_term() {
        let text = "Find the next term of $26, 31, 36, 41, \\ldots$. Powers: 3, 9, 27, 81.";
        let t = sequence_thoughts(text);
        let spans: Vec<&str> = t.iter().map(|t| &text[t.start..t.end]).collect();
        assert_eq!(spans, [" 36", " 41", " 27", " 81"]);
        assert_eq!(
            t[1].text,
            "the step: 1 - 6: borrow, 11 - 6 = 5; 3 - 2 - 1 = 0; so 5; \
             then 6 + 5 = 11, carry 1; 3 + 1 = 4; so 41"
        );
        assert_eq!(
            t[3].text,
            "the ratio is 3; then 7 \\times 3 = 21; 2 \\times 3 = 6; 1; 6 + 2 = 8; so 81"
        );
        // Neither rule holds for the whole list, or too few terms: nothing.
        assert!(sequence_thoughts("1, 2, 4, 7").is_empty());
        assert!(sequence_thoughts("5, 10").is_empty());
        // A number inside a word does not start a list.
        assert!(sequence_thoughts("x1, 2, 3").is_empty());
    }

    #[test]
    fn every_correct_statement_of_the_builtin_corpus_is_solved_right() {
        let docs = crate::env::generate_corpus(40, 7);
        let mut n = 0;
        for d in &docs {
            for t in arithmetic_thoughts(d) {
                let z: i64 = d[t.start..t.end].trim().parse().unwrap();
                assert!(t.text.ends_with(&format!("so {}", z.abs())), "{}", t.text);
                n += 1;
            }
        }
        // Every worksheet states at least one sum, difference or product.
        assert!(n >= docs.len(), "{n} thoughts in {} documents", docs.len());
        // The whole solver: every span it covers holds the number its thought ends with, and each
        // of its readers finds something in the built-in worksheets.
        let mut found = [0; 5];
        for d in &docs {
            let all = solver_thoughts(d);
            assert!(
                all.windows(2).all(|w| w[0].end <= w[1].start),
                "spans overlap"
            );
            for t in &all {
                let z: i64 = d[t.start..t.end].trim().parse().unwrap();
                assert!(t.text.ends_with(&format!("so {}", z.abs())), "{}", t.text);
            }
            for (n, reader) in found.iter_mut().zip([
                sequence_thoughts,
                step_thoughts,
                both_sides_thoughts,
                fraction_part_thoughts,
                fraction_sum_thoughts,
            ]) {
                *n += reader(d).len();
            }
        }
        assert!(found.iter().all(|&n| n > 0), "{found:?}");
    }
}
