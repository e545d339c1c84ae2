//! The HS256 secret the test brokers run with, and tokens signed with it (or not).

use std::time::Duration;

use hookwire::auth::TokenSpec;
use serde_json::Value;

/// The HS256 secret every test broker runs with.
pub const SECRET: &str = "e2e-test-secret-e2e-test-secret-0123456789";

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs arbitrary claims with HS256 and [`SECRET`] (for claims `TokenSpec` does not have).
pub fn sign_claims(claims: &Value) -> String {
    sign_with(
        claims,
        jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

/// Signs claims with any header and key.
pub fn sign_with(
    claims: &impl serde::Serialize,
    header: jsonwebtoken::Header,
    key: &jsonwebtoken::EncodingKey,
) -> String {
    jsonwebtoken::encode(&header, claims, key).expect("sign test token")
}

/// A token signed with [`SECRET`] valid for an hour.
pub fn token(sub: &str, channels: &[&str]) -> String {
    TokenSpec::new(sub, Duration::from_secs(3600))
        .channels(channels.iter().copied())
        .sign_hs256(SECRET.as_bytes())
}

/// A token like [`token`]'s, signed with a secret the broker does not know.
pub fn forged_token(sub: &str, channels: &[&str]) -> String {
    spec(sub, channels).sign_hs256(b"not-the-broker-secret-not-the-broker-secret")
}

pub fn spec(sub: &str, channels: &[&str]) -> TokenSpec {
    TokenSpec::new(sub, Duration::from_secs(3600)).channels(channels.iter().copied())
}
