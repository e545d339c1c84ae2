//! Authentication: every way a `connect` can fail, the token's places (frame, header, never
//! the URL), the handshake deadline, and RS256/ES256 with PEM keys and a JWKS file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http;

use crate::harness::*;

/// Sends `connect` with `token`, expects an error with `code`, then `disconnect` and close 4001.
async fn refused(broker: &TestBroker, token: &str, code: &str) -> Value {
    let (mut c, reply) = broker.connect(token).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], code, "{reply}");
    assert_eq!(reply["id"], 1, "{reply}");
    c.closed().await.assert_code(4001);
    reply
}

fn b64(json: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
}

#[tokio::test]
async fn an_expired_token_is_refused_with_token_expired_and_4001() {
    let broker = TestBroker::start().await;
    // Past the default 5 s leeway.
    let mut expired = spec("alice", &["chat:*"]);
    expired.exp = now_s() - 60;
    let reply = refused(
        &broker,
        &expired.sign_hs256(SECRET.as_bytes()),
        "token_expired",
    )
    .await;
    assert!(
        reply["message"].as_str().unwrap().contains("expired"),
        "{reply}"
    );
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    let broker = TestBroker::start().await;
    let forged = forged_token("alice", &["chat:*"]);
    let reply = refused(&broker, &forged, "unauthorized").await;
    assert!(
        reply["message"].as_str().unwrap().contains("signature"),
        "{reply}"
    );
    // A token whose signature part was tampered with.
    let good = token("alice", &["chat:*"]);
    let (head, _) = good.rsplit_once('.').unwrap();
    refused(&broker, &format!("{head}.AAAA"), "unauthorized").await;
}

#[tokio::test]
async fn an_alg_none_token_is_refused() {
    let broker = TestBroker::start().await;
    let claims = json!({"sub": "alice", "exp": now_s() + 3600, "channels": ["chat:*"]});
    for header in [
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "None"}),
        json!({"alg": "NONE", "typ": "JWT"}),
    ] {
        let unsigned = format!("{}.{}.", b64(&header), b64(&claims));
        let reply = refused(&broker, &unsigned, "unauthorized").await;
        assert!(
            reply["message"].as_str().unwrap().contains("none"),
            "{reply}"
        );
        // A signature part (a real HS256 one) changes nothing.
        let signed = sign_claims(&claims);
        let sig = signed.rsplit_once('.').unwrap().1;
        refused(
            &broker,
            &format!("{}.{}.{sig}", b64(&header), b64(&claims)),
            "unauthorized",
        )
        .await;
    }
}

#[tokio::test]
async fn the_audience_is_checked_when_configured() {
    let broker = TestBroker::builder()
        .env("HOOKWIRE_AUTH_AUDIENCE", "hookwire-e2e")
        .start()
        .await;
    let exp = now_s() + 3600;
    let wrong = sign_claims(&json!({"sub": "alice", "exp": exp, "aud": "someone-else"}));
    let reply = refused(&broker, &wrong, "unauthorized").await;
    assert!(
        reply["message"].as_str().unwrap().contains("aud"),
        "{reply}"
    );
    let missing = sign_claims(&json!({"sub": "alice", "exp": exp}));
    let reply = refused(&broker, &missing, "unauthorized").await;
    assert!(
        reply["message"].as_str().unwrap().contains("aud"),
        "{reply}"
    );
    let right = sign_claims(&json!({"sub": "alice", "exp": exp, "aud": "hookwire-e2e"}));
    let mut c = broker.client_with(&right).await;
    c.ping().await;
}

#[tokio::test]
async fn the_issuer_is_checked_when_configured() {
    let broker = TestBroker::builder()
        .env("HOOKWIRE_AUTH_ISSUER", "https://issuer.example")
        .start()
        .await;
    let exp = now_s() + 3600;
    let wrong = sign_claims(&json!({"sub": "alice", "exp": exp, "iss": "https://evil.example"}));
    let reply = refused(&broker, &wrong, "unauthorized").await;
    assert!(
        reply["message"].as_str().unwrap().contains("iss"),
        "{reply}"
    );
    refused(
        &broker,
        &sign_claims(&json!({"sub": "alice", "exp": exp})),
        "unauthorized",
    )
    .await;
    let right = sign_claims(&json!({"sub": "alice", "exp": exp, "iss": "https://issuer.example"}));
    broker.client_with(&right).await.ping().await;
}

