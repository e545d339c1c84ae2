//! Fuzzing hooks: the check behind each `broker/fuzz/` target, as plain functions.
//!
//! Each function takes one raw fuzzer input and panics only when a property the broker
//! relies on breaks (a panic in the code under test counts too). They live here, not in
//! the fuzz crate, so that `tests/fuzz_corpus.rs` replays the committed corpora
//! (`broker/fuzz/corpus/<target>/`) on the stable toolchain with `cargo test`, and so
//! that they can reach `pub(crate)` code. Not part of the broker's API: nothing but the
//! fuzz targets and that test may call them. Input formats and properties are listed in
//! `broker/fuzz/README.md`.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use serde_json::value::RawValue;

use crate::auth::{AuthConfig, Verifier};
use crate::channel::Namespaces;
use crate::config::{Config, EnvOverrides};
use crate::plugins::answer::{self, PublishOutcome};
use crate::plugins::host::{
    ExtraPublication, MetaField, PublicationState, PublishDecision, PublishEdit, PublishSource,
};
use crate::protocol::{
    self, ErrorCode, ErrorReply, MAX_DATA_DEPTH, MAX_KEY_BYTES, MAX_NAME_BYTES, RequestBody,
};

/// `frame`: one client text frame (lossy UTF-8, as transports only pass text frames).
///
/// `parse_request` never panics; what it accepts holds its documented limits (id > 0,
/// `data` valid JSON within [`MAX_DATA_DEPTH`], key 1..=[`MAX_KEY_BYTES`] bytes, name
/// at most [`MAX_NAME_BYTES`]); what it refuses encodes as a valid `error` reply; and
/// `check_depth` agrees with the real nesting depth of any JSON serde_json reads.
pub fn frame(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    depth_agrees(&text);
    match protocol::parse_request(&text) {
        Ok(request) => {
            assert_ne!(request.id, Some(0), "id 0 accepted");
            match &request.body {
                RequestBody::Publish { data, key, .. } => {
                    depth_agrees(data.get());
                    assert!(
                        protocol::check_depth(data.get()).is_ok(),
                        "deep data accepted"
                    );
                    serde_json::from_str::<serde::de::IgnoredAny>(data.get())
                        .expect("accepted data is JSON");
                    if let Some(key) = key {
                        assert!((1..=MAX_KEY_BYTES).contains(&key.len()), "key length");
                    }
                }
                RequestBody::Connect {
                    name: Some(name), ..
                } => assert!(name.len() <= MAX_NAME_BYTES, "name length"),
                _ => {}
            }
            assert!(!request.body.kind().is_empty());
        }
        Err(e) => {
            assert_ne!(e.id, Some(0), "id 0 kept for the error reply");
            assert!(!e.message.is_empty());
            let reply =
                protocol::error_reply(e.id, &ErrorReply::new(ErrorCode::BadRequest, e.message));
            serde_json::from_str::<serde_json::Value>(reply.as_str())
                .expect("an error reply is JSON");
        }
    }
}

/// `check_depth` on JSON text says what the parsed value's depth says.
fn depth_agrees(text: &str) {
    let verdict = protocol::check_depth(text);
    // serde_json stops at 128 levels; anything it reads can be measured.
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    let depth = json_depth(&value);
    assert_eq!(
        verdict.is_ok(),
        depth <= MAX_DATA_DEPTH,
        "check_depth says {verdict:?} for JSON {depth} levels deep"
    );
}

fn json_depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The HS256 secret the `token` target signs and verifies with.
pub const TOKEN_SECRET: &[u8] = b"hookwire-fuzz-secret-0123456789abcdef";

/// `token`: the whole input (lossy UTF-8) is a token; and when it has a line break,
/// the text before it is a JWT header (empty: `{"alg":"HS256","typ":"JWT"}`) and the text
/// after it the claims, which are signed with [`TOKEN_SECRET`] so the claim checks are
/// reached.
///
/// `Verifier::verify` (HS256, `AuthConfig::default()`) and `claims_json` never panic;
/// `claims_json` always returns a JSON object; a refusal never quotes the token's
/// signature; an accepted token is unexpired, and `claims_json` of it shows the same `sub`.
pub fn token(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    check_token(&text);
    if let Some((header, claims)) = text.split_once('\n') {
        let header = if header.is_empty() {
            r#"{"alg":"HS256","typ":"JWT"}"#
        } else {
            header
        };
        check_token(&sign(header.as_bytes(), claims.as_bytes()));
    }
}

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        Verifier::new(&AuthConfig::default(), Some(TOKEN_SECRET)).expect("an HS256 verifier")
    })
}

fn sign(header: &[u8], claims: &[u8]) -> String {
    use base64::Engine;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signed = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(TOKEN_SECRET).expect("any key length");
    mac.update(signed.as_bytes());
    format!("{signed}.{}", b64.encode(mac.finalize().into_bytes()))
}

