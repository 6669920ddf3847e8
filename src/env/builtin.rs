//! The built-in corpus: seeded, deterministic math worksheets written by `rpt` itself, so that a fresh
//! machine can run the whole method with nothing downloaded.
//!
//! Each document is a worksheet of worked solutions with LaTeX: arithmetic, fractions, powers, linear
//! equations and arithmetic sequences. Some next tokens need computation (the number after `=`), most
//! are boilerplate (`Step 1.`, `\frac{`, `$`), which is what makes the entropy filter worth having.

use crate::model::Rng;

fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.below(xs.len())]
}

fn range(rng: &mut Rng, lo: i64, hi: i64) -> i64 {
    lo + rng.below((hi - lo + 1) as usize) as i64
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a.abs() } else { gcd(b, a % b) }
}

fn arithmetic(rng: &mut Rng) -> String {
    let a = range(rng, 2, 99);
    let b = range(rng, 2, 99);
    let c = range(rng, 2, 12);
    match rng.below(3) {
        0 => format!(
            "Compute ${a} + {b} \\times {c}$.\nMultiplication comes first: ${b} \\times {c} = {}$.\nThen ${a} + {} = {}$.\nSo the answer is ${}$.\n",
            b * c,
            b * c,
            a + b * c,
            a + b * c
        ),
        1 => format!(
            "Compute ${a} - {b}$.\nWe subtract: ${a} - {b} = {}$.\nSo the answer is ${}$.\n",
            a - b,
            a - b
        ),
        _ => format!(
            "Compute $({a} + {b}) \\times {c}$.\nFirst the bracket: ${a} + {b} = {}$.\nThen ${} \\times {c} = {}$.\nSo the answer is ${}$.\n",
            a + b,
            a + b,
            (a + b) * c,
            (a + b) * c
        ),
    }
}

fn fractions(rng: &mut Rng) -> String {
    let (b, d) = (range(rng, 2, 9), range(rng, 2, 9));
    let (a, c) = (range(rng, 1, b), range(rng, 1, d));
    let num = a * d + c * b;
    let den = b * d;
    let g = gcd(num, den);
    let simplified = if den / g == 1 {
        format!("{}", num / g)
    } else {
        format!("\\frac{{{}}}{{{}}}", num / g, den / g)
    };
    format!(
        "Add $\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{d}}}$.\nThe common denominator is ${b} \\times {d} = {den}$.\nSo $\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{d}}} = \\frac{{{}}}{{{den}}} + \\frac{{{}}}{{{den}}} = \\frac{{{num}}}{{{den}}}$.\nSimplified, the sum is ${simplified}$.\n",
        a * d,
        c * b
    )
}

fn powers(rng: &mut Rng) -> String {
    let base = range(rng, 2, 9);
    let e = range(rng, 2, 5);
    let mut steps = vec![base.to_string()];
    let mut v = base;
    for _ in 1..e {
        v *= base;
        steps.push(v.to_string());
    }
    format!(
        "Evaluate ${base}^{{{e}}}$.\nWe multiply {base} by itself {e} times: {}.\nTherefore ${base}^{{{e}}} = {v}$.\n",
        steps.join(", ")
    )
}

fn equation(rng: &mut Rng) -> String {
    let a = range(rng, 2, 9);
    let x = range(rng, 1, 20);
    let b = range(rng, 1, 30);
    let rhs = a * x + b;
    let var = pick(rng, &["x", "y", "n", "t"]);
    format!(
        "Solve ${a}{var} + {b} = {rhs}$.\nSubtract {b} from both sides: ${a}{var} = {}$.\nDivide both sides by {a}: ${var} = {x}$.\nCheck: ${a} \\times {x} + {b} = {rhs}$.\n",
        rhs - b
    )
}

fn sequence(rng: &mut Rng) -> String {
    let start = range(rng, 1, 30);
    let step = range(rng, 2, 11);
    let terms: Vec<String> = (0..5).map(|i| (start + i * step).to_string()).collect();
    format!(
        "Find the next term of the sequence ${}, \\ldots$.\nEach term is {step} more than the one before, since ${} - {} = {step}$.\nSo the next term is ${} + {step} = {}$.\n",
        terms.join(", "),
        terms[1],
        terms[0],
        terms[4],
        start + 5 * step
    )
}

/// `n` worksheets from `seed`. The same arguments always give the same documents.
pub fn generate_corpus(n: usize, seed: u64) -> Vec<String> {
    (0..n)
        .map(|d| {
            let mut rng = Rng::new(Rng::derive(&[seed, d as u64]));
            let problems = 3 + rng.below(3);
            let mut doc = format!(
                "{}\n\n",
                pick(
                    &mut rng,
                    &["Worksheet", "Practice problems", "Exercises", "Homework"]
                )
            );
            for p in 1..=problems {
                let body = match rng.below(5) {
                    0 => arithmetic(&mut rng),
                    1 => fractions(&mut rng),
                    2 => powers(&mut rng),
                    3 => equation(&mut rng),
                    _ => sequence(&mut rng),
                };
                doc.push_str(&format!("Problem {p}. {body}\n"));
            }
            doc
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_seed_dependent() {
        assert_eq!(generate_corpus(5, 1), generate_corpus(5, 1));
        assert_ne!(generate_corpus(5, 1), generate_corpus(5, 2));
        // Document d does not depend on how many are generated.
        assert_eq!(generate_corpus(3, 1)[2], generate_corpus(7, 1)[2]);
    }

    #[test]
    fn the_arithmetic_written_is_correct() {
        for doc in generate_corpus(50, 3) {
            for line in doc.lines() {
                // "We subtract: $a - b = c$."
                if let Some(rest) = line.strip_prefix("We subtract: $") {
                    let expr = rest.trim_end_matches("$.");
                    let (lhs, c) = expr.split_once(" = ").unwrap();
                    let (a, b) = lhs.split_once(" - ").unwrap();
                    assert_eq!(
                        a.parse::<i64>().unwrap() - b.parse::<i64>().unwrap(),
                        c.parse::<i64>().unwrap(),
                        "{line}"
                    );
                }
            }
            assert!(doc.contains("Problem 1."));
        }
    }
}
