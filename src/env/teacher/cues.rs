//! Readers keyed on a worksheet's words: the right side after subtracting from both sides of an
//! equation, the step a progression is said to grow by, and the numerators of a fraction sum.
//! Each checks the number the text writes against its own working and offers no thought where they
//! differ.

use super::columns::{add, mul, sub};
use super::{TeacherThought, int_after, integer_lists};

/// The number after the first ` = ` of the line that starts its search at `from`: (where ` = `
/// starts, the number, where it ends).
fn result_on_line(text: &str, from: usize) -> Option<(usize, i64, usize)> {
    let line_end = from + text[from..].find('\n').unwrap_or(text.len() - from);
    let eq = from + text[from..line_end].find(" = ")?;
    let (z, zend) = int_after(text.as_bytes(), eq + 3)?;
    Some((eq, z, zend))
}

/// The right side of the last ` = R` before byte `at`: the equation being solved.
fn right_side_before(text: &str, at: usize) -> Option<i64> {
    let req = text[..at].rfind(" = ")?;
    int_after(text.as_bytes(), req + 3).map(|(r, _)| r)
}

/// `Subtract B from both sides: $… = Z`, Z worked out as `R - B` from the last `… = R` before it (the
/// equation being solved): `1 - 2: borrow, 11 - 2 = 9; 5 - 1 - 2 = 2; 1; so 129`.
pub fn both_sides_thoughts(text: &str) -> Vec<TeacherThought> {
    const CUE: &str = "Subtract ";
    let mut out = vec![];
    for (at, _) in text.match_indices(CUE) {
        let Some((y, yend)) = int_after(text.as_bytes(), at + CUE.len()) else {
            continue;
        };
        if !text[yend..].starts_with(" from both sides: $") {
            continue;
        }
        let (Some((eq, z, zend)), Some(x)) =
            (result_on_line(text, yend), right_side_before(text, at))
        else {
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

/// `Each term is D more than the one before`, D worked out as the second term minus the first of the
/// arithmetic progression listed before it: `8 - 5: 8 - 5 = 3; so 3`.
pub fn step_thoughts(text: &str) -> Vec<TeacherThought> {
    const CUE: &str = "Each term is";
    let mut out = vec![];
    for (at, _) in text.match_indices(CUE) {
        let start = at + CUE.len();
        let Some((d, dend)) = text[start..]
            .strip_prefix(' ')
            .and_then(|_| int_after(text.as_bytes(), start + 1))
        else {
            continue;
        };
        if !text[dend..].starts_with(" more than the one before") {
            continue;
        }
        let Some(list) = integer_lists(&text[..at]).pop() else {
            continue;
        };
        let v: Vec<i64> = list.iter().map(|t| t.0).collect();
        if d <= 0 || v[0] < 0 || !v.windows(2).all(|w| w[1] - w[0] == d) {
            continue;
        }
        out.push(TeacherThought {
            start,
            end: dend,
            text: format!("{} - {}: {}", v[1], v[0], sub(v[1], v[0])),
        });
    }
    out
}

const FRAC: &str = "\\frac{";

/// `\frac{N}{D}` at the start of `s`: (N, D, the bytes it takes).
fn fraction(s: &str) -> Option<(i64, i64, usize)> {
    let body = s.strip_prefix(FRAC)?;
    let (n, rest) = body.split_once("}{")?;
    let (d, _) = rest.split_once('}')?;
    let len = FRAC.len() + n.len() + 2 + d.len() + 1;
    Some((n.parse().ok()?, d.parse().ok()?, len))
}

/// The two fractions of `\frac{A}{B} + \frac{C}{D}` ending at byte `end`: ((A, B), (C, D)).
fn two_fractions_before(text: &str, end: usize) -> Option<((i64, i64), (i64, i64))> {
    let left = &text[..end];
    let plus = left.rfind(" + ")?;
    let first = left[..plus].rfind(FRAC)?;
    let (a, b, la) = fraction(&left[first..plus])?;
    let (c, d, lc) = fraction(&left[plus + 3..])?;
    (first + la == plus && plus + 3 + lc == end).then_some(((a, b), (c, d)))
}

/// The numerator of a sum of two fractions over one denominator, `\frac{X}{D} + \frac{Y}{D} =
/// \frac{Z}{D}`, worked out as `X + Y`.
pub fn fraction_sum_thoughts(text: &str) -> Vec<TeacherThought> {
    let mut out = vec![];
    for (eq, _) in text.match_indices(" = \\frac{") {
        let Some((z, dz, _)) = fraction(&text[eq + 3..]) else {
            continue;
        };
        let Some(((x, dx), (y, dy))) = two_fractions_before(text, eq) else {
            continue;
        };
        if dx != dy || dz != dx || x < 0 || y < 0 || x + y != z {
            continue;
        }
        let start = eq + 3 + FRAC.len();
        out.push(TeacherThought {
            start,
            end: start + z.to_string().len(),
            text: add(x, y),
        });
    }
    out
}

/// The numerators of two fractions brought to a common denominator, `\frac{A}{B} + \frac{C}{D} =
/// \frac{X}{M} + \frac{Y}{M}`: X worked out as `A` times the factor `M = B × k`, Y likewise: `4
/// \times 9 = 36; 3 \times 9 = 27; so 27`.
pub fn fraction_part_thoughts(text: &str) -> Vec<TeacherThought> {
    let mut out = vec![];
    for (eq, _) in text.match_indices(" = \\frac{") {
        let Some(((a, b), (c, d))) = two_fractions_before(text, eq) else {
            continue;
        };
        let x_at = eq + 3;
        let Some((x, m, lx)) = fraction(&text[x_at..]) else {
            continue;
        };
        let Some(y_at) = text[x_at + lx..].strip_prefix(" + ").map(|_| x_at + lx + 3) else {
            continue;
        };
        let Some((y, my, _)) = fraction(&text[y_at..]) else {
            continue;
        };
        if m != my || a < 0 || c < 0 || b <= 0 || d <= 0 || m % b != 0 || m % d != 0 {
            continue;
        }
        for (num, den, written, at) in [(a, b, x, x_at), (c, d, y, y_at)] {
            let k = m / den;
            if k >= 100 || num * k != written {
                continue;
            }
            let start = at + FRAC.len();
            out.push(TeacherThought {
                start,
                end: start + written.to_string().len(),
                text: format!("{den} \\times {k} = {m}; {}", mul(num, k)),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans<'a>(text: &'a str, t: &[TeacherThought]) -> Vec<&'a str> {
        t.iter().map(|t| &text[t.start..t.end]).collect()
    }

    #[test]
    fn the_right_side_after_subtracting_is_worked() {
        let text = "Solve $4x + 22 = 150$.\nSubtract 22 from both sides: $4x = 128$.\n";
        let t = both_sides_thoughts(text);
        assert_eq!(spans(text, &t), [" 128"]);
        assert!(
            t[0].text.starts_with("150 - 22: ") && t[0].text.ends_with("so 128"),
            "{:?}",
            t[0]
        );
        assert!(
            both_sides_thoughts("Solve $4x + 22 = 150$.\nSubtract 22 from both sides: $4x = 127$.")
                .is_empty()
        );
    }

    #[test]
    fn a_progressions_step_is_worked_from_its_first_two_terms() {
        let text = "the sequence $5, 8, 11, 14, \\ldots$.\nEach term is 3 more than the one before";
        let t = step_thoughts(text);
        assert_eq!(spans(text, &t), [" 3"]);
        assert_eq!(t[0].text, "8 - 5: 8 - 5 = 3; so 3");
        assert!(
            step_thoughts("$5, 8, 11, 14$.\nEach term is 4 more than the one before").is_empty()
        );
        assert!(step_thoughts("Each term is 4 more than the one before").is_empty());
    }

    #[test]
    fn fraction_numerators_and_sums_are_worked() {
        let text = "So $\\frac{1}{2} + \\frac{1}{3} = \\frac{3}{6} + \\frac{2}{6} = \\frac{5}{6}$.";
        let t = fraction_sum_thoughts(text);
        assert_eq!(spans(text, &t), ["5"]);
        assert_eq!(t[0].text, "3 + 2 = 5; so 5");
        let t = fraction_part_thoughts(text);
        assert_eq!(spans(text, &t), ["3", "2"]);
        assert_eq!(t[0].text, "2 \\times 3 = 6; 1 \\times 3 = 3; so 3");
        assert_eq!(t[1].text, "3 \\times 2 = 6; 1 \\times 2 = 2; so 2");

        let text = "$\\frac{3}{4} + \\frac{5}{6} = \\frac{18}{24} + \\frac{20}{24}$";
        let t = fraction_part_thoughts(text);
        assert_eq!(spans(text, &t), ["18", "20"]);
        assert!(t[0].text.starts_with("4 \\times 6 = 24; ") && t[0].text.ends_with("so 18"));

        assert!(fraction_sum_thoughts("$\\frac{3}{6} + \\frac{2}{7} = \\frac{5}{6}$").is_empty());
        // A numerator the text gets wrong has no thought; the other keeps its own.
        let text = "$\\frac{1}{2} + \\frac{1}{3} = \\frac{4}{6} + \\frac{2}{6}$";
        assert_eq!(spans(text, &fraction_part_thoughts(text)), ["2"]);
    }
}