fn check_token(token: &str) {
    let claims_text = crate::auth::claims_json(token);
    let claims_object: std::collections::HashMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_str(&claims_text).expect("claims_json is a JSON object");
    match verifier().verify(token) {
        Ok(claims) => {
            let sub = claims_object
                .get("sub")
                .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
            assert_eq!(
                sub.as_deref(),
                Some(&*claims.sub),
                "claims_json disagrees with the verified claims"
            );
            let now = protocol::now_ms() / 1000;
            assert!(
                claims.exp.saturating_add(AuthConfig::default().leeway_secs) >= now,
                "expired token accepted"
            );
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!e.reason().is_empty());
            if let Some(signature) = token.rsplit('.').next().filter(|s| s.len() >= 16)
                && token.matches('.').count() == 2
            {
                assert!(
                    !message.contains(signature),
                    "the refusal quotes the token: {message}"
                );
            }
            let _ = e.to_reply();
        }
    }
}

/// `config`: TOML text, then optionally a line `#env` and `NAME=value` lines (the
/// `HOOKWIRE_*` variables; at most 16 are read).
///
/// `Config::from_toml_str` never panics; a config it returns is valid, every variable
/// given is reported as applied or unknown (never both), and it survives a round trip
/// (serialized to TOML and loaded again without overrides, it is the same config).
pub fn config(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let (toml_text, env_text) = match text.split_once("\n#env\n") {
        Some((toml_text, env_text)) => (toml_text, env_text),
        None => (text.as_ref(), ""),
    };
    let pairs: Vec<(&str, &str)> = env_text
        .lines()
        .filter_map(|line| line.split_once('='))
        .take(16)
        .collect();
    let names: BTreeSet<&str> = pairs.iter().map(|(k, _)| *k).collect();
    let env = EnvOverrides::from_pairs(pairs);
    let Ok(loaded) = Config::from_toml_str(toml_text, None, &env) else {
        return;
    };
    assert_eq!(loaded.config.validate(), Ok(()), "an invalid config loaded");
    for var in loaded.applied_env.iter().chain(&loaded.unknown_env) {
        assert!(names.contains(var.as_str()), "{var} was never given");
    }
    for var in &loaded.applied_env {
        assert!(
            !loaded.unknown_env.contains(var),
            "{var} applied and unknown"
        );
    }
    let again = toml::to_string(&loaded.config).expect("a loaded config serializes");
    let reloaded = Config::from_toml_str(&again, None, &EnvOverrides::default())
        .unwrap_or_else(|e| panic!("a loaded config does not load again: {e}\n{again}"));
    assert_eq!(
        reloaded.config, loaded.config,
        "round trip changed the config"
    );
}

/// `plugin_answer`: one `on-publish` answer, a line per part, applied to the
/// publication `{"text":"hi"}` on `chat:room` with meta `{"lang":"en"}`:
///
/// ```text
/// max 4096            max_output_bytes (default 4096)
/// allow | refuse <reason> | modify
/// data <json>         the edit's new data (raw bytes, so not necessarily UTF-8)
/// meta <key> <json>   an add-meta field
/// set <ch> <ch> ...   set-channels (`set` alone: an empty list)
/// add <ch>            an add-channels entry
/// emit <ch> <json>    an emitted publication
/// emeta <key> <json>  a meta field of the last emitted publication
/// ```
///
/// `apply_publish` never panics; on `Err` (and for allow or refuse) the publication and
/// the emits are untouched; an applied edit leaves valid JSON data and meta, distinct
/// target channels that all exist, at most 64 emits, each valid, and reports what it did.
pub fn plugin_answer(input: &[u8]) {
    let (max, answer) = decode_answer(input);
    let edit = match &answer {
        PublishDecision::Modify(edit) => Some((
            edit.data.is_some(),
            edit.emit
                .iter()
                .map(|e| e.channel.clone())
                .collect::<Vec<_>>(),
        )),
        _ => None,
    };
    let refusal = match &answer {
        PublishDecision::Refuse(reason) => Some(reason.clone()),
        _ => None,
    };
    let original = publication();
    let mut state = original.clone();
    let mut emits = Vec::new();
    let outcome =
        answer::apply_publish(answer, "fuzz", max, &mut state, &mut emits, &valid_channel);
    let unchanged = |state: &PublicationState, emits: &[answer::Emit]| {
        assert_eq!(state.data.get(), original.data.get(), "data changed");
        assert_eq!(state.channels, original.channels, "channels changed");
        assert_eq!(
            state.meta_json().map(|m| m.get().to_string()),
            original.meta_json().map(|m| m.get().to_string()),
            "meta changed"
        );
        assert!(emits.is_empty(), "emitted");
    };
    match outcome {
        Err(_) | Ok(PublishOutcome::Unchanged) => unchanged(&state, &emits),
        Ok(PublishOutcome::Refused(reason)) => {
            assert_eq!(Some(reason), refusal);
            unchanged(&state, &emits);
        }
        Ok(PublishOutcome::Modified(changes)) => {
            let (new_data, emitted) = edit.expect("only an edit modifies");
            assert_eq!(changes.data, new_data);
            serde_json::from_str::<serde::de::IgnoredAny>(state.data.get()).expect("data is JSON");
            if !state.meta.is_empty() {
                let meta = state.meta_json().expect("meta is a JSON object");
                // JSON text, as `data` is: numbers past f64's range (`1e999`) are valid JSON
                // that serde_json's `Value` refuses, so read the values raw.
                let object: std::collections::HashMap<String, Box<serde_json::value::RawValue>> =
                    serde_json::from_str(meta.get()).expect("meta is a JSON object");
                assert_eq!(object.len(), state.meta.len(), "meta keys repeat");
            }
            assert!(!state.channels.is_empty(), "no target channel");
            let distinct: BTreeSet<&String> = state.channels.iter().collect();
            assert_eq!(distinct.len(), state.channels.len(), "a channel twice");
            for c in &state.channels {
                assert_eq!(valid_channel(c), Ok(()));
            }
            match &changes.rerouted {
                Some(channels) => assert_eq!(channels, &state.channels),
                None => assert_eq!(state.channels, original.channels),
            }
            assert_eq!(changes.emitted, emitted);
            assert!(emits.len() <= 64, "{} emits", emits.len());
            for e in &emits {
                assert_eq!(valid_channel(&e.channel), Ok(()));
                if let Some(meta) = &e.meta {
                    serde_json::from_str::<
                        std::collections::HashMap<String, Box<serde_json::value::RawValue>>,
                    >(meta.get())
                    .expect("emit meta is a JSON object");
                }
            }
        }
    }
}

