//! Watches the plugins directory: a change to a `.wasm` file (after a short quiet
//! period, so a file being copied is read once it is whole) reloads the plugins.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use super::reload::ReloadTrigger;
use super::runtime::Plugins;

/// How long the directory must be quiet before a reload.
const QUIET: Duration = Duration::from_millis(150);

/// Starts watching; the watcher lives until `shutdown`.
pub fn spawn(plugins: Arc<Plugins>, dir: &Path, shutdown: CancellationToken) -> notify::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        use notify::EventKind::{Access, Create, Modify, Remove};
        use notify::event::{AccessKind, AccessMode};
        if let Ok(event) = event
            // Not opens and reads: the reload itself reads the files.
            && matches!(
                event.kind,
                Create(_) | Modify(_) | Remove(_) | Access(AccessKind::Close(AccessMode::Write))
            )
            && event
                .paths
                .iter()
                .any(|p| p.extension().is_some_and(|e| e == "wasm"))
        {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    let shown = dir.display().to_string();
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = rx.recv() => if got.is_none() { return },
            }
            // Wait for quiet: every further event restarts the wait.
            loop {
                match tokio::time::timeout(QUIET, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            tracing::info!(dir = %shown, "Plugin files changed; reloading");
            let p = plugins.clone();
            // The reload logs its own report.
            let _ =
                tokio::task::spawn_blocking(move || p.reload_and_log(None, ReloadTrigger::Watcher))
                    .await;
        }
    });
    Ok(())
}
