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
//! geometric progression from its third on ([`sequence_thoughts`]), the right side after `Subtract
//! B from both sides` ([`both_sides_thoughts`]) and the numerator of a sum of fractions over one
//! denominator ([`fraction_sum_thoughts`]). Where the text's number is right, it writes out the column
//! arithmetic that computes it, least significant digit first, with the carries or borrows named: the
//! work a direct next-token prediction of the number's first digit has to do in one pass.

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
pub const SOLVER: &str = "column arithmetic of: X op Y = Z, progressions from their third term, the \
                          right side after subtracting from both sides, fraction sums";

/// Every thought the built-in solver offers for `text`: [`arithmetic_thoughts`], then
/// [`sequence_thoughts`], [`both_sides_thoughts`] and [`fraction_sum_thoughts`], one per span (the
/// first found where two cover the same bytes), ordered by where they start.
pub fn solver_thoughts(text: &str) -> Vec<TeacherThought> {
    let mut all = arithmetic_thoughts(text);
    for more in [
        sequence_thoughts(text),
        both_sides_thoughts(text),
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

/// `Subtract B from both sides: $… = Z`, Z worked out as `R - B` from the last `… = R` before it (the
/// equation being solved): `1 - 2: borrow, 11 - 2 = 9; 5 - 1 - 2 = 2; 1; so 129`.
pub fn both_sides_thoughts(text: &str) -> Vec<TeacherThought> {
    const CUE: &str = "Subtract ";
    let b = text.as_bytes();
    let mut out = vec![];
    for (at, _) in text.match_indices(CUE) {
        let Some((y, yend)) = int_after(b, at + CUE.len()) else {
            continue;
        };
        if !text[yend..].starts_with(" from both sides: $") {
            continue;
        }
        let line_end = yend + text[yend..].find('\n').unwrap_or(text.len() - yend);
        let Some(eq) = text[yend..line_end].find(" = ").map(|e| yend + e) else {
            continue;
        };
        let Some((z, zend)) = int_after(b, eq + 3) else {
            continue;
        };
        let Some(req) = text[..at].rfind(" = ") else {
            continue;
        };
        let Some((x, _)) = int_after(b, req + 3) else {
            continue;
        };
        if x < y || y < 0 || x - y != z {
            continue;
        }
        out.push(TeacherThought {
            start: eq + 2,
            end: zend,
            text: format!("{x} - {y}: {}", sub(x, y)),
        });
    }
    out
}

/// The numerator of a sum of two fractions over one denominator, `\frac{X}{D} + \frac{Y}{D} =
/// \frac{Z}{D}`, worked out as `X + Y`.
pub fn fraction_sum_thoughts(text: &str) -> Vec<TeacherThought> {
    const FRAC: &str = "\\frac{";
    let b = text.as_bytes();
    let mut out = vec![];
    for (eq, _) in text.match_indices(" = \\frac{") {
        let zstart = eq + 3 + FRAC.len();
        let Some((z, zend)) = int_after(b, zstart) else {
            continue;
        };
        // Walk back over `\frac{X}{D} + \frac{Y}{D}`.
        let parse = |s: &str| -> Option<(i64, i64)> {
            let s = s.strip_prefix(FRAC)?.strip_suffix('}')?;
            let (n, d) = s.split_once("}{")?;
            Some((n.parse().ok()?, d.parse().ok()?))
        };
        let left = &text[..eq];
        let Some(plus) = left.rfind(" + ") else {
            continue;
        };
        let Some(first) = left[..plus].rfind(FRAC) else {
            continue;
        };
        let (Some((x, dx)), Some((y, dy))) = (parse(&left[first..plus]), parse(&left[plus + 3..]))
        else {
            continue;
        };
        let dz = text[zend..]
            .strip_prefix("}{")
            .and_then(|r| r.split('}').next()?.parse::<i64>().ok());
        if dx != dy || dz != Some(dx) || x < 0 || y < 0 || x + y != z {
            continue;
        }
        out.push(TeacherThought {
            start: zstart,
            end: zend,
            text: add(x, y),
        });
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

fn digits(v: i64) -> Vec<i64> {
    // Least significant first.
    let mut v = v.abs();
    let mut d = vec![v % 10];
    v /= 10;
    while v > 0 {
        d.push(v % 10);
        v /= 10;
    }
    d
}

/// The worked thought and the result of `x op y`, or `None` for a case the solver does not write out.
fn solve(x: i64, op: char, y: i64) -> Option<(String, i64)> {
    match op {
        '+' if x >= 0 && y >= 0 => Some((add(x, y), x + y)),
        '-' if x >= 0 && y >= 0 => {
            if x >= y {
                Some((sub(x, y), x - y))
            } else {
                Some((
                    format!("{x} < {y}, so the result is negative: {}", sub(y, x)),
                    x - y,
                ))
            }
        }
        'x' if x >= 0 && (0..100).contains(&y) => Some((mul(x, y), x * y)),
        _ => None,
    }
}

/// Column addition: `7 + 5 = 12, carry 1; 4 + 1 + 1 = 6; 1; so 162`.
fn add(x: i64, y: i64) -> String {
    let (dx, dy) = (digits(x), digits(y));
    let mut steps = vec![];
    let mut carry = 0;
    for i in 0..dx.len().max(dy.len()) {
        let (a, b) = (dx.get(i).copied(), dy.get(i).copied());
        let s = a.unwrap_or(0) + b.unwrap_or(0) + carry;
        let mut terms: Vec<String> = [a, b].iter().flatten().map(|d| d.to_string()).collect();
        if carry > 0 {
            terms.push(carry.to_string());
        }
        carry = s / 10;
        steps.push(if terms.len() == 1 {
            terms[0].clone()
        } else if carry > 0 {
            format!("{} = {s}, carry {carry}", terms.join(" + "))
        } else {
            format!("{} = {s}", terms.join(" + "))
        });
    }
    if carry > 0 {
        steps.push(carry.to_string());
    }
    format!("{}; so {}", steps.join("; "), x + y)
}

/// Column subtraction of `x ≥ y`: `2 - 7: borrow, 12 - 7 = 5; 3 - 1 - 1 = 1; so 15`.
fn sub(x: i64, y: i64) -> String {
    let (dx, dy) = (digits(x), digits(y));
    let mut steps = vec![];
    let mut borrow = 0;
    for (i, &a) in dx.iter().enumerate() {
        let b = dy.get(i).copied().unwrap_or(0);
        let top = a - borrow;
        let lhs = match (dy.get(i).is_some(), borrow > 0) {
            (true, true) => format!("{a} - {b} - 1"),
            (true, false) => format!("{a} - {b}"),
            (false, true) => format!("{a} - 1"),
            (false, false) => format!("{a}"),
        };
        if top < b {
            steps.push(format!(
                "{lhs}: borrow, {} = {}",
                lhs_borrowed(a, b, borrow),
                top + 10 - b
            ));
            borrow = 1;
        } else {
            steps.push(if lhs == a.to_string() {
                lhs
            } else {
                format!("{lhs} = {}", top - b)
            });
            borrow = 0;
        }
    }
    format!("{}; so {}", steps.join("; "), x - y)
}

fn lhs_borrowed(a: i64, b: i64, borrow: i64) -> String {
    if borrow > 0 {
        format!("1{a} - {b} - 1")
    } else {
        format!("1{a} - {b}")
    }
}

/// Long multiplication by a one- or two-digit `y`: each digit of `x` times `y`'s ones digit with the
/// carries, then (for two digits) the tens row and the sum.
fn mul(x: i64, y: i64) -> String {
    let row = |m: i64| -> String {
        let mut steps = vec![];
        let mut carry = 0;
        for d in digits(x) {
            let p = d * m + carry;
            steps.push(if carry > 0 {
                format!("{d} \\times {m} + {carry} = {p}")
            } else {
                format!("{d} \\times {m} = {p}")
            });
            carry = p / 10;
        }
        steps.join(", ")
    };
    if y < 10 {
        return format!("{}; so {}", row(y), x * y);
    }
    let (t, o) = (y / 10, y % 10);
    format!(
        "{x} \\times {o}: {}, gives {}; {x} \\times {t}0: {}, gives {}0; {} + {}0 = {}; so {}",
        row(o),
        x * o,
        row(t),
        x * t,
        x * o,
        x * t,
        x * y,
        x * y
    )
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
        assert_eq!(t.text, "7 + 5 = 12, carry 1; 4 + 1 + 1 = 6; 1; so 162");
    }

    #[test]
    fn column_work_for_each_operation() {
        assert_eq!(
            one("$23 \\times 5 = 115$").text,
            "3 \\times 5 = 15, 2 \\times 5 + 1 = 11; so 115"
        );
        assert_eq!(
            one("$32 - 17 = 15$").text,
            "2 - 7: borrow, 12 - 7 = 5; 3 - 1 - 1 = 1; so 15"
        );
        assert_eq!(
            one("$7 - 23 = -16$").text,
            "7 < 23, so the result is negative: 3 - 7: borrow, 13 - 7 = 6; 2 - 1 = 1; so 16"
        );
        assert!(
            one("$14 \\times 12 = 168$")
                .text
                .ends_with("28 + 140 = 168; so 168")
        );
        assert_eq!(
            one("$99 + 1 = 100$").text,
            "9 + 1 = 10, carry 1; 9 + 1 = 10, carry 1; 1; so 100"
        );
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
            "the ratio is 3; then 7 \\times 3 = 21, 2 \\times 3 + 2 = 8; so 81"
        );
        // Neither rule holds for the whole list, or too few terms: nothing.
        assert!(sequence_thoughts("1, 2, 4, 7").is_empty());
        assert!(sequence_thoughts("5, 10").is_empty());
        // A number inside a word does not start a list.
        assert!(sequence_thoughts("x1, 2, 3").is_empty());
    }

    #[test]
    fn the_right_side_after_subtracting_and_a_fraction_sum_are_worked() {
        let text = "Solve $4x + 22 = 150$.\nSubtract 22 from both sides: $4x = 128$.\n";
        let t = both_sides_thoughts(text);
        assert_eq!(t.len(), 1);
        assert_eq!(&text[t[0].start..t[0].end], " 128");
        assert!(
            t[0].text.starts_with("150 - 22: ") && t[0].text.ends_with("so 128"),
            "{:?}",
            t[0]
        );
        assert!(
            both_sides_thoughts("Solve $4x + 22 = 150$.\nSubtract 22 from both sides: $4x = 127$.")
                .is_empty()
        );

        let text = "So $\\frac{1}{2} + \\frac{1}{3} = \\frac{3}{6} + \\frac{2}{6} = \\frac{5}{6}$.";
        let t = fraction_sum_thoughts(text);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(&text[t[0].start..t[0].end], "5");
        assert_eq!(t[0].text, "3 + 2 = 5; so 5");
        assert!(fraction_sum_thoughts("$\\frac{3}{6} + \\frac{2}{7} = \\frac{5}{6}$").is_empty());
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
        // of its four readers finds something in the built-in worksheets.
        let (mut seq, mut sides, mut fracs) = (0, 0, 0);
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
            seq += sequence_thoughts(d).len();
            sides += both_sides_thoughts(d).len();
            fracs += fraction_sum_thoughts(d).len();
        }
        assert!(seq > 0 && sides > 0 && fracs > 0, "{seq} {sides} {fracs}");
    }
}
