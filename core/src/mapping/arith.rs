//! A native fast path for the commonest computed values: arithmetic on
//! fields, such as `round(unit_price * quantity, 2)`.
//!
//! An expression made only of names, `+`, `-`, `*`, parentheses and
//! `round(x, N)` (N a whole-number literal) is also compiled to a small
//! tree that runs without the script engine. It gives the same result as
//! rhai or declines: when a name is missing or is not a number, or a
//! result overflows, [`Arith::eval`] returns `None` and the expression runs
//! in rhai, which then reports the error in its own words. Everything else
//! (division, literals in arithmetic, other functions) is rhai's alone.

use rust_decimal::{Decimal, RoundingStrategy};

/// A compiled arithmetic expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arith {
    /// The value bound to the expression's name at this index.
    Name(usize),
    Add(Box<Arith>, Box<Arith>),
    Sub(Box<Arith>, Box<Arith>),
    Mul(Box<Arith>, Box<Arith>),
    Neg(Box<Arith>),
    /// `round(x, N)`: half to even, as rhai's `round` here.
    Round(Box<Arith>, u32),
}

impl Arith {
    /// Compiles `text` if it is in the subset; `index` gives the binding
    /// index of a name, or `None` when the name may not be used natively.
    pub fn compile(text: &str, index: &dyn Fn(&str) -> Option<usize>) -> Option<Arith> {
        let tokens = tokens(text)?;
        let mut p = Parser {
            tokens: &tokens,
            at: 0,
            index,
        };
        let tree = p.sum()?;
        (p.at == tokens.len()).then_some(tree)
    }

    /// Runs the tree on the bound numbers (`value(i)`: the number bound at
    /// index `i`, `None` when it is missing or not a number).
    pub fn eval(&self, value: &mut dyn FnMut(usize) -> Option<Decimal>) -> Option<Decimal> {
        match self {
            Arith::Name(i) => value(*i),
            Arith::Add(a, b) => a.eval(value)?.checked_add(b.eval(value)?),
            Arith::Sub(a, b) => a.eval(value)?.checked_sub(b.eval(value)?),
            Arith::Mul(a, b) => a.eval(value)?.checked_mul(b.eval(value)?),
            Arith::Neg(a) => Some(-a.eval(value)?),
            Arith::Round(a, dp) => Some(
                a.eval(value)?
                    .round_dp_with_strategy(*dp, RoundingStrategy::MidpointNearestEven),
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token<'a> {
    Name(&'a str),
    Int(u32),
    Op(u8),
}

fn tokens(text: &str) -> Option<Vec<Token<'_>>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Token::Name(&text[start..i]));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            // `2.5`, `2e3`, `2_000`: rhai's, not ours.
            if i < b.len() && (b[i] == b'.' || b[i] == b'_' || b[i].is_ascii_alphabetic()) {
                return None;
            }
            out.push(Token::Int(text[start..i].parse().ok()?));
        } else if matches!(c, b'+' | b'-' | b'*' | b'(' | b')' | b',') {
            // `**`, `+=`, `->` and the like are not in the subset.
            if matches!(c, b'+' | b'-' | b'*')
                && matches!(b.get(i + 1), Some(b'*' | b'=' | b'>' | b'+' | b'-'))
            {
                return None;
            }
            out.push(Token::Op(c));
            i += 1;
        } else {
            return None;
        }
    }
    Some(out)
}

struct Parser<'t, 'a> {
    tokens: &'t [Token<'a>],
    at: usize,
    index: &'t dyn Fn(&str) -> Option<usize>,
}

