//! JWT verification (HS256, RS256, ES256, JWKS by `kid`) and minting for `hookwire token`.
//!
//! Tokens are never logged: errors describe what is wrong with a token, never its text.

mod config;
mod revocations;

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, jwk::JwkSet};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::protocol::{ErrorCode, ErrorReply};
pub use config::{AuthConfig, TokenAlgorithm};
pub use revocations::{Revocation, Revocations, RevocationsError};

/// The development secret `--dev` falls back to. Never use it outside a laptop.
pub const DEV_SECRET: &str = "hookwire-dev-secret-do-not-use-in-production";

/// Shortest HS256 secret accepted (256 bits, as RFC 7518 asks).
pub const MIN_SECRET_BYTES: usize = 32;

fn nonzero_or_none<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::num::NonZeroU64>, D::Error> {
    let n: Option<u64> = Deserialize::deserialize(d)?;
    Ok(n.and_then(std::num::NonZeroU64::new))
}

/// The claims Hookwire reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    /// Shared: the connection's user is this same string (`ConnHandle::user`).
    pub sub: std::sync::Arc<str>,
    pub exp: u64,
    /// `iat`; 0 counts as none (8 bytes, not an `Option<u64>`'s 16: the claims sit in
    /// every session).
    #[serde(default, deserialize_with = "nonzero_or_none")]
    pub iat: Option<std::num::NonZeroU64>,
    /// Subscribe patterns (boxed slices, not vectors: exactly their size, and 8 bytes
    /// less each in every session).
    #[serde(default)]
    pub channels: Box<[String]>,
    /// Publish patterns; `None`: may publish where it may subscribe.
    #[serde(default)]
    pub publish: Option<Box<[String]>>,
    /// Shown in presence and join pushes.
    #[serde(default)]
    pub info: Option<Box<RawValue>>,
}

/// Why a token was refused. The text is safe to send to the client and to log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error(
        "no token: send it as `token` in the connect frame or as `Authorization: Bearer <jwt>` on the upgrade request"
    )]
    Missing,
    #[error("the token is not a well-formed JWT ({0})")]
    Malformed(String),
    #[error("tokens signed with alg `none` are never accepted; sign the token with one of: {0}")]
    AlgNone(String),
    #[error(
        "the token is signed with {alg}, which this server does not accept; accepted: {accepted}"
    )]
    AlgorithmNotAllowed { alg: String, accepted: String },
    #[error("the token names key id {0:?}, which is not in the configured JWKS")]
    UnknownKid(String),
    #[error("the token's signature does not verify with the configured key")]
    BadSignature,
    #[error("the token expired; get a new one (and send `refresh` before `exp` to stay connected)")]
    Expired,
    #[error("the token is not valid yet (`nbf` is in the future); check the issuer's clock")]
    NotYetValid,
    #[error("the token's `aud` does not match the audience this server requires")]
    WrongAudience,
    #[error("the token's `iss` does not match the issuer this server requires")]
    WrongIssuer,
    #[error("the token lacks the required claim `{0}`")]
    MissingClaim(String),
    #[error("the token's claims are not valid: {0}")]
    BadClaims(String),
    #[error(
        "the new token is for user {new:?}, but this connection is user {current:?}; reconnect to change user"
    )]
    SubMismatch { current: String, new: String },
    #[error(
        "tokens of this user issued at or before {revoked_at} (Unix time) were revoked by an operator and are refused until {until}; a token issued after the revocation is accepted"
    )]
    Revoked { revoked_at: u64, until: u64 },
    #[error(
        "the token's iat ({iat}) is in the future (now {now}, leeway {leeway} s); fix the issuer's clock"
    )]
    IssuedInFuture { iat: u64, now: u64, leeway: u64 },
}

impl Error {
    /// A bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::AlgNone(_) => "alg_none",
            Self::AlgorithmNotAllowed { .. } => "algorithm",
            Self::UnknownKid(_) => "unknown_kid",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongAudience => "audience",
            Self::WrongIssuer => "issuer",
            Self::MissingClaim(_) => "missing_claim",
            Self::BadClaims(_) => "bad_claims",
            Self::SubMismatch { .. } => "sub_mismatch",
            Self::Revoked { .. } => "revoked",
            Self::IssuedInFuture { .. } => "iat_in_future",
        }
    }

    pub fn to_reply(&self) -> ErrorReply {
        let code = match self {
            Self::Expired => ErrorCode::TokenExpired,
            Self::SubMismatch { .. } | Self::Revoked { .. } => ErrorCode::Forbidden,
            _ => ErrorCode::Unauthorized,
        };
        ErrorReply::new(code, self.to_string())
    }
}