fn publication() -> PublicationState {
    let raw = |json: &str| RawValue::from_string(json.into()).expect("JSON");
    PublicationState {
        source: PublishSource::Client,
        channels: vec!["chat:room".into()],
        user: Some("alice".into()),
        data: raw(r#"{"text":"hi"}"#),
        meta: vec![("lang".into(), raw(r#""en""#))],
        connection: None,
    }
}

/// The shipped namespaces (`chat`, `user`, `news`), as the publish pipeline checks them.
fn valid_channel(channel: &str) -> Result<(), String> {
    static NAMESPACES: OnceLock<Namespaces> = OnceLock::new();
    let namespaces = NAMESPACES.get_or_init(|| Namespaces::new(&Config::default().namespaces, ""));
    crate::access::resolve(namespaces, channel)
        .map(|_| ())
        .map_err(|e| e.message)
}

fn decode_answer(input: &[u8]) -> (usize, PublishDecision) {
    let mut max = 4096;
    let mut decision = Decision::Allow;
    let mut edit = PublishEdit {
        data: None,
        add_meta: Vec::new(),
        set_channels: None,
        add_channels: Vec::new(),
        emit: Vec::new(),
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let field = |rest: &[u8]| {
        let (key, value) = split_word(rest);
        MetaField {
            key: text(key),
            value: text(value),
        }
    };
    for line in input.split(|b| *b == b'\n') {
        let (word, rest) = split_word(line);
        match word {
            b"max" => max = text(rest).trim().parse().unwrap_or(max),
            b"allow" => decision = Decision::Allow,
            b"refuse" => decision = Decision::Refuse(text(rest)),
            b"modify" => decision = Decision::Modify,
            b"data" => edit.data = Some(rest.to_vec()),
            b"meta" => edit.add_meta.push(field(rest)),
            b"set" => {
                edit.set_channels = Some(
                    rest.split(|b| *b == b' ')
                        .filter(|c| !c.is_empty())
                        .map(text)
                        .collect(),
                )
            }
            b"add" => edit.add_channels.push(text(rest)),
            b"emit" => {
                let (channel, data) = split_word(rest);
                edit.emit.push(ExtraPublication {
                    channel: text(channel),
                    data: data.to_vec(),
                    meta: Vec::new(),
                });
            }
            b"emeta" => {
                if let Some(last) = edit.emit.last_mut() {
                    last.meta.push(field(rest));
                }
            }
            _ => {}
        }
    }
    let decision = match decision {
        Decision::Allow => PublishDecision::Allow,
        Decision::Refuse(reason) => PublishDecision::Refuse(reason.as_str().into()),
        Decision::Modify => PublishDecision::Modify(edit),
    };
    (max, decision)
}

/// The decision line; `modify` carries the parts of every other line, before or after it.
enum Decision {
    Allow,
    Refuse(String),
    Modify,
}

/// The first space-separated word of `line` and the rest.
fn split_word(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|b| *b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[]),
    }
}
