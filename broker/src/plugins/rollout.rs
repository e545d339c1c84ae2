//! Rolling out a new version of a plugin: a canary that takes a stable share of the
//! events, and a shadow that runs on a copy of each event, its answer compared with the
//! live version's and never applied. What the shadow decided differently is counted by
//! kind and kept as a bounded sample for `/admin/plugins`.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use super::config::CanaryBy;
use super::set::LoadedPlugin;
use super::settings::Split;
use super::types::Hook;

/// Which part a loaded version plays (the `role` label of the per-plugin metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Live,
    Canary,
    Shadow,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Canary => "canary",
            Self::Shadow => "shadow",
        }
    }
}

/// A module's versions beside the live one.
#[derive(Default)]
pub struct Rollout {
    pub canary: Option<Canary>,
    pub shadow: Option<Shadow>,
}

pub struct Canary {
    pub plugin: Arc<LoadedPlugin>,
    pub split: Split,
}

pub struct Shadow {
    pub plugin: Arc<LoadedPlugin>,
    /// Kept across reloads while the shadow version stays the same.
    pub diff: Arc<ShadowDiff>,
}

/// Who an event is about: what a canary's share is stable by.
#[derive(Clone, Copy, Default)]
pub struct EventKey<'a> {
    pub connection: Option<&'a str>,
    pub channel: Option<&'a str>,
}

impl Canary {
    /// Whether this event goes to the canary (see [`in_share`]).
    pub fn takes(&self, key: EventKey<'_>) -> bool {
        in_share(&self.plugin.settings.name, self.split, key)
    }
}

/// Whether an event falls in a canary's share: a hash of the plugin's name and the
/// event's connection (or channel), so the same connection (or channel) always lands
/// on the same version, and different plugins' canaries take different cohorts.
pub fn in_share(plugin: &str, split: Split, key: EventKey<'_>) -> bool {
    let percent = u64::from(split.percent);
    if percent == 0 {
        return false;
    }
    if percent >= 100 {
        return true;
    }
    let by = match split.by {
        CanaryBy::Connection => key.connection.or(key.channel),
        CanaryBy::Channel => key.channel.or(key.connection),
    };
    let Some(by) = by else {
        return false;
    };
    // SipHash with fixed keys: stable for a build, whichever thread asks.
    let mut h = std::hash::DefaultHasher::new();
    plugin.hash(&mut h);
    by.hash(&mut h);
    h.finish() % 100 < percent
}

/// What one version decided about one event, as compared between live and shadow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed as it was.
    Allowed,
    /// Allowed with changes (the digest says which: two versions that changed an event
    /// differently disagree).
    Modified(u64),
    Refused,
    /// The call failed (trap, deadline, memory, bad answer).
    Failed,
}

impl Verdict {
    fn label(&self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Modified(_) => "modified",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }

    /// A digest of what a modification produced.
    pub fn modified(parts: &[&[u8]]) -> Self {
        let mut h = std::hash::DefaultHasher::new();
        for part in parts {
            part.hash(&mut h);
        }
        Self::Modified(h.finish())
    }
}

/// Differing events kept per shadow.
const SAMPLE: usize = 20;

/// How a shadow's decisions compare with the live version's.
#[derive(Default)]
pub struct ShadowDiff {
    inner: Mutex<DiffInner>,
}

#[derive(Default)]
struct DiffInner {
    compared: u64,
    agreed: u64,
    /// `"live→shadow"` (e.g. `allowed→refused`, `modified→modified` for different
    /// changes) → count.
    differ: BTreeMap<String, u64>,
    sample: VecDeque<Difference>,
}

/// One event the shadow decided differently.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub at: u64,
    pub hook: &'static str,
    pub channel: Option<String>,
    pub user: Option<String>,
    pub live: &'static str,
    pub shadow: &'static str,
    /// The shadow's refusal or failure, when it gave one.
    pub shadow_reason: Option<String>,
}

/// The event a comparison is about.
pub struct Compared<'a> {
    pub hook: Hook,
    pub channel: Option<&'a str>,
    pub user: Option<&'a str>,
}