impl Parser<'_, '_> {
    fn peek(&self) -> Option<&Token<'_>> {
        self.tokens.get(self.at)
    }

    fn eat(&mut self, op: u8) -> bool {
        if self.peek() == Some(&Token::Op(op)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// sum := product (('+' | '-') product)*
    fn sum(&mut self) -> Option<Arith> {
        let mut left = self.product()?;
        loop {
            if self.eat(b'+') {
                left = Arith::Add(Box::new(left), Box::new(self.product()?));
            } else if self.eat(b'-') {
                left = Arith::Sub(Box::new(left), Box::new(self.product()?));
            } else {
                return Some(left);
            }
        }
    }

    /// product := unary ('*' unary)*
    fn product(&mut self) -> Option<Arith> {
        let mut left = self.unary()?;
        while self.eat(b'*') {
            left = Arith::Mul(Box::new(left), Box::new(self.unary()?));
        }
        Some(left)
    }

    /// unary := '-' unary | atom
    fn unary(&mut self) -> Option<Arith> {
        if self.eat(b'-') {
            return Some(Arith::Neg(Box::new(self.unary()?)));
        }
        self.atom()
    }

    /// atom := name | '(' sum ')' | 'round' '(' sum ',' int ')'
    fn atom(&mut self) -> Option<Arith> {
        match self.peek()?.clone() {
            Token::Op(b'(') => {
                self.at += 1;
                let inner = self.sum()?;
                self.eat(b')').then_some(inner)
            }
            Token::Name("round") if self.tokens.get(self.at + 1) == Some(&Token::Op(b'(')) => {
                self.at += 2;
                let x = self.sum()?;
                if !self.eat(b',') {
                    return None;
                }
                let Some(Token::Int(dp)) = self.peek().cloned() else {
                    return None;
                };
                self.at += 1;
                (dp <= 28 && self.eat(b')')).then(|| Arith::Round(Box::new(x), dp))
            }
            Token::Name(name) => {
                // A name followed by `(` is a call; `.` or `[` never tokenise.
                if self.tokens.get(self.at + 1) == Some(&Token::Op(b'(')) {
                    return None;
                }
                let i = (self.index)(name)?;
                self.at += 1;
                Some(Arith::Name(i))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &str) -> Option<usize> {
        ["a", "b", "c"].iter().position(|x| *x == n)
    }

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn the_subset_compiles_and_the_rest_does_not() {
        assert_eq!(
            Arith::compile("round(a * b, 2)", &names),
            Some(Arith::Round(
                Box::new(Arith::Mul(
                    Box::new(Arith::Name(0)),
                    Box::new(Arith::Name(1))
                )),
                2
            ))
        );
        assert!(Arith::compile("a + b * c - -a", &names).is_some());
        assert!(Arith::compile("(a + b) * c", &names).is_some());
        for other in [
            "a / b",
            "a * 2",
            "a * 2.5",
            "round(a)",
            "round(a, b)",
            "upper(a)",
            "a.b",
            "a[0]",
            "a ** b",
            "a == b",
            "x * a",
            "round(a, 29)",
            "(a",
            "a b",
            "",
            "a +",
            "\"a\" + b",
        ] {
            assert_eq!(Arith::compile(other, &names), None, "{other}");
        }
    }

    #[test]
    fn precedence_and_rounding() {
        let tree = Arith::compile("round(a + b * c, 1) - -a", &names).unwrap();
        let values = [d("1.25"), d("2"), d("0.5")];
        // 1.25 + 1 = 2.25 -> 2.2 (half to even), + 1.25 = 3.45
        assert_eq!(tree.eval(&mut |i| Some(values[i])), Some(d("3.45")));
        let tree = Arith::compile("round(a * b, 2)", &names).unwrap();
        assert_eq!(
            tree.eval(&mut |i| Some([d("0.125"), d("1")][i])),
            Some(d("0.12"))
        );
        assert_eq!(
            tree.eval(&mut |i| Some([d("0.135"), d("1")][i])),
            Some(d("0.14"))
        );
    }

    #[test]
    fn missing_values_and_overflow_decline() {
        let tree = Arith::compile("a * b", &names).unwrap();
        assert_eq!(tree.eval(&mut |i| (i == 0).then(|| d("2"))), None);
        assert_eq!(tree.eval(&mut |_| Some(Decimal::MAX)), None);
    }
}
