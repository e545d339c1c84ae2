//! The plugin threads: hook calls of connections run here, not on the async workers, so
//! a plugin that uses its whole deadline delays only the events waiting for a plugin,
//! never other connections' I/O. (A publish chain of plugins that have stayed fast runs
//! on the publisher's own thread instead: `Plugins::publish_chain`.)
//!
//! A fixed number of threads (`plugins.threads`) take jobs from one bounded queue
//! (`plugins.queue`). A job that finds the queue full is refused at once
//! ([`Overloaded`]): the caller answers `unavailable` rather than queueing without
//! bound. The caller awaits the answer on a oneshot channel, holding no lock.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use parking_lot::Mutex;

type Job = Box<dyn FnOnce() + Send>;

/// The queue of the plugin threads was full, or they are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded;

/// A fixed pool of threads running hook calls.
pub struct PluginThreads {
    jobs: SyncSender<Job>,
}

impl PluginThreads {
    /// Starts `threads` threads (at least 1) over a queue of `queue` waiting jobs.
    pub fn start(threads: usize, queue: usize) -> std::io::Result<Self> {
        let (jobs, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("plugin-{i}"))
                .spawn(move || work(&rx))?;
        }
        Ok(Self { jobs })
    }

    /// Runs `f` on a plugin thread and waits for its answer without blocking the caller's
    /// thread. `Err(Overloaded)` at once when the queue is full.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, Overloaded> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => return Err(Overloaded),
        }
        // A job that panicked dropped its sender: the call did not answer.
        rx.await.map_err(|_| Overloaded)
    }
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        // Idle threads queue on the lock; the one holding it waits for the next job.
        let job = rx.lock().recv();
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_run_off_the_caller_and_a_full_queue_is_refused_at_once() {
        let threads = Arc::new(PluginThreads::start(1, 1).unwrap());
        let caller = std::thread::current().id();
        let ran_on = threads.run(|| std::thread::current().id()).await.unwrap();
        assert_ne!(ran_on, caller);

        // One job holds the thread, one waits in the queue: a third is refused.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let busy = tokio::spawn({
            let threads = threads.clone();
            async move {
                threads
                    .run(move || {
                        let _ = started_tx.send(());
                        let _ = hold.recv_timeout(std::time::Duration::from_secs(10));
                        1
                    })
                    .await
            }
        });
        started.await.unwrap();
        // Polled once, the second job is in the queue (the thread is busy).
        let mut queued = Box::pin(threads.run(|| 2));
        let first_poll = tokio::time::timeout(std::time::Duration::ZERO, &mut queued).await;
        assert!(first_poll.is_err(), "it waits for the busy thread");
        assert_eq!(
            threads.run(|| 3).await,
            Err(Overloaded),
            "a full queue refuses"
        );
        release.send(()).unwrap();
        assert_eq!(busy.await.unwrap(), Ok(1));
        assert_eq!(queued.await, Ok(2));
    }
}