/// Problems with the auth configuration, found at start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "HOOKWIRE_JWT_SECRET is not set, and auth.algorithms includes HS256; set it to a random secret of {MIN_SECRET_BYTES}+ bytes (e.g. `openssl rand -base64 32`), or pass --dev to use the built-in development secret"
    )]
    NoSecret,
    #[error(
        "HOOKWIRE_JWT_SECRET is {0} bytes; HS256 needs {MIN_SECRET_BYTES} or more (e.g. `openssl rand -base64 32`)"
    )]
    ShortSecret(usize),
    #[error("cannot read {key} = {path:?}: {message}")]
    KeyFile {
        key: &'static str,
        path: String,
        message: String,
    },
}

/// Where the HS256 secret came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretSource {
    Environment,
    DevDefault,
}

/// Picks the HS256 secret: `HOOKWIRE_JWT_SECRET`, else the dev secret under `--dev`.
pub fn resolve_secret(
    env: Option<&str>,
    dev: bool,
) -> Result<(Vec<u8>, SecretSource), ConfigError> {
    match env {
        Some(s) if s.len() < MIN_SECRET_BYTES => Err(ConfigError::ShortSecret(s.len())),
        Some(s) => Ok((s.as_bytes().to_vec(), SecretSource::Environment)),
        None if dev => Ok((DEV_SECRET.as_bytes().to_vec(), SecretSource::DevDefault)),
        None => Err(ConfigError::NoSecret),
    }
}

/// Verifies client tokens against the configured keys.
pub struct Verifier {
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    leeway: u64,
    accepted: Vec<Algorithm>,
    accepted_text: String,
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ec: Option<DecodingKey>,
    jwks: HashMap<String, (Algorithm, DecodingKey)>,
    validations: HashMap<Algorithm, Validation>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("accepted", &self.accepted)
            .finish_non_exhaustive()
    }
}

fn read_key(key: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::KeyFile {
        key,
        path: path.to_string(),
        message: e.to_string(),
    })
}

/// The keys of a JWKS file, by `kid` (keys without a `kid` or of other kinds are skipped).
fn load_jwks(path: &str) -> Result<HashMap<String, (Algorithm, DecodingKey)>, ConfigError> {
    let bytes = read_key("auth.jwks_file", path)?;
    let key_err = |message: String| ConfigError::KeyFile {
        key: "auth.jwks_file",
        path: path.to_string(),
        message,
    };
    let set: JwkSet =
        serde_json::from_slice(&bytes).map_err(|e| key_err(format!("not a JWKS document: {e}")))?;
    let mut jwks = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let alg = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| key_err(e.to_string()))?;
        jwks.insert(kid, (alg, key));
    }
    Ok(jwks)
}

/// What a token signed with `alg` must satisfy: `exp`, `nbf`, `sub`, and `aud`/`iss` when
/// configured, with the configured leeway.
fn validation(alg: Algorithm, config: &AuthConfig) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = config.leeway_secs;
    v.validate_nbf = true;
    v.validate_exp = true;
    let mut required = vec!["exp", "sub"];
    if config.audience.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&[&config.audience]);
        required.push("aud");
    }
    if !config.issuer.is_empty() {
        v.set_issuer(&[&config.issuer]);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
}

