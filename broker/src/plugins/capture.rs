//! Recording real events for `hookwire plugin test`: `POST /admin/plugins/capture` starts
//! a bounded, sampled recording of one namespace's publications and subscriptions (claims
//! the request names are redacted), `GET` answers what was recorded so far as JSONL in the format
//! `plugin test` reads, `DELETE` stops it. A team replays yesterday's traffic through a
//! new version (`hookwire plugin test --config hookwire.toml --namespace chat --events
//! captured.jsonl`).
//!
//! Costs nothing while off: one relaxed atomic load per publication or subscription.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// At most this many events in one recording.
pub const MAX_EVENTS: usize = 10_000;

/// `POST /admin/plugins/capture`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    pub namespace: String,
    /// Events kept, at most [`MAX_EVENTS`] (default 1,000).
    #[serde(default = "default_max")]
    pub max_events: usize,
    /// Share of the namespace's publications recorded, 1 to 100 (default 100).
    #[serde(default = "default_percent")]
    pub sample_percent: u8,
    /// Claims replaced by `"[redacted]"` in the recorded claims (e.g. `email`).
    #[serde(default)]
    pub redact_claims: Vec<String>,
}

fn default_max() -> usize {
    1_000
}

fn default_percent() -> u8 {
    100
}

impl CaptureRequest {
    /// Why the request cannot start, in words.
    pub fn problem(&self) -> Option<String> {
        if self.namespace.is_empty() {
            return Some("namespace is required (the part of the channel names before ':')".into());
        }
        if self.max_events == 0 || self.max_events > MAX_EVENTS {
            return Some(format!("max_events must be 1 to {MAX_EVENTS}"));
        }
        if !(1..=100).contains(&self.sample_percent) {
            return Some("sample_percent must be 1 to 100".into());
        }
        None
    }
}

/// What a recording holds now.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureStatus {
    pub namespace: String,
    pub recording: bool,
    pub events: usize,
    pub max_events: usize,
    pub sample_percent: u8,
    /// Events of the namespace seen while recording (recorded or not).
    pub seen: u64,
}

struct Recording {
    request: CaptureRequest,
    lines: Vec<String>,
    seen: u64,
    recording: bool,
}

/// One event (a publication from the pipeline, a subscription from a session), as it
/// is handed to the capture.
pub struct Seen<'a> {
    /// `publish` or `subscribe`.
    pub hook: &'static str,
    pub namespace: &'a str,
    pub channel: &'a str,
    /// `client`, `api` or `nats` (publications).
    pub source: &'static str,
    pub user: Option<&'a str>,
    /// The token's claims as JSON (clients with plugins on).
    pub claims: Option<&'a str>,
    /// The payload (publications).
    pub data: Option<&'a RawValue>,
}

#[derive(Default)]
pub struct Capture {
    active: AtomicBool,
    recording: Mutex<Option<Recording>>,
}

impl Capture {
    /// Starts a recording (replacing one in progress).
    pub fn start(&self, request: CaptureRequest) -> CaptureStatus {
        let mut recording = self.recording.lock();
        let started = Recording {
            request,
            lines: Vec::new(),
            seen: 0,
            recording: true,
        };
        let status = status(&started);
        *recording = Some(started);
        self.active.store(true, Ordering::Release);
        status
    }

    /// Stops recording; what was recorded stays readable.
    pub fn stop(&self) -> Option<CaptureStatus> {
        self.active.store(false, Ordering::Release);
        let mut recording = self.recording.lock();
        let r = recording.as_mut()?;
        r.recording = false;
        Some(status(r))
    }

    /// The recording's status and its lines (JSONL, `plugin test`'s format).
    pub fn read(&self) -> Option<(CaptureStatus, String)> {
        let recording = self.recording.lock();
        let r = recording.as_ref()?;
        let mut text = r.lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        Some((status(r), text))
    }

