//! Teacher thoughts: worked reasoning that a corpus offers for a span of a document, for the warm-up to
//! teach before RL (the way R1-Distill's traces were distilled from a stronger solver).
//!
//! A [`TeacherThought`] covers the bytes `start..end` of a document: a position whose next token starts
//! inside the span may be taught `CONTEXT<think>TEXT</think>\boxed{REST}`, where `REST` is the span's
//! bytes from that position on. A corpus that offers none (plain text, JSONL) gets the generic thought.
//!
//! The built-in corpus's solver, [`arithmetic_thoughts`], reads every `X + Y = Z`, `X - Y = Z` and
//! `X \times Y = Z` of integers in a text and, where `Z` is right, writes out the column arithmetic
//! that computes `Z`, least significant digit first, with the carries or borrows named: the work a
//! direct next-token prediction of `Z`'s first digit has to do in one pass.

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
    let mut from = 0;
    while let Some(k) = text[from..].find(" = ") {
        let eq = from + k;
        from = eq + 3;
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
    }
}