impl Verifier {
    /// Builds the verifier; `secret` is required when HS256 is accepted.
    pub fn new(config: &AuthConfig, secret: Option<&[u8]>) -> Result<Self, ConfigError> {
        let accepted: Vec<Algorithm> = config.algorithms.iter().map(|a| a.jwt()).collect();
        let key_err =
            |key: &'static str, path: &str, e: jsonwebtoken::errors::Error| ConfigError::KeyFile {
                key,
                path: path.to_string(),
                message: e.to_string(),
            };
        let hmac = if accepted.contains(&Algorithm::HS256) {
            Some(DecodingKey::from_secret(
                secret.ok_or(ConfigError::NoSecret)?,
            ))
        } else {
            None
        };
        let rsa = match config.rsa_public_key_file.as_str() {
            "" => None,
            path => Some(
                DecodingKey::from_rsa_pem(&read_key("auth.rsa_public_key_file", path)?)
                    .map_err(|e| key_err("auth.rsa_public_key_file", path, e))?,
            ),
        };
        let ec = match config.ec_public_key_file.as_str() {
            "" => None,
            path => Some(
                DecodingKey::from_ec_pem(&read_key("auth.ec_public_key_file", path)?)
                    .map_err(|e| key_err("auth.ec_public_key_file", path, e))?,
            ),
        };
        let jwks = match config.jwks_file.as_str() {
            "" => HashMap::new(),
            path => load_jwks(path)?,
        };
        let validations = accepted
            .iter()
            .map(|alg| (*alg, validation(*alg, config)))
            .collect();
        Ok(Self {
            leeway: config.leeway_secs,
            accepted_text: config
                .algorithms
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            accepted,
            hmac,
            rsa,
            ec,
            jwks,
            validations,
        })
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, Error> {
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(e) => {
                if raw_alg(token)
                    .as_deref()
                    .is_some_and(|a| a.eq_ignore_ascii_case("none"))
                {
                    return Err(Error::AlgNone(self.accepted_text.clone()));
                }
                return Err(Error::Malformed(describe(&e)));
            }
        };
        if !self.accepted.contains(&header.alg) {
            return Err(Error::AlgorithmNotAllowed {
                alg: format!("{:?}", header.alg),
                accepted: self.accepted_text.clone(),
            });
        }
        let key = match (header.alg, header.kid.as_deref()) {
            (Algorithm::HS256, _) => self.hmac.as_ref(),
            (alg, Some(kid)) if !self.jwks.is_empty() => match self.jwks.get(kid) {
                Some((key_alg, key)) if *key_alg == alg => Some(key),
                Some(_) | None => return Err(Error::UnknownKid(kid.to_string())),
            },
            (Algorithm::RS256, _) => self.rsa.as_ref(),
            (Algorithm::ES256, _) => self.ec.as_ref(),
            _ => None,
        };
        let Some(key) = key else {
            return Err(Error::AlgorithmNotAllowed {
                alg: format!("{:?} without a matching key", header.alg),
                accepted: self.accepted_text.clone(),
            });
        };
        let validation = &self.validations[&header.alg];
        // JWT claims are UTF-8 JSON (RFC 7519). serde skips the bytes of claims it does
        // not read, so check it here: plugins see the claims as text.
        if claims_bytes(token).is_none() {
            return Err(Error::Malformed(
                "the claims are not a UTF-8 JSON object".into(),
            ));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map(|data| data.claims)
            .map_err(|e| map_error(&e))?;
        // Revocation compares `iat` with when it was made: a token must not date itself
        // after a revocation it predates.
        let now = crate::protocol::now_ms() / 1000;
        if let Some(iat) = claims.iat.map(std::num::NonZeroU64::get)
            && iat > now.saturating_add(self.leeway)
        {
            return Err(Error::IssuedInFuture {
                iat,
                now,
                leeway: self.leeway,
            });
        }
        Ok(claims)
    }
}

/// The claims of a token the verifier accepted, as the JSON object text it carries
/// (every claim, not only those the broker reads), for plugins.
pub fn claims_json(token: &str) -> String {
    claims_text(token).unwrap_or_else(|| "{}".to_string())
}

/// A token's payload, when it is a UTF-8 JSON object.
fn claims_text(token: &str) -> Option<String> {
    claims_bytes(token).and_then(|bytes| String::from_utf8(bytes).ok())
}

/// A token's payload decoded, when it is a UTF-8 JSON object: checked without keeping
/// anything of it (a connect verifies every token so, and the claims' own parse follows).
fn claims_bytes(token: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    // Raw values: any JSON number is a valid claim, even past f64's range (ignored
    // values are scanned, not converted); the UTF-8 check covers the ignored strings.
    let object =
        std::str::from_utf8(&bytes).is_ok() && serde_json::from_slice::<JsonObject>(&bytes).is_ok();
    object.then_some(bytes)
}

/// Any JSON object, its members skipped.
struct JsonObject;

impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = JsonObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonObject, A::Error> {
                use serde::de::IgnoredAny;
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(JsonObject)
            }
        }
        d.deserialize_map(Members)
    }
}

fn raw_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let head = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head.trim_end_matches('='))
        .ok()?;
    #[derive(Deserialize)]
    struct H {
        alg: String,
    }
    serde_json::from_slice::<H>(&bytes).ok().map(|h| h.alg)
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidToken => "expected three base64url parts separated by '.'".into(),
        K::Base64(_) => "a part is not valid base64url".into(),
        K::Json(_) => "the header or claims are not valid JSON".into(),
        K::Utf8(_) => "the token is not UTF-8".into(),
        _ => "it could not be decoded".into(),
    }
}

fn map_error(e: &jsonwebtoken::errors::Error) -> Error {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => Error::BadSignature,
        K::ExpiredSignature => Error::Expired,
        K::ImmatureSignature => Error::NotYetValid,
        K::InvalidAudience => Error::WrongAudience,
        K::InvalidIssuer => Error::WrongIssuer,
        K::MissingRequiredClaim(c) => Error::MissingClaim(c.clone()),
        K::InvalidAlgorithm => Error::AlgorithmNotAllowed {
            alg: "a different algorithm".into(),
            accepted: "the configured algorithms".into(),
        },
        K::Json(err) => Error::BadClaims(err.to_string()),
        _ => Error::Malformed(describe(e)),
    }
}

