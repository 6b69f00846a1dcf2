//! Credentials: where a secret comes from ([`Secret`], read when the server starts), and a URL
//! as it may be shown without the credentials it may carry.

use std::path::PathBuf;

/// Where a secret comes from; read when the server starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Secret {
    File(PathBuf),
    Env(String),
}

impl Secret {
    pub fn read(&self) -> Result<String, String> {
        match self {
            Secret::File(p) => std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| format!("cannot read secret file {}: {e}", p.display())),
            Secret::Env(v) => std::env::var(v).map_err(|_| format!("environment variable {v} is not set")),
        }
    }
}

/// A URL as it may be shown (logs, errors, audit records): without its userinfo
/// (`https://user:pass@host` becomes `https://host`), and the userinfo as written in the URL
/// (`user:pass@`), so messages of libraries that print the URL can be scrubbed of it.
pub fn url_without_userinfo(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else { return (url.to_string(), None) };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = rest[..=at].to_string();
            (format!("{scheme}://{}", &rest[at + 1..]), Some(userinfo))
        }
        None => (url.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_userinfo() {
        assert_eq!(
            url_without_userinfo("https://am:s3cr3t@prom.example:9090/api?x=a@b"),
            ("https://prom.example:9090/api?x=a@b".to_string(), Some("am:s3cr3t@".to_string()))
        );
        assert_eq!(
            url_without_userinfo("http://collector:4318/v1/traces"),
            ("http://collector:4318/v1/traces".into(), None)
        );
        assert_eq!(url_without_userinfo("not a url"), ("not a url".into(), None));
    }
}
