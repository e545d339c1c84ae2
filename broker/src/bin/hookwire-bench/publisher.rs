//! A publisher connection: publishes at a fixed rate or as fast as a window of
//! unanswered publishes allows, each message stamped with its send time.
//!
//! Every publish carries an `id`, so the broker answers each with `published` (or
//! `error`); counting the answers is what bounds the in-flight window and what the
//! coordinator uses as the number of messages each subscriber should have received.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use crate::client::Ws;
use crate::ipc::{PublishTotals, PublisherSpec};
use crate::stats::now_us;

/// After the run, how long to wait for the answers to publishes still in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// `PublishOnce` waits this long for its answer.
const ONCE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most publishes sent in one go when a fixed-rate schedule has fallen behind.
const MAX_BURST: u64 = 1_000;
/// Timer granularity for fixed rates: faster rates send several messages per tick.
const MIN_TICK: Duration = Duration::from_millis(1);

pub enum PubCmd {
    Run {
        duration: Duration,
        reply: oneshot::Sender<PublishTotals>,
    },
    Once {
        reply: oneshot::Sender<PublishTotals>,
    },
}

struct Publisher {
    ws: Ws,
    spec: PublisherSpec,
    next_id: u64,
    /// `"x"` padding that makes `data` `spec.payload` bytes long.
    pad: String,
    broken: bool,
}

/// What one frame from the broker means to a publisher.
enum Reply {
    Ack,
    Error(String),
    Other,
    Broken,
}

fn classify(frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Reply {
    match frame {
        Some(Ok(Message::Text(text))) => {
            let b = text.as_bytes();
            if b.windows(18).any(|w| w == br#""type":"published""#) {
                Reply::Ack
            } else if b.windows(14).any(|w| w == br#""type":"error""#) {
                Reply::Error(text.as_str().to_string())
            } else {
                Reply::Other
            }
        }
        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Reply::Broken,
        Some(Ok(_)) => Reply::Other,
    }
}

/// The `p` of a `{"t":<µs>,"p":"xxx…"}` payload of `payload` bytes (at least 29: the
/// time stamp has 16 digits until 2286).
pub fn padding(payload: usize) -> String {
    let base = format!(r#"{{"t":{},"p":""}}"#, now_us()).len();
    "x".repeat(payload.saturating_sub(base))
}

/// Runs one publisher connection, serving commands until the worker drops the sender.
pub async fn publisher_task(
    ws: Ws,
    spec: PublisherSpec,
    mut commands: mpsc::UnboundedReceiver<PubCmd>,
) {
    let mut p = Publisher {
        ws,
        pad: padding(spec.payload),
        spec,
        next_id: 100,
        broken: false,
    };
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(PubCmd::Run { duration, reply }) => {
                    let _ = reply.send(p.run(duration).await);
                }
                Some(PubCmd::Once { reply }) => {
                    let _ = reply.send(p.once().await);
                }
                None => break,
            },
            // Between commands: late answers and pings; notice a broken connection.
            frame = p.ws.next(), if !p.broken => {
                if matches!(classify(frame), Reply::Broken) {
                    p.broken = true;
                }
            }
        }
    }
}

impl Publisher {
    /// The next publish frame, stamped now.
    fn frame(&mut self) -> (Message, u64) {
        let t = now_us();
        let id = self.next_id;
        self.next_id += 1;
        let text = format!(
            r#"{{"type":"publish","id":{id},"channel":"{}","data":{{"t":{t},"p":"{}"}}}}"#,
            self.spec.channel, self.pad
        );
        (Message::text(text), t)
    }

    fn broken_totals(&self) -> PublishTotals {
        PublishTotals {
            broken: 1,
            ..PublishTotals::default()
        }
    }

    // Long on purpose (bench code): one select! loop over sends, answers and the clock.
    /// Publishes for `duration`, then waits (bounded) for the outstanding answers.
    async fn run(&mut self, duration: Duration) -> PublishTotals {
        if self.broken {
            return self.broken_totals();
        }
        let mut t = PublishTotals::default();
        let rate = self.spec.rate;
        let window = self.spec.window.max(1) as u64;
        let start = Instant::now();
        let deadline = start + duration;
        let period = if rate > 0.0 {
            Duration::from_secs_f64(1.0 / rate).max(MIN_TICK)
        } else {
            duration
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut in_flight = 0u64;
        t.started_us = now_us();

        // Bounded by the deadline: every iteration waits on the timer, an answer, or
        // the deadline itself.
        'run: while Instant::now() < deadline {
            let want = if rate > 0.0 {
                let due = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
                due.saturating_sub(t.sent)
            } else {
                u64::MAX
            };
            let room = window - in_flight;
            if rate > 0.0 && want > room {
                t.window_full += 1;
            }
            let n = want.min(room).min(MAX_BURST);
            if n > 0 {
                for _ in 0..n {
                    let (frame, _) = self.frame();
                    if self.ws.feed(frame).await.is_err() {
                        self.broken = true;
                        break 'run;
                    }
                }
                if self.ws.flush().await.is_err() {
                    self.broken = true;
                    break 'run;
                }
                t.sent += n;
                in_flight += n;
            }
            tokio::select! {
                _ = tick.tick(), if rate > 0.0 => {}
                _ = tokio::time::sleep_until(deadline) => break,
                frame = self.ws.next() => match classify(frame) {
                    Reply::Ack => { t.acked += 1; in_flight = in_flight.saturating_sub(1); }
                    Reply::Error(e) => {
                        t.errors += 1;
                        in_flight = in_flight.saturating_sub(1);
                        t.first_error.get_or_insert(e);
                    }
                    Reply::Other => {}
                    Reply::Broken => { self.broken = true; break; }
                },
            }
        }
        t.stopped_us = now_us();

        let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
        while in_flight > 0 && !self.broken {
            match tokio::time::timeout_at(drain_deadline, self.ws.next()).await {
                Err(_) => break,
                Ok(frame) => match classify(frame) {
                    Reply::Ack => {
                        t.acked += 1;
                        in_flight -= 1;
                    }
                    Reply::Error(e) => {
                        t.errors += 1;
                        in_flight -= 1;
                        t.first_error.get_or_insert(e);
                    }
                    Reply::Other => {}
                    Reply::Broken => self.broken = true,
                },
            }
        }
        t.unanswered = in_flight;
        t.broken = u64::from(self.broken);
        t
    }

    /// Publishes one message and waits (bounded) for its answer.
    async fn once(&mut self) -> PublishTotals {
        if self.broken {
            return self.broken_totals();
        }
        let mut t = PublishTotals::default();
        let (frame, stamp) = self.frame();
        t.started_us = stamp;
        t.stamp_us = stamp;
        if self.ws.send(frame).await.is_err() {
            self.broken = true;
            return self.broken_totals();
        }
        t.sent = 1;
        let deadline = Instant::now() + ONCE_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => {
                    t.unanswered = 1;
                    break;
                }
                Ok(frame) => match classify(frame) {
                    Reply::Ack => {
                        t.acked = 1;
                        break;
                    }
                    Reply::Error(e) => {
                        t.errors = 1;
                        t.first_error = Some(e);
                        break;
                    }
                    Reply::Other => {}
                    Reply::Broken => {
                        self.broken = true;
                        t.broken = 1;
                        t.unanswered = 1;
                        break;
                    }
                },
            }
        }
        t.stopped_us = now_us();
        t
    }
}
