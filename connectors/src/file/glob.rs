//! File-name patterns: `*` (any run of characters), `?` (one character),
//! `[abc]`, `[a-z]` and `[!abc]` (one character in, or not in, a set).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// A checked file-name pattern, such as `*.json` or `order-??.xml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Char(char),
    AnyChar,
    AnyRun,
    Set {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Char(x) => *x == c,
            Token::AnyChar => true,
            Token::AnyRun => false,
            Token::Set { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
        }
    }
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("the pattern is empty".to_owned());
        }
        if text.contains(['/', '\\']) {
            return Err(format!(
                "\"{text}\" is matched against file names only: it cannot contain '/' or '\\'"
            ));
        }
        let mut tokens = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    if tokens.last() != Some(&Token::AnyRun) {
                        tokens.push(Token::AnyRun);
                    }
                }
                '?' => tokens.push(Token::AnyChar),
                '[' => {
                    let negated = chars.next_if(|&c| c == '!' || c == '^').is_some();
                    let mut ranges = Vec::new();
                    let mut closed = false;
                    // A ']' first in the set is a member, not its end.
                    let mut first = true;
                    while let Some(c) = chars.next() {
                        if c == ']' && !first {
                            closed = true;
                            break;
                        }
                        first = false;
                        match chars.next_if(|&n| n == '-') {
                            Some(_) => match chars.next_if(|&n| n != ']') {
                                Some(hi) if hi >= c => ranges.push((c, hi)),
                                Some(hi) => {
                                    return Err(format!(
                                        "\"{text}\": the range {c}-{hi} is backwards"
                                    ));
                                }
                                None => {
                                    ranges.push((c, c));
                                    ranges.push(('-', '-'));
                                }
                            },
                            None => ranges.push((c, c)),
                        }
                    }
                    if !closed {
                        return Err(format!("\"{text}\": '[' is not closed by ']'"));
                    }
                    tokens.push(Token::Set { negated, ranges });
                }
                c => tokens.push(Token::Char(c)),
            }
        }
        Ok(Pattern {
            text: text.to_owned(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the whole of `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        let tokens = &self.tokens;
        let (mut t, mut n) = (0, 0);
        // Where to resume if the run matched by the last `*` must grow.
        let mut resume: Option<(usize, usize)> = None;
        while n < name.len() {
            match tokens.get(t) {
                Some(Token::AnyRun) => {
                    resume = Some((t + 1, n));
                    t += 1;
                }
                Some(tok) if tok.matches(name[n]) => {
                    t += 1;
                    n += 1;
                }
                _ => match resume {
                    Some((after_star, start)) => {
                        t = after_star;
                        n = start + 1;
                        resume = Some((after_star, start + 1));
                    }
                    None => return false,
                },
            }
        }
        tokens[t..].iter().all(|tok| *tok == Token::AnyRun)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Pattern, D::Error> {
        let s = String::deserialize(d)?;
        Pattern::parse(&s).map_err(|e| de::Error::custom(format!("`pattern`: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    fn m(p: &str, name: &str) -> bool {
        Pattern::parse(p).unwrap().matches(name)
    }

    #[test]
    fn patterns_match_whole_names() {
        assert!(m("*.json", "order.json"));
        assert!(m("*.json", ".json"));
        assert!(!m("*.json", "order.json.tmp"));
        assert!(!m("*.json", "order.xml"));
        assert!(m("order-??.xml", "order-12.xml"));
        assert!(!m("order-??.xml", "order-123.xml"));
        assert!(m("*", "anything"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(m("a*b*c", "abc"));
        assert!(!m("a*b*c", "abcd"));
        assert!(m("*a*a*a*", "banana-a"));
        assert!(m("[ab]-*.csv", "b-1.csv"));
        assert!(!m("[ab]-*.csv", "c-1.csv"));
        assert!(m("[!ab]-*.csv", "c-1.csv"));
        assert!(m("day-[0-9][0-9].txt", "day-07.txt"));
        assert!(!m("day-[0-9][0-9].txt", "day-7x.txt"));
        assert!(m("[]x]", "]"));
        assert!(m("é*", "été"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(
            Pattern::parse("in/*.json")
                .unwrap_err()
                .contains("cannot contain '/'")
        );
        assert!(Pattern::parse("[ab").unwrap_err().contains("not closed"));
        assert!(Pattern::parse("[z-a]").unwrap_err().contains("backwards"));
        assert!(Pattern::parse("").is_err());
    }
}
