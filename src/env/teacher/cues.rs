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
    const CUE: &str = "Each term is ";
    let lists = integer_lists(text);
    let mut out = vec![];
    for (at, _) in text.match_indices(CUE) {
        // The span starts at the space before D, as the corpus's tokens do.
        let start = at + CUE.len() - 1;
        let Some((d, dend)) = int_after(text.as_bytes(), start + 1) else {
            continue;
        };
        if !text[dend..].starts_with(" more than the one before") {
            continue;
        }
        // The last list that ends before the cue.
        let Some(list) = lists.iter().rev().find(|l| l[l.len() - 1].2 <= at) else {
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

/// A `\frac{N}{D}` of integers in a text: N, D, the bytes N takes, and where the fraction ends.
struct Fraction {
    num: i64,
    den: i64,
    num_span: (usize, usize),
    end: usize,
}

/// The fraction that starts at byte `at` of `text`, its numerator and denominator read as
/// [`int_after`] reads an integer.
fn fraction(text: &str, at: usize) -> Option<Fraction> {
    if !text[at..].starts_with(FRAC) {
        return None;
    }
    let b = text.as_bytes();
    let n_at = at + FRAC.len();
    let (num, n_end) = int_after(b, n_at)?;
    if !text[n_end..].starts_with("}{") {
        return None;
    }
    let (den, d_end) = int_after(b, n_end + 2)?;
    (b.get(d_end) == Some(&b'}')).then_some(Fraction {
        num,
        den,
        num_span: (n_at, n_end),
        end: d_end + 1,
    })
}

/// The two fractions of `\frac{A}{B} + \frac{C}{D}` that ends at byte `end`.
fn two_fractions_before(text: &str, end: usize) -> Option<(Fraction, Fraction)> {
    let plus = text[..end].rfind(" + ")?;
    let first = fraction(text, text[..plus].rfind(FRAC)?)?;
    let second = fraction(text, plus + 3)?;
    (first.end == plus && second.end == end).then_some((first, second))
}

/// The numerator of a sum of two fractions over one denominator, `\frac{X}{D} + \frac{Y}{D} =
/// \frac{Z}{D}`, worked out as `X + Y`.
pub fn fraction_sum_thoughts(text: &str) -> Vec<TeacherThought> {
    let mut out = vec![];
    for (eq, _) in text.match_indices(" = \\frac{") {
        let Some(z) = fraction(text, eq + 3) else {
            continue;
        };
        let Some((x, y)) = two_fractions_before(text, eq) else {
            continue;
        };
        if x.den != y.den || z.den != x.den || x.num < 0 || y.num < 0 || x.num + y.num != z.num {
            continue;
        }
        out.push(TeacherThought {
            start: z.num_span.0,
            end: z.num_span.1,
            text: add(x.num, y.num),
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
        let Some((ab, cd)) = two_fractions_before(text, eq) else {
            continue;
        };
        let Some(x) = fraction(text, eq + 3) else {
            continue;
        };
        let Some(y) = text[x.end..]
            .starts_with(" + ")
            .then(|| fraction(text, x.end + 3))
            .flatten()
        else {
            continue;
        };
        let m = x.den;
        let (a, b, c, d) = (ab.num, ab.den, cd.num, cd.den);
        if y.den != m || a < 0 || c < 0 || b <= 0 || d <= 0 || m % b != 0 || m % d != 0 {
            continue;
        }
        for (given, written) in [(ab, x), (cd, y)] {
            let k = m / given.den;
            if k >= 100 || given.num * k != written.num {
                continue;
            }
            out.push(TeacherThought {
                start: written.num_span.0,
                end: written.num_span.1,
                text: format!("{} \\times {k} = {m}; {}", given.den, mul(given.num, k)),
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
