//! Alertmanager's matcher syntax: `name="value"`, `name!=value`, `name=~"regex"`, `name!~regex`.
//! Regexes are anchored, as in Alertmanager; a missing label matches as the empty string.

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    NotEq,
    Re,
    NotRe,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::NotEq => "!=",
            Op::Re => "=~",
            Op::NotRe => "!~",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: Op,
    pub value: String,
    regex: Option<Regex>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MatcherError {
    #[error("`{0}` is not a matcher: expected name=value, name!=value, name=~regex or name!~regex")]
    Syntax(String),
    #[error("`{0}`: label name must match [a-zA-Z_][a-zA-Z0-9_]*")]
    Name(String),
    #[error("`{input}`: invalid regex: {message}")]
    Regex { input: String, message: String },
    #[error("`{0}`: unterminated quoted value")]
    Quote(String),
}

impl Matcher {
    pub fn parse(input: &str) -> Result<Matcher, MatcherError> {
        let text = input.trim();
        let (idx, op) = find_op(text).ok_or_else(|| MatcherError::Syntax(input.to_string()))?;
        let name = text[..idx].trim();
        let raw = text[idx + op.as_str().len()..].trim();
        if !valid_label_name(name) {
            return Err(MatcherError::Name(input.to_string()));
        }
        let value = unquote(raw).ok_or_else(|| MatcherError::Quote(input.to_string()))?;
        let regex = match op {
            Op::Re | Op::NotRe => Some(
                Regex::new(&format!("^(?:{value})$"))
                    .map_err(|e| MatcherError::Regex { input: input.to_string(), message: e.to_string() })?,
            ),
            Op::Eq | Op::NotEq => None,
        };
        Ok(Matcher { name: name.to_string(), op, value, regex })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_value(labels.get(&self.name).map(String::as_str))
    }

    /// Whether the label's value (`None`: the label is absent, which matches as "") matches.
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        let v = value.unwrap_or("");
        match (self.op, &self.regex) {
            (Op::Eq, _) => v == self.value,
            (Op::NotEq, _) => v != self.value,
            (Op::Re, Some(re)) => re.is_match(v),
            (Op::NotRe, Some(re)) => !re.is_match(v),
            (Op::Re | Op::NotRe, None) => false,
        }
    }

    /// The alert name this matcher pins, if it is `alertname="X"` (used to index rules).
    pub fn exact_alertname(&self) -> Option<&str> {
        (self.name == "alertname" && self.op == Op::Eq).then_some(self.value.as_str())
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op.as_str(), self.value)
    }
}

/// Parse a list of matchers; also accepts one `{a="b", c=~"d"}` selector per entry.
pub fn parse_all(inputs: &[String]) -> Result<Vec<Matcher>, MatcherError> {
    let mut out = Vec::new();
    for input in inputs {
        let t = input.trim();
        if let Some(inner) = t.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            for part in split_top_level(inner) {
                if !part.trim().is_empty() {
                    out.push(Matcher::parse(&part)?);
                }
            }
        } else {
            out.push(Matcher::parse(t)?);
        }
    }
    Ok(out)
}

fn find_op(text: &str) -> Option<(usize, Op)> {
    let bytes = text.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'!' if bytes.get(i + 1) == Some(&b'=') => return Some((i, Op::NotEq)),
            b'!' if bytes.get(i + 1) == Some(&b'~') => return Some((i, Op::NotRe)),
            b'=' if bytes.get(i + 1) == Some(&b'~') => return Some((i, Op::Re)),
            b'=' => return Some((i, Op::Eq)),
            b'"' => return None,
            _ => {}
        }
    }
    None
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn unquote(raw: &str) -> Option<String> {
    let Some(inner) = raw.strip_prefix('"') else {
        return Some(raw.to_string());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            }
        } else if c == '"' {
            return None;
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// Split on commas that are not inside double quotes.
fn split_top_level(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in s.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn equality_with_and_without_quotes() {
        let l = labels(&[("alertname", "CanaryHighErrorRate")]);
        assert!(Matcher::parse(r#"alertname="CanaryHighErrorRate""#).unwrap().matches(&l));
        assert!(Matcher::parse("alertname = CanaryHighErrorRate").unwrap().matches(&l));
        assert!(!Matcher::parse("alertname=Other").unwrap().matches(&l));
        assert!(Matcher::parse("alertname!=Other").unwrap().matches(&l));
    }

    #[test]
    fn regexes_are_anchored() {
        let l = labels(&[("severity", "critical")]);
        assert!(Matcher::parse(r#"severity=~"crit.*""#).unwrap().matches(&l));
        assert!(!Matcher::parse(r#"severity=~"crit""#).unwrap().matches(&l), "anchored: partial match fails");
        assert!(Matcher::parse(r#"severity!~"warn|info""#).unwrap().matches(&l));
        assert!(!Matcher::parse(r#"severity!~"critical|page""#).unwrap().matches(&l));
    }

    #[test]
    fn missing_label_matches_empty_value() {
        let l = labels(&[]);
        assert!(Matcher::parse(r#"team="""#).unwrap().matches(&l));
        assert!(!Matcher::parse("team=~.+").unwrap().matches(&l));
    }

    #[test]
    fn quoted_values_may_contain_operators_and_escapes() {
        let m = Matcher::parse(r#"summary="a=b, \"c\"""#).unwrap();
        assert_eq!(m.value, r#"a=b, "c""#);
    }

    #[test]
    fn selector_braces_split_on_unquoted_commas() {
        let ms = parse_all(&[r#"{alertname="A", msg="x,y", severity=~"p.*"}"#.to_string()]).unwrap();
        assert_eq!(ms.len(), 3);
        assert_eq!(ms[1].value, "x,y");
        assert_eq!(ms[0].exact_alertname(), Some("A"));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(matches!(Matcher::parse("justtext"), Err(MatcherError::Syntax(_))));
        assert!(matches!(Matcher::parse("9x=1"), Err(MatcherError::Name(_))));
        assert!(matches!(Matcher::parse("a=~\"(\""), Err(MatcherError::Regex { .. })));
        assert!(matches!(Matcher::parse("a=\"open"), Err(MatcherError::Quote(_))));
    }
}
