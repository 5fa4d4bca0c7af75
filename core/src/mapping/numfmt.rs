//! Number patterns for `format:` and `format_number()`.
//!
//! A pattern is written the way a spreadsheet user would: `0` a digit that
//! is always written, `#` a decimal digit written only when it is not a
//! trailing zero, `,` in the integer part groups thousands, `.` the decimal
//! point. `0` → `1988`; `0.00` → `39060.00`; `0.###` → `7260.5`;
//! `#,##0.00` → `39,060.00`; `000000` → `090111`. Rounding is half to
//! even (banker's rounding), exact on decimals.

use rust_decimal::{Decimal, RoundingStrategy};

use crate::value::Str;

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NumFormat {
    min_int: usize,
    group: bool,
    min_frac: u32,
    max_frac: u32,
}

impl NumFormat {
    pub fn parse(pattern: &str) -> Result<NumFormat, String> {
        let (int, frac) = match pattern.split_once('.') {
            Some((i, f)) => (i, f),
            None => (pattern, ""),
        };
        if int.is_empty() || !int.chars().all(|c| matches!(c, '0' | '#' | ',')) {
            return Err(format!(
                "number pattern \"{pattern}\": the part before '.' must be made of 0, # and ',' (e.g. \"0.00\" or \"#,##0.00\")"
            ));
        }
        if int.trim_start_matches(['#', ',']).contains('#') {
            return Err(format!(
                "number pattern \"{pattern}\": '#' cannot follow '0' before the decimal point"
            ));
        }
        if !frac.chars().all(|c| matches!(c, '0' | '#'))
            || frac.trim_start_matches('0').contains('0')
        {
            return Err(format!(
                "number pattern \"{pattern}\": after '.' write 0 for each decimal always shown, then # for each optional one (e.g. \"0.00\", \"0.0##\")"
            ));
        }
        if frac.len() > 28 {
            return Err(format!("number pattern \"{pattern}\": at most 28 decimals"));
        }
        Ok(NumFormat {
            min_int: int.chars().filter(|&c| c == '0').count(),
            group: int.contains(','),
            min_frac: frac.chars().filter(|&c| c == '0').count() as u32,
            max_frac: frac.len() as u32,
        })
    }

    pub fn apply(&self, value: Decimal) -> Str {
        let mut v =
            value.round_dp_with_strategy(self.max_frac, RoundingStrategy::MidpointNearestEven);
        if v.is_zero() {
            // no "-0.00"
            v.set_sign_positive(true);
        }
        if self.min_frac != self.max_frac {
            // Optional decimals: drop the trailing zeros first.
            v = v.normalize();
        }
        if v.scale() < self.min_frac {
            v.rescale(self.min_frac);
        }
        if !self.group && self.min_int == 1 {
            // The common patterns ("0", "0.00"): the decimal's own text.
            return crate::value::decimal_text(v);
        }
        let text = v.abs().to_string();
        let (int, frac) = match text.split_once('.') {
            Some((i, f)) => (i, f),
            None => (text.as_str(), ""),
        };
        let int = if int == "0" && self.min_int == 0 {
            ""
        } else {
            int
        };
        let mut out = Str::with_capacity(text.len() + 8);
        if v.is_sign_negative() {
            out.push('-');
        }
        let pad = self.min_int.saturating_sub(int.len());
        let digits: String = std::iter::repeat_n('0', pad).chain(int.chars()).collect();
        if self.group {
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i).is_multiple_of(3) {
                    out.push(',');
                }
                out.push(c);
            }
        } else {
            out.push_str(&digits);
        }
        if !frac.is_empty() {
            out.push('.');
            out.push_str(frac);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn f(pattern: &str, v: &str) -> Str {
        NumFormat::parse(pattern)
            .unwrap()
            .apply(Decimal::from_str(v).unwrap())
    }

    #[test]
    fn formats_money_and_weights() {
        assert_eq!(f("0.00", "39060"), "39060.00");
        assert_eq!(f("0.00", "22260.0000"), "22260.00");
        assert_eq!(f("0.000", "12428.5"), "12428.500");
        assert_eq!(f("0", "1987500"), "1987500");
        assert_eq!(f("0", "1987500.00"), "1987500");
        assert_eq!(f("#,##0.00", "1234567.891"), "1,234,567.89");
        assert_eq!(f("#,##0", "999"), "999");
        assert_eq!(f("000000", "90111"), "090111");
        assert_eq!(f("0.###", "7260.500"), "7260.5");
        assert_eq!(f("0.0#", "3"), "3.0");
        assert_eq!(f("#.00", "0.5"), ".50");
        assert_eq!(f("0.00", "-0.001"), "0.00");
        assert_eq!(f("0.00", "-12.5"), "-12.50");
    }

    #[test]
    fn rounds_half_to_even() {
        assert_eq!(f("0.00", "0.125"), "0.12");
        assert_eq!(f("0.00", "0.135"), "0.14");
        assert_eq!(f("0", "2.5"), "2");
        assert_eq!(f("0", "3.5"), "4");
        assert_eq!(f("0.00", "1.0051"), "1.01");
    }

    #[test]
    fn refuses_unclear_patterns() {
        for bad in ["", "0.0.0", "x", "0#", "0.#0", "0,00.00a"] {
            assert!(NumFormat::parse(bad).is_err(), "{bad}");
        }
    }
}