impl ShadowDiff {
    /// Records one comparison; returns the kind (`live→shadow`) when they differ.
    pub fn record(
        &self,
        event: &Compared<'_>,
        live: &Verdict,
        shadow: &Verdict,
        shadow_reason: Option<&str>,
    ) -> Option<String> {
        let mut d = self.inner.lock();
        d.compared += 1;
        if live == shadow {
            d.agreed += 1;
            return None;
        }
        let kind = format!("{}→{}", live.label(), shadow.label());
        *d.differ.entry(kind.clone()).or_default() += 1;
        if d.sample.len() == SAMPLE {
            d.sample.pop_front();
        }
        d.sample.push_back(Difference {
            at: crate::protocol::now_ms(),
            hook: event.hook.label(),
            channel: event.channel.map(str::to_string),
            user: event.user.map(str::to_string),
            live: live.label(),
            shadow: shadow.label(),
            shadow_reason: shadow_reason.map(|r| super::answer::clip(r).to_string()),
        });
        Some(kind)
    }

    pub fn view(&self) -> DiffView {
        let d = self.inner.lock();
        DiffView {
            compared: d.compared,
            agreed: d.agreed,
            differ: d.differ.clone(),
            sample: d.sample.iter().cloned().collect(),
        }
    }
}

/// `/admin/plugins`: a shadow's comparison so far.
#[derive(Debug, Serialize)]
pub struct DiffView {
    pub compared: u64,
    pub agreed: u64,
    pub differ: BTreeMap<String, u64>,
    /// The most recent differing events (at most 20), oldest first.
    pub sample: Vec<Difference>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_takes_a_stable_share_by_connection_or_channel() {
        fn key<'a>(c: &'a str, ch: &'a str) -> EventKey<'a> {
            EventKey {
                connection: Some(c),
                channel: Some(ch),
            }
        }
        let split = |percent, by| Split { percent, by };
        let ten = split(10, CanaryBy::Connection);
        let conns: Vec<String> = (0..10_000).map(|i| format!("client-{i}")).collect();
        let taken = conns
            .iter()
            .filter(|c| in_share("x", ten, key(c, "chat:a")))
            .count();
        assert!((800..1_200).contains(&taken), "{taken} of 10,000 at 10 %");
        // Stable: the same connection on another channel, the same answer.
        for c in conns.iter().take(200) {
            assert_eq!(
                in_share("x", ten, key(c, "chat:a")),
                in_share("x", ten, key(c, "chat:b"))
            );
        }
        // By channel: the connection does not matter.
        let by_channel = split(50, CanaryBy::Channel);
        assert_eq!(
            in_share("x", by_channel, key("a", "chat:room")),
            in_share("x", by_channel, key("b", "chat:room"))
        );
        // The ends, and an event with nothing to go by.
        assert!(!in_share(
            "x",
            split(0, CanaryBy::Connection),
            key("a", "b")
        ));
        assert!(in_share("x", split(100, CanaryBy::Channel), key("a", "b")));
        assert!(!in_share("x", ten, EventKey::default()));
    }

    #[test]
    fn a_diff_counts_kinds_and_keeps_a_bounded_sample() {
        let diff = ShadowDiff::default();
        let event = Compared {
            hook: Hook::Publish,
            channel: Some("chat:a"),
            user: Some("alice"),
        };
        assert_eq!(
            diff.record(&event, &Verdict::Allowed, &Verdict::Allowed, None),
            None
        );
        assert_eq!(
            diff.record(
                &event,
                &Verdict::modified(&[b"a"]),
                &Verdict::modified(&[b"a"]),
                None
            ),
            None
        );
        for _ in 0..30 {
            diff.record(&event, &Verdict::Allowed, &Verdict::Refused, Some("no"));
        }
        let kind = diff.record(
            &event,
            &Verdict::modified(&[b"a"]),
            &Verdict::modified(&[b"b"]),
            None,
        );
        assert_eq!(kind.as_deref(), Some("modified→modified"));
        let view = diff.view();
        assert_eq!((view.compared, view.agreed), (33, 2));
        assert_eq!(view.differ["allowed→refused"], 30);
        assert_eq!(view.differ["modified→modified"], 1);
        assert_eq!(view.sample.len(), SAMPLE);
        assert_eq!(view.sample.last().unwrap().live, "modified");
        assert_eq!(view.sample[0].shadow_reason.as_deref(), Some("no"));
    }
}