    /// An event on its way into the plugin chain.
    pub fn event(&self, seen: Seen<'_>) {
        if !self.active.load(Ordering::Relaxed) {
            return;
        }
        let mut recording = self.recording.lock();
        let Some(r) = recording.as_mut().filter(|r| r.recording) else {
            return;
        };
        if r.request.namespace != seen.namespace {
            return;
        }
        r.seen += 1;
        if r.request.sample_percent < 100
            && rand::random_range(0..100u8) >= r.request.sample_percent
        {
            return;
        }
        r.lines
            .push(line(&seen, &r.request.redact_claims).to_string());
        if r.lines.len() >= r.request.max_events {
            r.recording = false;
            self.active.store(false, Ordering::Release);
        }
    }
}

fn status(r: &Recording) -> CaptureStatus {
    CaptureStatus {
        namespace: r.request.namespace.clone(),
        recording: r.recording,
        events: r.lines.len(),
        max_events: r.request.max_events,
        sample_percent: r.request.sample_percent,
        seen: r.seen,
    }
}

/// The event as `plugin test` reads it.
fn line(seen: &Seen<'_>, redact: &[String]) -> Value {
    let mut event = json!({"hook": seen.hook, "channel": seen.channel});
    if let Some(data) = seen.data {
        event["source"] = json!(seen.source);
        event["data"] = serde_json::from_str(data.get()).unwrap_or(Value::Null);
    }
    if let Some(user) = seen.user {
        event["user"] = json!(user);
    }
    if let Some(claims) = seen.claims {
        let mut claims: Value = serde_json::from_str(claims).unwrap_or(Value::Null);
        if let Value::Object(fields) = &mut claims {
            for name in redact {
                if let Some(v) = fields.get_mut(name) {
                    *v = json!("[redacted]");
                }
            }
        }
        event["claims"] = claims;
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(max: usize, percent: u8) -> CaptureRequest {
        CaptureRequest {
            namespace: "chat".into(),
            max_events: max,
            sample_percent: percent,
            redact_claims: vec!["email".into()],
        }
    }

    fn publish(capture: &Capture, ns: &str, n: u32) {
        let data = RawValue::from_string(format!(r#"{{"n":{n}}}"#)).unwrap();
        capture.event(Seen {
            hook: "publish",
            namespace: ns,
            channel: &format!("{ns}:a"),
            source: "client",
            user: Some("alice"),
            claims: Some(r#"{"sub":"alice","email":"a@example.com","role":"x"}"#),
            data: Some(&data),
        });
    }

    #[test]
    fn records_one_namespace_up_to_its_bound_with_claims_redacted() {
        let capture = Capture::default();
        publish(&capture, "chat", 0);
        assert!(capture.read().is_none(), "nothing before a start");
        capture.start(request(2, 100));
        publish(&capture, "news", 1);
        for n in 2..6 {
            publish(&capture, "chat", n);
        }
        let (status, text) = capture.read().unwrap();
        assert_eq!((status.events, status.recording), (2, false));
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["data"]["n"], 2);
        assert_eq!(lines[1]["data"]["n"], 3);
        assert_eq!(lines[0]["claims"]["email"], "[redacted]");
        assert_eq!(lines[0]["claims"]["role"], "x");
        assert_eq!(lines[0]["hook"], "publish");
    }

    #[test]
    fn samples_a_share() {
        let capture = Capture::default();
        capture.start(request(MAX_EVENTS, 10));
        for n in 0..2_000 {
            publish(&capture, "chat", n);
        }
        let (status, _) = capture.read().unwrap();
        assert_eq!(status.seen, 2_000);
        assert!((100..=320).contains(&status.events), "{}", status.events);
        assert!(capture.stop().is_some());
    }

    #[test]
    fn bad_requests_say_why() {
        assert!(request(0, 100).problem().is_some());
        assert!(request(10, 0).problem().is_some());
        assert!(request(10, 100).problem().is_none());
    }
}
