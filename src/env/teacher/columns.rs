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

/// One column of an addition: the digits `a` and `b` (either may be absent) and the carry in, as
/// two-operand steps, the carry added in a step of its own (`4 + 1 = 5, 5 + 1 = 6`), where a single
/// `4 + 1 + 1 = 6` asked a small model to add three numbers at once. Returns the step and the carry
/// out.
fn column(a: Option<i64>, b: Option<i64>, carry: i64) -> (String, i64) {
    let (mut text, mut s) = match (a, b) {
        (Some(a), Some(b)) => (format!("{a} + {b} = {}", a + b), a + b),
        (Some(d), None) | (None, Some(d)) => (d.to_string(), d),
        (None, None) => (String::new(), 0),
    };
    if carry > 0 {
        text = if text.is_empty() {
            carry.to_string()
        } else if a.is_some() && b.is_some() {
            format!("{text}, {s} + {carry} = {}", s + carry)
        } else {
            format!("{s} + {carry} = {}", s + carry)
        };
        s += carry;
    }
    if s >= 10 {
        text.push_str(&format!(", carry {}", s / 10));
    }
    (text, s / 10)
}

/// Column addition: `7 + 5 = 12, carry 1; 4 + 1 = 5, 5 + 1 = 6; 1; so 162`.
pub(super) fn add(x: i64, y: i64) -> String {
    let (dx, dy) = (digits(x), digits(y));
    let mut steps = vec![];
    let mut carry = 0;
    for i in 0..dx.len().max(dy.len()) {
        let (step, c) = column(dx.get(i).copied(), dy.get(i).copied(), carry);
        steps.push(step);
        carry = c;
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

/// Long multiplication by a one- or two-digit `y`. A row multiplies each digit of `x` by one digit
/// of `y`, least significant first, each a table fact (`7 \times 9 = 63; 4 \times 9 = 36`), then
/// adds the products' digits in columns: a product's ones digit and the tens digit of the product
/// before it (`3; 6 + 6 = 12, carry 1; 3 + 1 = 4; so 423`), each step one addition of two numbers.
/// (Adding the carry inside a product, `4 \times 9 + 6 = 42` or `36 + 6 = 42`, asked a small model
/// for a two-digit sum in one pass: it got those steps right a third of the time.) By two digits:
/// the ones row, the tens row (`x \times 10` is `x` with a 0 written after it) and their sum in
/// columns.
pub(super) fn mul(x: i64, y: i64) -> String {
    let row = |m: i64| -> String {
        let ds = digits(x);
        let products: Vec<i64> = ds.iter().map(|d| d * m).collect();
        let mut steps: Vec<String> = ds
            .iter()
            .zip(&products)
            .map(|(d, p)| format!("{d} \\times {m} = {p}"))
            .collect();
        if products.len() == 1 {
            return steps.join("; ");
        }
        let mut carry = 0;
        for k in 0..=products.len() {
            let ones = products.get(k).map(|p| p % 10);
            let tens = k
                .checked_sub(1)
                .map(|j| products[j] / 10)
                .filter(|&t| t > 0);
            let (step, c) = column(ones, tens, carry);
            if !step.is_empty() {
                steps.push(step);
            }
            carry = c;
        }
        steps.join("; ")
    };
    if y < 10 {
        return format!("{}; so {}", row(y), x * y);
    }
    let (t, o) = (y / 10, y % 10);
    if o == 0 {
        return if t == 1 {
            format!("{x} \\times 10 = {x}0; so {}", x * y)
        } else {
            format!("{x} \\times {t}0: {}; so {}", row(t), x * y)
        };
    }
    let tens = if t == 1 {
        format!("{x} \\times 10 = {x}0")
    } else {
        format!("{x} \\times {t}0: {}, so {}0", row(t), x * t)
    };
    if o == 1 {
        return format!(
            "{x} \\times 1 = {x}; {tens}; {x} + {}0: {}",
            x * t,
            add(x, x * t * 10)
        );
    }
    format!(
        "{x} \\times {o}: {}, so {}; {tens}; {} + {}0: {}",
        row(o),
        x * o,
        x * o,
        x * t,
        add(x * o, x * t * 10)
    )
}
