//! Running a shadow version beside the live one: the shadow gets a copy of the event,
//! its answer is judged as the live version's is ([`Verdict`]) and compared, and never
//! applied. Its failures are counted under its own labels and never touch the event.

use super::answer::{self, Emit, PublishOutcome};
use super::host::{ConnectDecision, Decision, PublicationState};
use super::meta;
use super::rollout::{Compared, Shadow, Verdict};
use super::runtime::Plugins;
use super::set::LoadedPlugin;
use super::types::{Error, Hook};

impl Plugins {
    /// Runs the shadow (`run`, on its own loaded version) and records how its verdict
    /// compares with the live one's, in its diff and in `hookwire_plugin_shadow_total`.
    pub(super) fn compare_shadow(
        &self,
        shadow: &Shadow,
        event: &Compared<'_>,
        live: &Verdict,
        run: impl FnOnce(&LoadedPlugin) -> (Verdict, Option<String>),
    ) {
        let (verdict, reason) = run(&shadow.plugin);
        let outcome = shadow.diff.record(event, live, &verdict, reason.as_deref());
        self.metrics.plugin_shadow(
            &shadow.plugin.settings.name,
            outcome.as_deref().unwrap_or("agree"),
        );
    }

    /// A shadow's failed call: counted under its labels, logged at debug (the live
    /// version answered the event), and its description for the sample.
    pub(super) fn shadow_reason(
        &self,
        p: &LoadedPlugin,
        hook: Hook,
        error: Option<&Error>,
    ) -> Option<String> {
        use std::sync::atomic::Ordering::Relaxed;
        let e = error?;
        p.stats.errors.fetch_add(1, Relaxed);
        if matches!(e, Error::Timeout { .. }) {
            p.stats.timeouts.fetch_add(1, Relaxed);
        }
        self.metrics.plugin_error(p.labels(e.kind()));
        tracing::debug!(
            plugin = %p.id.name, version = p.id.version.as_str(), hook = hook.label(),
            error = e.to_string().as_str(), "Shadow plugin call failed (not applied)"
        );
        Some(format!("it {e}"))
    }

    /// The shadow's publish hook on its copy of the publication, judged as the live
    /// version's answer would be.
    pub(super) fn shadow_publish(
        &self,
        p: &LoadedPlugin,
        copy: PublicationState,
        valid_channel: &dyn Fn(&str) -> Result<(), String>,
    ) -> (Verdict, Option<String>) {
        let mut slot = Some(copy);
        let answer = self.call_publish(p, &mut slot);
        let Some(mut copy) = slot else {
            unreachable!("the publication comes back from the store, whatever the call did")
        };
        let mut emits = Vec::new();
        let max = p.settings.limits.max_output_bytes;
        let outcome = answer.and_then(|answer| {
            answer::apply_publish(
                answer,
                &p.id.name,
                max,
                &mut copy,
                &mut emits,
                valid_channel,
            )
        });
        let verdict = publish_verdict(&outcome, &copy, &emits);
        let reason = match &outcome {
            Ok(PublishOutcome::Refused(reason)) => Some(reason.clone()),
            Err(e) => self.shadow_reason(p, Hook::Publish, Some(e)),
            Ok(_) => None,
        };
        (verdict, reason)
    }
}

/// A publish answer, applied to `publication` (with `emits`, what this plugin emitted).
pub(super) fn publish_verdict(
    outcome: &Result<PublishOutcome, Error>,
    publication: &PublicationState,
    emits: &[Emit],
) -> Verdict {
    match outcome {
        Ok(PublishOutcome::Unchanged) => Verdict::Allowed,
        Ok(PublishOutcome::Refused(_)) => Verdict::Refused,
        Err(_) => Verdict::Failed,
        Ok(PublishOutcome::Modified(_)) => {
            let meta = meta::object_text(&publication.meta);
            let channels = publication.channels.join(",");
            let mut parts: Vec<&[u8]> = vec![
                publication.data.get().as_bytes(),
                channels.as_bytes(),
                meta.as_bytes(),
            ];
            for e in emits {
                parts.push(e.channel.as_bytes());
                parts.push(e.data.get().as_bytes());
                parts.push(e.meta.as_ref().map_or(&b""[..], |m| m.get().as_bytes()));
            }
            Verdict::modified(&parts)
        }
    }
}

pub(super) fn connect_verdict(answer: &Result<ConnectDecision, Error>) -> Verdict {
    match answer {
        Ok(ConnectDecision::Accept) => Verdict::Allowed,
        Ok(ConnectDecision::AcceptWithMeta(json)) => Verdict::modified(&[json.as_bytes()]),
        Ok(ConnectDecision::Refuse(_)) => Verdict::Refused,
        Err(_) => Verdict::Failed,
    }
}

pub(super) fn decision_verdict(answer: &Result<Decision, Error>) -> Verdict {
    match answer {
        Ok(Decision::Allow) => Verdict::Allowed,
        Ok(Decision::Refuse(_)) => Verdict::Refused,
        Err(_) => Verdict::Failed,
    }
}

/// The refusal reason of a subscribe or similar answer.
pub(super) fn refusal_of(answer: &Result<Decision, Error>) -> Option<String> {
    match answer {
        Ok(Decision::Refuse(reason)) => Some(reason.clone()),
        _ => None,
    }
}
