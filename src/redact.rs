//! Credentials out of what is recorded of a refused input: every source's `rejected` record
//! keeps the first bytes of what it refused, passed through [`redact`] first.

/// The first bytes of a refused body as recorded, with the values of what looks like a credential
/// replaced by `[redacted]`: a JSON string under a key such as `password`, `token`, `secret`,
/// `api_key`, `authorization`; `key=value` (a form, a query) and `key: value` (YAML, a pasted
/// header) with such a key; `Bearer …`/`Basic …`. A sender that posts a form or a config to the
/// wrong place must not have its secrets kept forever in a log that cannot be edited without
/// breaking its chain. (Size and SHA-256 stay those of the body as sent.)
pub fn redact(prefix: &[u8]) -> Vec<u8> {
    use regex::bytes::Regex;
    use std::sync::LazyLock;
    const KEY: &str = r"(?i:[a-z0-9_.-]*(?:passw(?:or)?d|pwd|secret|token|api[_-]?key|authorization|credentials?|private[_-]?key|cookie)[a-z0-9_.-]*)";
    static PATTERNS: LazyLock<[(Regex, &'static str); 4]> = LazyLock::new(|| {
        let re = |p: String| Regex::new(&p).expect("a valid pattern");
        [
            // "password": "…" (also cut off at the end of the prefix)
            (re(format!(r#"("{KEY}"\s*:\s*")(?:(?-u:[^"\\])|\\(?-u:.))*("|\\?\z)"#)), "${1}[redacted]${2}"),
            // password=…
            (re(format!(r#"(^|[&?;,\s])({KEY}=)(?-u:[^&;,\s])*"#)), "${1}${2}[redacted]"),
            // password: … (unquoted, to the end of the line)
            (re(format!(r#"(?m)(^|[\s{{,])({KEY}[ \t]*:[ \t]*)[^\s"'{{\[][^\r\n]*"#)), "${1}${2}[redacted]"),
            // Bearer … / Basic …
            (re(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+".to_string()), "${1}${2}[redacted]"),
        ]
    });
    let mut out = prefix.to_vec();
    for (re, with) in PATTERNS.iter() {
        if re.is_match(&out) {
            out = re.replace_all(&out, with.as_bytes()).into_owned();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_refused_body_are_redacted_before_it_is_recorded() {
        let cases: [(&[u8], &str); 9] = [
            (br#"{"user":"u","password":"hunter2","n":1}"#, r#"{"user":"u","password":"[redacted]","n":1}"#),
            (br#"{"db": {"Api_Key" : "k\"e\\y", "x": "y"}}"#, r#"{"db": {"Api_Key" : "[redacted]", "x": "y"}}"#),
            (br#"{"client_secret":"cut off at the end of the pref"#, r#"{"client_secret":"[redacted]"#),
            (b"user=u&password=hunter2&next=/", "user=u&password=[redacted]&next=/"),
            (b"GET /?access_token=abc123 HTTP/1.1", "GET /?access_token=[redacted] HTTP/1.1"),
            (b"Authorization: Bearer abc.def-ghi\r\nX: y", "Authorization: [redacted]\r\nX: y"),
            (b"curl -H 'X: Basic dXNlcjpwYXNz'", "curl -H 'X: Basic [redacted]'"),
            (b"kafka:\n  sasl.password: p4ss\n  other: 1\n", "kafka:\n  sasl.password: [redacted]\n  other: 1\n"),
            (
                br#"{"alerts":[{"labels":{"alertname":"TokenExpiry"}}]}"#,
                r#"{"alerts":[{"labels":{"alertname":"TokenExpiry"}}]}"#,
            ),
        ];
        for (body, want) in cases {
            assert_eq!(String::from_utf8_lossy(&redact(body)), want);
        }
        // Invalid UTF-8 in a value is redacted too, byte by byte.
        assert_eq!(redact(b"{\"password\":\"\xff\xfe\"}"), b"{\"password\":\"[redacted]\"}");
    }
}