#[tokio::test]
async fn sub_and_exp_are_required_and_nbf_is_checked() {
    let broker = TestBroker::start().await;
    let exp = now_s() + 3600;
    let reply = refused(&broker, &sign_claims(&json!({"exp": exp})), "unauthorized").await;
    assert!(
        reply["message"].as_str().unwrap().contains("sub"),
        "{reply}"
    );
    let reply = refused(
        &broker,
        &sign_claims(&json!({"sub": "alice"})),
        "unauthorized",
    )
    .await;
    assert!(
        reply["message"].as_str().unwrap().contains("exp"),
        "{reply}"
    );
    // Not valid before an hour from now (well past the leeway).
    let early = sign_claims(&json!({"sub": "alice", "exp": exp + 3600, "nbf": exp}));
    let reply = refused(&broker, &early, "unauthorized").await;
    assert!(
        reply["message"].as_str().unwrap().contains("nbf"),
        "{reply}"
    );
    let ready = sign_claims(&json!({"sub": "alice", "exp": exp, "nbf": now_s() - 10}));
    broker.client_with(&ready).await.ping().await;
}

#[tokio::test]
async fn a_token_in_the_url_is_refused_with_4001_and_says_where_to_put_it() {
    let broker = TestBroker::start().await;
    let t = token("alice", &["chat:*"]);
    for query in [format!("token={t}"), format!("x=1&access_token={t}")] {
        let mut c = Client::open(&format!("{}?{query}", broker.ws_url())).await;
        let closed = c.closed().await;
        closed.assert_code(4001);
        let reason = closed.disconnect.unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(reason.contains("URL"), "{reason}");
        assert!(reason.contains("connect"), "{reason}");
        assert!(reason.contains("Authorization"), "{reason}");
    }
    // Other query parameters are fine.
    let mut c = Client::open(&format!("{}?room=lobby", broker.ws_url())).await;
    let r = c.request(json!({"type": "connect", "token": t})).await;
    assert_eq!(r["type"], "connected", "{r}");
}

#[tokio::test]
async fn no_connect_within_the_handshake_timeout_closes_4001() {
    let broker = TestBroker::builder()
        .env("HOOKWIRE_LIMITS_HANDSHAKE_TIMEOUT_MS", "300")
        .start()
        .await;
    let started = tokio::time::Instant::now();
    let mut c = Client::open(&broker.ws_url()).await;
    let closed = c.closed().await;
    closed.assert_code(4001);
    assert!(
        closed.disconnect.unwrap()["reason"]
            .as_str()
            .unwrap()
            .contains("connect"),
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // A client that connects in time is not affected by the deadline afterwards.
    let mut c = broker.client("alice", &["chat:*"]).await;
    c.subscribe("chat:lobby").await;
    let p = c.publish("chat:lobby", json!(1)).await;
    assert_eq!(p["offset"], 1);
    let (mut other, reply) = broker.connect(&token("bob", &[])).await;
    assert_eq!(reply["type"], "connected");
    other.ping().await;
    c.ping().await;
}

#[tokio::test]
async fn a_frame_before_connect_gets_unauthorized_then_4001() {
    let broker = TestBroker::start().await;
    let mut c = Client::open(&broker.ws_url()).await;
    let r = c
        .request(json!({"type": "subscribe", "channel": "chat:lobby"}))
        .await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["code"], "unauthorized", "{r}");
    assert_eq!(r["id"], 1);
    assert!(r["message"].as_str().unwrap().contains("connect"), "{r}");
    c.closed().await.assert_code(4001);

    let mut c = Client::open(&broker.ws_url()).await;
    let r = c.request(json!({"type": "ping"})).await;
    assert_eq!(r["code"], "unauthorized", "{r}");
    c.closed().await.assert_code(4001);
}

#[tokio::test]
async fn a_connect_without_any_token_is_refused() {
    let broker = TestBroker::start().await;
    let mut c = Client::open(&broker.ws_url()).await;
    let r = c.request(json!({"type": "connect"})).await;
    assert_eq!(r["code"], "unauthorized", "{r}");
    assert!(r["message"].as_str().unwrap().contains("Bearer"), "{r}");
    c.closed().await.assert_code(4001);
}

#[tokio::test]
async fn a_bearer_header_on_the_upgrade_authenticates_a_connect_without_token() {
    let broker = TestBroker::start().await;
    let mut request = broker.ws_url().into_client_request().unwrap();
    let t = token("carol", &["chat:*"]);
    request.headers_mut().insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
    );
    let mut c = Client::open_with(request).await;
    let r = c
        .request(json!({"type": "connect", "name": "header-client"}))
        .await;
    assert_eq!(r["type"], "connected", "{r}");
    assert_eq!(r["user"], "carol");
    c.subscribe("chat:lobby").await;

    // The scheme is case-insensitive (RFC 9110, section 11.1).
    let mut request = broker.ws_url().into_client_request().unwrap();
    request.headers_mut().insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!("bearer {t}")).unwrap(),
    );
    let mut c = Client::open_with(request).await;
    let r = c.request(json!({"type": "connect"})).await;
    assert_eq!(r["type"], "connected", "{r}");

    // A bad token in the header is refused like one in the frame.
    let mut request = broker.ws_url().into_client_request().unwrap();
    let forged = forged_token("carol", &[]);
    request.headers_mut().insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!("Bearer {forged}")).unwrap(),
    );
    let mut c = Client::open_with(request).await;
    let r = c.request(json!({"type": "connect"})).await;
    assert_eq!(r["code"], "unauthorized", "{r}");
    c.closed().await.assert_code(4001);
}

