//! The column arithmetic the solver writes: addition with carries, subtraction with borrows and long
//! multiplication by one or two digits, least significant digit first, each step one fact a small
//! model can learn.

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
pub(super) fn solve(x: i64, op: char, y: i64) -> Option<(String, i64)> {
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
pub(super) fn add(x: i64, y: i64) -> String {
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
pub(super) fn sub(x: i64, y: i64) -> String {
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
pub(super) fn mul(x: i64, y: i64) -> String {
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
