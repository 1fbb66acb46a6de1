//! Who may use the dashboard: the site's dashboard token, presented once at `/login` (kept in
//! an HttpOnly, SameSite=Strict cookie) or as `Authorization: Bearer` by tools. Every action
//! is a POST that must also carry the CSRF value of the page it came from, which only a page
//! served to a holder of the token knows.

use crate::transport::credential::{secret_file, SecretFileError};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

/// Name of the session cookie.
pub const COOKIE: &str = "cage_dashboard";

/// Where a site keeps its dashboard token (git-ignored, mode 0600).
pub const TOKEN_FILE: &str = "config/keys/dashboard.token";

/// Why the dashboard token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read or created.
    #[error("dashboard token {}: {source}", path.display())]
    Io {
        /// The token file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The token file holds too short a token.
    #[error("dashboard token {}: holds fewer than 16 characters; delete it to have a new one made", path.display())]
    TooShort {
        /// The token file.
        path: PathBuf,
    },
}

/// The secret that opens the dashboard.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// A token given by the operator.
    pub fn given(token: &str) -> Self {
        Token(token.trim().to_owned())
    }

    /// The token of the site at `root`: read from [`TOKEN_FILE`], made (random, mode 0600)
    /// on first use.
    pub fn of_site(root: &Path) -> Result<Self, TokenError> {
        let path = root.join(TOKEN_FILE);
        match secret_file(&path, 24, 16) {
            Ok(token) => Ok(Token::given(&token)),
            Err(SecretFileError::TooShort { path, .. }) => Err(TokenError::TooShort { path }),
            Err(SecretFileError::Io { path, source }) => Err(TokenError::Io { path, source }),
        }
    }

    /// The token itself, for the login link printed to the operator.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is the token (compared in constant time).
    pub fn opens(&self, presented: &str) -> bool {
        !presented.is_empty() && bool::from(self.0.as_bytes().ct_eq(presented.trim().as_bytes()))
    }

    /// The CSRF value every form carries: a MAC of a fixed label under the token, so only
    /// pages served to a holder of the token can know it.
    pub fn csrf(&self) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(b"cages dashboard csrf v1");
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `presented` is the CSRF value (compared in constant time).
    pub fn csrf_ok(&self, presented: &str) -> bool {
        bool::from(self.csrf().as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// How a request shows it holds the token, if it does.
pub fn presented(req: &actix_web::HttpRequest) -> Option<String> {
    if let Some(h) = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
    {
        return Some(h.strip_prefix("Bearer ").unwrap_or(h).trim().to_owned());
    }
    req.cookie(COOKIE).map(|c| c.value().to_owned())
}

/// Whether a POST comes from a page of this dashboard: an `Origin` (or, lacking it, a
/// `Referer`) header, when the browser sends one, must name the host the request was sent to.
pub fn same_origin(req: &actix_web::HttpRequest) -> bool {
    let host = req.connection_info().host().to_owned();
    let from = req
        .headers()
        .get("origin")
        .or_else(|| req.headers().get("referer"))
        .and_then(|h| h.to_str().ok());
    match from {
        None => true,
        Some(url) => {
            let rest = url.split_once("://").map_or(url, |(_, r)| r);
            rest.split('/').next() == Some(host.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_token_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Token::of_site(dir.path()).unwrap();
        let b = Token::of_site(dir.path()).unwrap();
        assert_eq!(a.reveal(), b.reveal());
        assert!(a.opens(b.reveal()) && !a.opens("") && !a.opens("nope"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn csrf_depends_on_the_token() {
        let a = Token::given("0123456789abcdef0");
        let b = Token::given("0123456789abcdef1");
        assert!(a.csrf_ok(&a.csrf()));
        assert!(!a.csrf_ok(&b.csrf()) && !a.csrf_ok(""));
    }
}