#[tokio::test]
async fn an_algorithm_that_is_not_configured_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = KeyPair::rsa(dir.path(), "rsa");
    // The default broker accepts HS256 only.
    let broker = TestBroker::start().await;
    let t = rsa.sign(Algorithm::RS256, None, &claims("alice"));
    let reply = refused(&broker, &t, "unauthorized").await;
    let message = reply["message"].as_str().unwrap();
    assert!(
        message.contains("RS256") && message.contains("HS256"),
        "{reply}"
    );
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_with_pem_public_keys() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = KeyPair::rsa(dir.path(), "rsa");
    let ec = KeyPair::ec(dir.path(), "ec");
    let other_rsa = KeyPair::rsa(dir.path(), "other-rsa");
    let other_ec = KeyPair::ec(dir.path(), "other-ec");
    let broker = TestBroker::builder()
        .env("HOOKWIRE_AUTH_ALGORITHMS", "RS256,ES256")
        .env("HOOKWIRE_AUTH_RSA_PUBLIC_KEY_FILE", rsa.public_path())
        .env("HOOKWIRE_AUTH_EC_PUBLIC_KEY_FILE", ec.public_path())
        .start()
        .await;

    let mut c = broker
        .client_with(&rsa.sign(Algorithm::RS256, None, &claims("rita")))
        .await;
    c.subscribe("chat:keys").await;
    let (mut c, r) = broker
        .connect(&ec.sign(Algorithm::ES256, None, &claims("eve")))
        .await;
    assert_eq!(r["type"], "connected", "{r}");
    assert_eq!(r["user"], "eve");
    c.subscribe("chat:keys").await;

    // Signed by keys the broker does not know.
    refused(
        &broker,
        &other_rsa.sign(Algorithm::RS256, None, &claims("rita")),
        "unauthorized",
    )
    .await;
    refused(
        &broker,
        &other_ec.sign(Algorithm::ES256, None, &claims("eve")),
        "unauthorized",
    )
    .await;
    // HS256 is not configured here, even with the right secret.
    let reply = refused(&broker, &token("mallory", &["chat:*"]), "unauthorized").await;
    assert!(
        reply["message"].as_str().unwrap().contains("HS256"),
        "{reply}"
    );
    // An expired RS256 token is still expired.
    let mut old = claims("rita");
    old["exp"] = json!(now_s() - 60);
    refused(
        &broker,
        &rsa.sign(Algorithm::RS256, None, &old),
        "token_expired",
    )
    .await;
}

#[tokio::test]
async fn a_jwks_file_selects_the_key_by_kid() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = KeyPair::rsa(dir.path(), "rsa");
    let ec = KeyPair::ec(dir.path(), "ec");
    let stranger = KeyPair::rsa(dir.path(), "stranger");
    let jwks = JwkSet {
        keys: vec![
            rsa.jwk(Algorithm::RS256, "rsa-1"),
            ec.jwk(Algorithm::ES256, "ec-1"),
        ],
    };
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, serde_json::to_vec(&jwks).unwrap()).unwrap();
    let broker = TestBroker::builder()
        .env("HOOKWIRE_AUTH_ALGORITHMS", "RS256,ES256")
        .env("HOOKWIRE_AUTH_JWKS_FILE", jwks_path.to_str().unwrap())
        .start()
        .await;

    let mut c = broker
        .client_with(&rsa.sign(Algorithm::RS256, Some("rsa-1"), &claims("rita")))
        .await;
    c.ping().await;
    let mut c = broker
        .client_with(&ec.sign(Algorithm::ES256, Some("ec-1"), &claims("eve")))
        .await;
    c.ping().await;

    let reply = refused(
        &broker,
        &rsa.sign(Algorithm::RS256, Some("rsa-2"), &claims("rita")),
        "unauthorized",
    )
    .await;
    assert!(
        reply["message"].as_str().unwrap().contains("rsa-2"),
        "{reply}"
    );
    // The kid names a key of the other algorithm.
    refused(
        &broker,
        &ec.sign(Algorithm::ES256, Some("rsa-1"), &claims("eve")),
        "unauthorized",
    )
    .await;
    // A known kid, but signed by another key.
    let reply = refused(
        &broker,
        &stranger.sign(Algorithm::RS256, Some("rsa-1"), &claims("rita")),
        "unauthorized",
    )
    .await;
    assert!(
        reply["message"].as_str().unwrap().contains("signature"),
        "{reply}"
    );
}

