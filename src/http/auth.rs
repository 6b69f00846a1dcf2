//! Optional authentication the way Alertmanager's `http_config` sends it: a bearer token or basic
//! auth. Credentials are compared as SHA-256 digests in constant time.

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// `auth:` of backstop.yaml: the credentials a sender must present (none: no authentication).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthConfig {
    pub bearer: Option<Secret>,
    pub basic: Option<(String, Secret)>,
}

#[derive(Clone, Default)]
pub struct Auth {
    /// Digests of the accepted `Authorization` header values; empty means no authentication.
    /// Shared: the router clones it with its state for every request.
    accepted: std::sync::Arc<[[u8; 32]]>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth({} credentials)", self.accepted.len())
    }
}

fn digest(v: &[u8]) -> [u8; 32] {
    Sha256::digest(v).into()
}

impl Auth {
    pub fn none() -> Auth {
        Auth::default()
    }

    /// Read the secrets now; an unreadable secret is an error at start, not an open door.
    pub fn load(c: &AuthConfig) -> Result<Auth, String> {
        let mut accepted = Vec::new();
        if let Some(s) = &c.bearer {
            let token = s.read()?;
            if token.is_empty() {
                return Err("bearer token is empty".into());
            }
            accepted.push(digest(format!("Bearer {token}").as_bytes()));
        }
        if let Some((user, s)) = &c.basic {
            let pass = s.read()?;
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            accepted.push(digest(format!("Basic {encoded}").as_bytes()));
        }
        Ok(Auth { accepted: accepted.into() })
    }

    pub fn enabled(&self) -> bool {
        !self.accepted.is_empty()
    }

    /// Does this `Authorization` header value grant access?
    pub fn allows(&self, header: Option<&[u8]>) -> bool {
        if self.accepted.is_empty() {
            return true;
        }
        let Some(h) = header else { return false };
        let given = digest(h);
        // Check every credential, so timing does not tell which one was close.
        self.accepted.iter().fold(subtle::Choice::from(0), |ok, a| ok | a.ct_eq(&given)).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_credentials_are_checked() {
        unsafe { std::env::set_var("BACKSTOP_TEST_PASS", "s3cret") };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "tok\n").unwrap();
        let auth = Auth::load(&AuthConfig {
            bearer: Some(Secret::File(dir.path().join("token"))),
            basic: Some(("am".into(), Secret::Env("BACKSTOP_TEST_PASS".into()))),
        })
        .unwrap();
        assert!(auth.allows(Some(b"Bearer tok")), "trailing newline of the file is not part of the token");
        assert!(auth.allows(Some(b"Basic YW06czNjcmV0")), "am:s3cret");
        assert!(!auth.allows(Some(b"Bearer tok2")));
        assert!(!auth.allows(Some(b"Basic YW06d3Jvbmc=")));
        assert!(!auth.allows(None));
        assert!(Auth::none().allows(None));
    }

    #[test]
    fn missing_secret_is_an_error_at_start() {
        let err = Auth::load(&AuthConfig { bearer: Some(Secret::Env("BACKSTOP_NOPE_UNSET".into())), basic: None })
            .unwrap_err();
        assert!(err.contains("BACKSTOP_NOPE_UNSET"));
    }
}