/// What `hookwire token` (and tests, and the bench) put in a token.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TokenSpec {
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// Other claims (e.g. a display `name` for plugins to read).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl TokenSpec {
    /// A token for `sub` that lives `ttl` from now.
    pub fn new(sub: impl Into<String>, ttl: std::time::Duration) -> Self {
        let now = crate::protocol::now_ms() / 1000;
        Self {
            sub: sub.into(),
            exp: now + ttl.as_secs(),
            iat: now,
            ..Self::default()
        }
    }

    pub fn channels(mut self, patterns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.channels = patterns.into_iter().map(Into::into).collect();
        self
    }

    /// Signs with HS256.
    pub fn sign_hs256(&self, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            self,
            &EncodingKey::from_secret(secret),
        )
        .expect("HS256 signing of plain claims cannot fail")
    }
}

/// A shared verifier.
pub type SharedVerifier = Arc<Verifier>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier(cfg: AuthConfig) -> Verifier {
        Verifier::new(&cfg, Some(SECRET)).unwrap()
    }

    #[test]
    fn accepts_a_good_hs256_token() {
        let v = verifier(AuthConfig::default());
        let t = TokenSpec::new("alice", Duration::from_secs(60))
            .channels(["chat:*"])
            .sign_hs256(SECRET);
        let c = v.verify(&t).unwrap();
        assert_eq!(&*c.sub, "alice");
        assert_eq!(&*c.channels, ["chat:*"]);
        assert!(c.iat.is_some());
    }

    #[test]
    fn an_iat_of_zero_counts_as_none() {
        let v = verifier(AuthConfig::default());
        let mut spec = TokenSpec::new("alice", Duration::from_secs(60));
        spec.iat = 0;
        assert_eq!(v.verify(&spec.sign_hs256(SECRET)).unwrap().iat, None);
    }

    #[test]
    fn refuses_bad_tokens_with_reasons() {
        let v = verifier(AuthConfig::default());
        let mut expired = TokenSpec::new("a", Duration::from_secs(0));
        expired.exp -= 30;
        assert_eq!(
            v.verify(&expired.sign_hs256(SECRET)).unwrap_err(),
            Error::Expired
        );
        let other = TokenSpec::new("a", Duration::from_secs(60))
            .sign_hs256(b"another-secret-another-secret-xx");
        assert_eq!(v.verify(&other).unwrap_err(), Error::BadSignature);
        assert!(matches!(v.verify("abc"), Err(Error::Malformed(_))));
        // alg none: header {"alg":"none","typ":"JWT"}
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(matches!(v.verify(none), Err(Error::AlgNone(_))));
    }

    #[test]
    fn the_claims_must_be_a_utf8_json_object_any_number_allowed() {
        use base64::Engine;
        let token = |payload: &[u8]| {
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload);
            format!("h.{b64}.s")
        };
        let object = br#"{"sub":"a","exp":1,"big":1e999,"n":[{"x":null}],"s":"\u00e9"}"#;
        assert_eq!(claims_bytes(&token(object)).as_deref(), Some(&object[..]));
        assert!(claims_text(&token(object)).is_some());
        for bad in [
            &br#"["sub"]"#[..],
            br#""text""#,
            br#"{"sub":"a"} trailing"#,
            br#"{"sub":"a""#,
            b"{\"sub\":\"\xff\"}",
            b"",
        ] {
            assert_eq!(
                claims_bytes(&token(bad)),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(claims_bytes("no-dots"), None);
    }

    #[test]
    fn leeway_is_five_seconds_by_default() {
        let v = verifier(AuthConfig::default());
        let mut t = TokenSpec::new("a", Duration::from_secs(0));
        t.exp -= 3;
        assert!(v.verify(&t.sign_hs256(SECRET)).is_ok());
        t.exp -= 5;
        assert_eq!(v.verify(&t.sign_hs256(SECRET)).unwrap_err(), Error::Expired);
    }

    #[test]
    fn checks_audience_and_issuer_when_configured() {
        let v = verifier(AuthConfig {
            audience: "hookwire".into(),
            ..AuthConfig::default()
        });
        let t = TokenSpec::new("a", Duration::from_secs(60)).sign_hs256(SECRET);
        assert_eq!(v.verify(&t).unwrap_err(), Error::MissingClaim("aud".into()));
    }

    #[test]
    fn secrets_must_be_long_or_dev() {
        assert!(matches!(
            resolve_secret(Some("short"), false),
            Err(ConfigError::ShortSecret(5))
        ));
        assert!(matches!(
            resolve_secret(None, false),
            Err(ConfigError::NoSecret)
        ));
        assert_eq!(
            resolve_secret(None, true).unwrap().1,
            SecretSource::DevDefault
        );
    }
}
