//! `[auth]`: which tokens the broker accepts, with its validation.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::validation::Problems;

/// A token signature algorithm the broker can accept. `none` is not one of them, ever.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenAlgorithm {
    HS256,
    RS256,
    ES256,
}

impl TokenAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
        }
    }

    pub fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::HS256 => jsonwebtoken::Algorithm::HS256,
            Self::RS256 => jsonwebtoken::Algorithm::RS256,
            Self::ES256 => jsonwebtoken::Algorithm::ES256,
        }
    }
}

impl fmt::Display for TokenAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TokenAlgorithm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TokenAlgorithm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "HS256" => Ok(Self::HS256),
            "RS256" => Ok(Self::RS256),
            "ES256" => Ok(Self::ES256),
            other => Err(serde::de::Error::custom(format!(
                "auth.algorithms has {other:?}: allowed are \"HS256\", \"RS256\", \"ES256\" (\"none\" is never accepted)"
            ))),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted signature algorithms: any of `HS256`, `RS256`, `ES256`.
    pub algorithms: Vec<TokenAlgorithm>,
    /// PEM public key for RS256 tokens (empty: none).
    pub rsa_public_key_file: String,
    /// PEM public key for ES256 tokens (empty: none).
    pub ec_public_key_file: String,
    /// JWKS file; tokens pick a key by `kid` (empty: none).
    pub jwks_file: String,
    /// Required `iss` (empty: not checked).
    pub issuer: String,
    /// Required `aud` (empty: not checked).
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            algorithms: vec![TokenAlgorithm::HS256],
            rsa_public_key_file: String::new(),
            ec_public_key_file: String::new(),
            jwks_file: String::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: 5,
        }
    }
}

impl AuthConfig {
    pub fn accepts(&self, alg: TokenAlgorithm) -> bool {
        self.algorithms.contains(&alg)
    }

    pub fn validate(&self, p: &mut Problems) {
        if self.algorithms.is_empty() {
            p.push("auth.algorithms = []: list at least one of \"HS256\", \"RS256\", \"ES256\"");
        }
        if self.accepts(TokenAlgorithm::RS256)
            && self.rsa_public_key_file.is_empty()
            && self.jwks_file.is_empty()
        {
            p.push("auth.algorithms has \"RS256\" but neither auth.rsa_public_key_file nor auth.jwks_file is set");
        }
        if self.accepts(TokenAlgorithm::ES256)
            && self.ec_public_key_file.is_empty()
            && self.jwks_file.is_empty()
        {
            p.push("auth.algorithms has \"ES256\" but neither auth.ec_public_key_file nor auth.jwks_file is set");
        }
        if self.leeway_secs > 300 {
            p.push(format!(
                "auth.leeway_secs = {}: must be 0 to 300",
                self.leeway_secs
            ));
        }
    }
}
