//! Running a shadow version beside the live one: the shadow gets a copy of the event,
//! its answer is judged as the live version's is ([`Verdict`]) and compared, and never
//! applied. Its failures are counted under its own labels and never touch the event.

use super::answer::{self, Emit, PublishOutcome};
use super::host::{
    ConnectDecision, Decision, EntryEdit, HistoryDecision, PublicationState, RefreshDecision,
};
use super::meta;
use super::rollout::{Compared, Shadow, Verdict};
use super::runtime::Plugins;
use super::set::LoadedPlugin;
use super::types::Error;

/// An answer judged: its verdict, and the refusal's reason when it refused.
pub(super) type Judged<'a> = (Verdict, Option<&'a str>);

impl Plugins {
    /// The answer of `p`, the version picked for this event (`default` when it lacks
    /// the event's hook), once `shadow` (the live version's, if any), when it has the
    /// hook, ran `call` on the same input and the two verdicts were compared.
    pub(super) fn answer_beside_shadow<T>(
        &self,
        shadow: Option<&Shadow>,
        p: &LoadedPlugin,
        event: &Compared<'_>,
        default: T,
        call: impl Fn(&LoadedPlugin) -> Result<T, Error>,
        judge: fn(&T) -> Judged<'_>,
    ) -> Result<T, Error> {
        let answer = if p.has(event.hook) {
            call(p)
        } else {
            Ok(default)
        };
        if let Some(shadow) = shadow.filter(|s| s.plugin.has(event.hook)) {
            let live = verdict(&answer, judge);
            self.compare_shadow(shadow, event, &live, |sp| {
                call(sp).map(|a| owned(judge(&a)))
            });
        }
        answer
    }

    /// Runs the shadow (`run`, on its own loaded version: its answer judged, or its
    /// failure) and records how its verdict compares with the live one's, in its diff
    /// and in `hookwire_plugin_shadow_total`.
    pub(super) fn compare_shadow(
        &self,
        shadow: &Shadow,
        event: &Compared<'_>,
        live: &Verdict,
        run: impl FnOnce(&LoadedPlugin) -> Result<(Verdict, Option<String>), Error>,
    ) {
        let p = &shadow.plugin;
        let (verdict, reason) = run(p).unwrap_or_else(|e| {
            use std::sync::atomic::Ordering::Relaxed;
            p.stats.errors.fetch_add(1, Relaxed);
            if matches!(e, Error::Timeout { .. }) {
                p.stats.timeouts.fetch_add(1, Relaxed);
            }
            self.metrics.plugin_error(p.labels(e.kind()));
            tracing::debug!(
                plugin = %p.id.name, version = p.id.version.as_str(), hook = event.hook.label(),
                error = e.to_string().as_str(), "Shadow plugin call failed (not applied)"
            );
            (Verdict::Failed, Some(format!("it {e}")))
        });
        let outcome = shadow.diff.record(event, live, &verdict, reason.as_deref());
        self.metrics
            .plugin_shadow(&p.settings.name, outcome.as_deref().unwrap_or("agree"));
    }

    /// The shadow's publish hook on its copy of the publication, applied to the copy
    /// and judged as the live version's answer would be.
    pub(super) fn shadow_publish(
        &self,
        p: &LoadedPlugin,
        copy: PublicationState,
        valid_channel: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<(Verdict, Option<String>), Error> {
        let mut slot = Some(copy);
        let answer = self.call_publish(p, &mut slot);
        let Some(mut copy) = slot else {
            unreachable!("the publication comes back from the store, whatever the call did")
        };
        let mut emits = Vec::new();
        let max = p.settings.limits.max_output_bytes;
        let outcome = answer::apply_publish(
            answer?,
            &p.id.name,
            max,
            &mut copy,
            &mut emits,
            valid_channel,
        )?;
        Ok(owned(judge_publish(&outcome, &copy, &emits)))
    }
}

/// A judged answer that outlives the answer.
pub(super) fn owned((verdict, reason): Judged<'_>) -> (Verdict, Option<String>) {
    (verdict, reason.map(str::to_string))
}

/// The verdict of a call's result: its answer judged, or `Failed`.
pub(super) fn verdict<T>(answer: &Result<T, Error>, judge: impl Fn(&T) -> Judged<'_>) -> Verdict {
    answer.as_ref().map_or(Verdict::Failed, |a| judge(a).0)
}

/// A publish answer, applied to `publication` (with `emits`, what this plugin emitted).
pub(super) fn judge_publish<'a>(
    outcome: &'a PublishOutcome,
    publication: &PublicationState,
    emits: &[Emit],
) -> Judged<'a> {
    match outcome {
        PublishOutcome::Unchanged => (Verdict::Allowed, None),
        PublishOutcome::Refused(refusal) => (Verdict::Refused, Some(&refusal.reason)),
        PublishOutcome::Modified(_) => {
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
            (Verdict::modified(&parts), None)
        }
    }
}

pub(super) fn judge_connect(answer: &ConnectDecision) -> Judged<'_> {
    match answer {
        ConnectDecision::Accept => (Verdict::Allowed, None),
        ConnectDecision::AcceptWithMeta(json) => (Verdict::modified(&[json.as_bytes()]), None),
        ConnectDecision::Refuse(refusal) => (Verdict::Refused, Some(&refusal.reason)),
    }
}

pub(super) fn judge_refresh(answer: &RefreshDecision) -> Judged<'_> {
    match answer {
        RefreshDecision::Allow => (Verdict::Allowed, None),
        RefreshDecision::ReplaceMeta(json) => (Verdict::modified(&[json.as_bytes()]), None),
        RefreshDecision::Refuse(refusal) => (Verdict::Refused, Some(&refusal.reason)),
    }
}

/// A history answer: the edits it makes (all `keep` is no change).
pub(super) fn judge_history(answer: &HistoryDecision) -> Judged<'_> {
    match answer {
        HistoryDecision::Allow => (Verdict::Allowed, None),
        HistoryDecision::Refuse(refusal) => (Verdict::Refused, Some(&refusal.reason)),
        HistoryDecision::Edit(edits) if edits.iter().all(|e| matches!(e, EntryEdit::Keep)) => {
            (Verdict::Allowed, None)
        }
        HistoryDecision::Edit(edits) => {
            let parts: Vec<&[u8]> = edits
                .iter()
                .map(|e| match e {
                    EntryEdit::Keep => &b"keep"[..],
                    EntryEdit::Drop => &b"drop"[..],
                    EntryEdit::Replace(data) => data.as_slice(),
                })
                .collect();
            (Verdict::modified(&parts), None)
        }
    }
}

pub(super) fn judge_decision(answer: &Decision) -> Judged<'_> {
    match answer {
        Decision::Allow => (Verdict::Allowed, None),
        Decision::Refuse(refusal) => (Verdict::Refused, Some(&refusal.reason)),
    }
}