#[tokio::test]
async fn tokens_never_appear_in_logs() {
    let broker = TestBroker::start().await;
    let good = token("alice", &["chat:*"]);
    let forged = forged_token("alice", &["chat:*"]);
    let mut expired = spec("alice", &["chat:*"]);
    expired.exp = now_s() - 60;
    let expired = expired.sign_hs256(SECRET.as_bytes());
    let in_url = token("urluser", &["chat:*"]);
    let in_header = token("headeruser", &["chat:*"]);
    let refresh = token("alice", &["chat:*", "news:*"]);
    let wrong_refresh = token("bob", &[]);
    let garbage = "not.a.jwt-but-a-secret-looking-string-1234567890";

    let mut c = broker.client_with(&good).await;
    let r = c
        .request(json!({"type": "refresh", "token": refresh}))
        .await;
    assert_eq!(r["type"], "refreshed", "{r}");
    c.expect_error(
        json!({"type": "refresh", "token": wrong_refresh}),
        "forbidden",
    )
    .await;
    c.expect_error(json!({"type": "refresh", "token": forged}), "unauthorized")
        .await;
    refused(&broker, &forged, "unauthorized").await;
    refused(&broker, &expired, "token_expired").await;
    refused(&broker, garbage, "unauthorized").await;
    let mut u = Client::open(&format!("{}?token={in_url}", broker.ws_url())).await;
    u.closed().await.assert_code(4001);
    // An upgrade on a wrong path that carries a token is refused before any session.
    let wrong_path = format!("ws://{}/elsewhere?token={in_url}", broker.ws_addr);
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(wrong_path))
        .await
        .unwrap()
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 404),
        other => panic!("upgrade on a wrong path: {other:?}"),
    }
    let mut request = broker.ws_url().into_client_request().unwrap();
    request.headers_mut().insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!("Bearer {in_header}")).unwrap(),
    );
    let mut h = Client::open_with(request).await;
    let r = h.request(json!({"type": "connect"})).await;
    assert_eq!(r["type"], "connected", "{r}");
    drop(h);
    drop(c);

    // Every session above has logged its end.
    broker.wait_logs("Authentication failed", 3).await;
    broker
        .wait_logs("Answered a plain HTTP request on the client listener", 1)
        .await;
    broker.wait_logs("\"Disconnected\"", 2).await;
    let logs = broker.logs();
    assert!(!logs.is_empty());
    for t in [
        good.as_str(),
        &forged,
        &expired,
        &in_url,
        &in_header,
        &refresh,
        &wrong_refresh,
        garbage,
    ] {
        // Neither the token nor its claims or signature part.
        let parts: Vec<&str> = t.split('.').filter(|p| p.len() >= 16).collect();
        for line in &logs {
            assert!(!line.contains(t), "token in log line: {line}");
            for part in &parts {
                if part.starts_with("eyJhbGci") {
                    continue; // the shared JWT header, not secret
                }
                assert!(!line.contains(part), "token part in log line: {line}");
            }
        }
    }
}

/// Claims for an RS256/ES256 test token.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now_s() + 3600, "iat": now_s(), "channels": ["chat:*"]})
}

/// A key pair made by `openssl` at run time (never committed).
struct KeyPair {
    private_pem: Vec<u8>,
    public_path: PathBuf,
}

impl KeyPair {
    fn rsa(dir: &Path, name: &str) -> Self {
        Self::generate(
            dir,
            name,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        )
    }

    fn ec(dir: &Path, name: &str) -> Self {
        Self::generate(
            dir,
            name,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        )
    }

    fn generate(dir: &Path, name: &str, params: &[&str]) -> Self {
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub.pem"));
        let private_s = private.to_str().unwrap();
        openssl(&[&["genpkey"], params, &["-out", private_s]].concat());
        openssl(&[
            "pkey",
            "-in",
            private_s,
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ]);
        Self {
            private_pem: std::fs::read(&private).unwrap(),
            public_path: public,
        }
    }

    fn public_path(&self) -> &str {
        self.public_path.to_str().unwrap()
    }

    fn encoding_key(&self, alg: Algorithm) -> EncodingKey {
        match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&self.private_pem).unwrap(),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&self.private_pem).unwrap(),
            other => panic!("no test keys for {other:?}"),
        }
    }

    fn sign(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        sign_with(claims, header, &self.encoding_key(alg))
    }

    /// The public half as a JWK with this `kid`.
    fn jwk(&self, alg: Algorithm, kid: &str) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.encoding_key(alg), alg).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        jwk
    }
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is needed to make test keys");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
