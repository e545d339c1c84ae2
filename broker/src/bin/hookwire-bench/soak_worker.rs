//! A `soak` worker: subscribers that track their offsets (see `soak_track`) and, on
//! `Churn`, disconnect, reconnect and resubscribe with `recover` (paging `history since`
//! when the reply says `more`); or the publishers, round robin over many channels.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{BufReader, Lines, Stdin};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Dial, Ws};
use crate::ipc::{ChurnReport, Command, Event, Failures, PublishTotals, SoakRole, WorkerSpec};
use crate::soak_track::{Resubscribed, SoakState, publication_offsets};
use crate::stats::now_us;
use crate::worker::emit;

/// A churned client waits this long for the broker's close before dropping the socket.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// One `history` page must be answered within this.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Publications per `history` page.
const PAGE_LIMIT: u64 = 100;
/// After a run, how long publishers wait for the answers still due.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

type Stdin_ = Lines<BufReader<Stdin>>;

/// What a churned client reports back.
#[derive(Default)]
struct Outcome {
    failed: Option<(&'static str, String)>,
    recovered: Option<bool>,
    paged: bool,
    ms: u64,
}

/// A churn order: stay away this long, then report the reconnect.
type Order = (Duration, oneshot::Sender<Outcome>);
type ChurnTx = mpsc::UnboundedSender<Order>;

/// Everything one subscriber task needs.
struct Sub {
    index: usize,
    dial: Rc<Dial>,
    source: Ipv4Addr,
    user: String,
    channel: String,
    state: Rc<RefCell<SoakState>>,
    slots: Rc<Semaphore>,
}

pub async fn run(
    spec: WorkerSpec,
    stdin: Stdin_,
    dial: Dial,
    deadline: Instant,
) -> anyhow::Result<()> {
    match spec.soak.clone() {
        Some(SoakRole::Subscribers) => subscribers(spec, stdin, dial, deadline).await,
        Some(SoakRole::Publisher {
            channels,
            rate,
            window,
            payload,
        }) => {
            let p = PubPlan {
                rate,
                window,
                payload,
            };
            publishers(spec, stdin, dial, channels, p, deadline).await
        }
        None => bail!("not a soak worker"),
    }
}

async fn next_command(stdin: &mut Stdin_, deadline: Instant) -> anyhow::Result<Option<Command>> {
    let line = match tokio::time::timeout_at(deadline, stdin.next_line()).await {
        Err(_) => bail!("worker lifetime reached"),
        Ok(r) => r.context("reading a command")?,
    };
    line.map(|l| serde_json::from_str(&l).context("parsing a command"))
        .transpose()
}

/// Opens every subscriber (at most `connect_concurrency` at a time), then serves
/// `Churn` and `SoakFinal`.
async fn subscribers(
    spec: WorkerSpec,
    mut stdin: Stdin_,
    dial: Dial,
    deadline: Instant,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let state = Rc::new(RefCell::new(SoakState::default()));
    let slots = Rc::new(Semaphore::new(spec.connect_concurrency.max(1)));
    let dial = Rc::new(dial);
    let ips = &spec.source_ips;
    let mut subs = Vec::new();
    for g in &spec.subscribers {
        for _ in 0..g.count {
            let client = spec.first_client + subs.len();
            subs.push(Sub {
                index: 0,
                dial: dial.clone(),
                source: ips[client % ips.len()],
                user: format!("bench-{}-{client}", spec.run_id),
                channel: g.channel.clone(),
                state: state.clone(),
                slots: slots.clone(),
            });
        }
    }
    let mut failed = Failures::default();
    let mut churn: Vec<ChurnTx> = Vec::new();
    let mut attempts = futures_util::stream::iter(subs)
        .map(|s| async move {
            let frame = client::subscribe_frame(&s.channel, None);
            let r = client::open_with(&s.dial, s.source, &s.user, &s.channel, Some(frame)).await;
            (s, r)
        })
        .buffer_unordered(spec.connect_concurrency.max(1));
    while let Some((mut s, result)) = attempts.next().await {
        match result {
            Ok((ws, reply)) => {
                let reply: Value = serde_json::from_str(reply.as_deref().unwrap_or("{}"))?;
                let r = Resubscribed::parse(&reply);
                s.index = state.borrow_mut().add(s.channel.clone(), r.epoch, r.top);
                let (tx, rx) = mpsc::unbounded_channel();
                churn.push(tx);
                tokio::task::spawn_local(sub_task(s, ws, rx));
            }
            Err(e) => failed.add(e.class, || e.message),
        }
    }
    drop(attempts);
    emit(&Event::Ready {
        subscribers: churn.len(),
        publishers: 0,
        failed,
        elapsed_ms: started.elapsed().as_millis() as u64,
    });
    let limit = Duration::from_millis(spec.connect_timeout_ms) * 2 + Duration::from_secs(60);
    while let Some(command) = next_command(&mut stdin, deadline).await? {
        match command {
            Command::Churn {
                fraction,
                cycle,
                offline_ms,
            } => {
                let offline = Duration::from_millis(offline_ms);
                let report = churn_some(&churn, fraction, cycle, offline, limit + offline).await;
                emit(&Event::Churned(report));
            }
            Command::SoakFinal { tops } => {
                emit(&Event::SoakReport(state.borrow_mut().finish(&tops)));
            }
            Command::Exit => {
                emit(&Event::Bye);
                return Ok(());
            }
            other => bail!("a soak worker cannot {other:?}"),
        }
    }
    Ok(())
}

/// Churns `fraction` of the clients, a different window each cycle, and waits for all.
async fn churn_some(
    churn: &[ChurnTx],
    fraction: f64,
    cycle: u64,
    offline: Duration,
    limit: Duration,
) -> ChurnReport {
    let len = churn.len();
    let n = ((len as f64 * fraction).round() as usize).min(len);
    let mut report = ChurnReport::default();
    let mut waiting = Vec::with_capacity(n);
    for k in 0..n {
        let i = (cycle as usize * n + k) % len;
        let (tx, rx) = oneshot::channel();
        report.churned += 1;
        if churn[i].send((offline, tx)).is_ok() {
            waiting.push(rx);
        } else {
            report
                .failed
                .add("dead", || "the client had already closed".into());
        }
    }
    let deadline = Instant::now() + limit;
    for rx in waiting {
        let outcome = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(o)) => o,
            _ => Outcome {
                failed: Some(("stuck", "no outcome in time".into())),
                ..Outcome::default()
            },
        };
        match outcome.failed {
            Some((class, message)) => report.failed.add(class, || message),
            None => report.reconnected += 1,
        }
        match outcome.recovered {
            Some(true) => report.recovered += 1,
            Some(false) => report.not_recovered += 1,
            None => {}
        }
        report.paged += u64::from(outcome.paged);
        report.max_ms = report.max_ms.max(outcome.ms);
    }
    report
}

/// One subscriber: feeds its pushes to the bookkeeping; on a churn order, closes,
/// reconnects with `recover`, and goes on with the new connection.
async fn sub_task(s: Sub, mut ws: Ws, mut orders: mpsc::UnboundedReceiver<Order>) {
    loop {
        tokio::select! {
            frame = ws.next() => {
                if let Some(cause) = on_frame(&s, frame) {
                    s.state.borrow_mut().closed_unexpectedly(s.index, cause);
                    return;
                }
            }
            order = orders.recv() => {
                let Some((offline, done)) = order else { return };
                close(&s, &mut ws).await;
                tokio::time::sleep(offline).await;
                let (outcome, next) = reconnect(&s).await;
                let _ = done.send(outcome);
                match next {
                    Some(w) => ws = w,
                    None => {
                        s.state.borrow_mut().lost(s.index);
                        return;
                    }
                }
            }
        }
    }
}

type Frame = Option<Result<Message, tokio_tungstenite::tungstenite::Error>>;

/// Applies one frame; answers why the connection ended, if it did.
fn on_frame(s: &Sub, frame: Frame) -> Option<String> {
    match frame {
        Some(Ok(Message::Text(text))) => {
            s.state
                .borrow_mut()
                .on_push(s.index, text.as_bytes(), now_us());
            None
        }
        Some(Ok(Message::Close(f))) => {
            Some(f.map_or_else(|| "close".to_string(), |f| u16::from(f.code).to_string()))
        }
        Some(Ok(_)) => None,
        Some(Err(e)) => Some(format!("error:{e}")),
        None => Some("eof".to_string()),
    }
}

/// Closes from our side; what arrives until the broker's close still counts.
async fn close(s: &Sub, ws: &mut Ws) {
    let _ = ws.close(None).await;
    let until = Instant::now() + CLOSE_WAIT;
    while let Ok(frame) = tokio::time::timeout_at(until, ws.next()).await {
        if on_frame(s, frame).is_some() {
            break;
        }
    }
}

async fn reconnect(s: &Sub) -> (Outcome, Option<Ws>) {
    let started = Instant::now();
    let mut outcome = Outcome::default();
    let (last, epoch) = {
        let mut st = s.state.borrow_mut();
        st.begin_recovery(s.index);
        let t = &st.tracks[s.index];
        (t.last, t.epoch.clone())
    };
    let _slot = s.slots.acquire().await;
    let frame = client::subscribe_frame(&s.channel, Some((last, &epoch)));
    let opened = client::open_with(&s.dial, s.source, &s.user, &s.channel, Some(frame)).await;
    let (mut ws, reply) = match opened {
        Ok(ok) => ok,
        Err(e) => {
            outcome.failed = Some((e.class, e.message));
            return (outcome, None);
        }
    };
    let reply: Value = serde_json::from_str(reply.as_deref().unwrap_or("{}")).unwrap_or_default();
    let r = Resubscribed::parse(&reply);
    outcome.recovered = Some(r.recovered);
    s.state
        .borrow_mut()
        .resubscribed(s.index, &r, &publication_offsets(&reply));
    if r.recovered && r.more {
        outcome.paged = true;
        if let Err(e) = page(s, &mut ws, &r).await {
            s.state.borrow_mut().mark_bad(s.index);
            outcome.failed = Some(("paging", e));
        }
    }
    outcome.ms = started.elapsed().as_millis() as u64;
    (outcome, Some(ws))
}

/// Reads the rest of a paged recovery with `history since` up to the reply's top; live
/// pushes that arrive meanwhile (all above the top) are applied afterwards.
async fn page(s: &Sub, ws: &mut Ws, r: &Resubscribed) -> Result<(), String> {
    let mut live: Vec<String> = Vec::new();
    let mut from = r.next_offset;
    let mut id = 100;
    while from < r.top {
        id += 1;
        let frame = format!(
            r#"{{"type":"history","id":{id},"channel":"{}","limit":{PAGE_LIMIT},"since":{{"offset":{from},"epoch":"{}"}}}}"#,
            s.channel, r.epoch
        );
        ws.send(Message::text(frame))
            .await
            .map_err(|e| e.to_string())?;
        let reply = loop {
            let frame = tokio::time::timeout(PAGE_TIMEOUT, ws.next())
                .await
                .map_err(|_| "no history reply in time".to_string())?;
            match frame {
                Some(Ok(Message::Text(t))) if t.as_str().starts_with(r#"{"type":"message""#) => {
                    live.push(t.as_str().to_string());
                }
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
                    if v["id"].as_u64() == Some(id) {
                        break v;
                    }
                }
                Some(Ok(_)) => {}
                _ => return Err("closed while paging".into()),
            }
        };
        if reply["type"] != "history" {
            return Err(format!("history since {from}: {reply}"));
        }
        let mut st = s.state.borrow_mut();
        // Publications above the top arrive as live pushes.
        for o in publication_offsets(&reply)
            .into_iter()
            .filter(|o| *o <= r.top)
        {
            st.on_offset(s.index, o);
        }
        let more = reply["more"].as_bool().unwrap_or(false);
        from = if more {
            reply["next_offset"].as_u64().unwrap_or(r.top)
        } else {
            r.top
        };
    }
    let mut st = s.state.borrow_mut();
    st.expect_up_to(s.index, r.top);
    for f in live {
        st.on_push(s.index, f.as_bytes(), now_us());
    }
    Ok(())
}

/// Publisher settings shared by every publisher connection.
#[derive(Clone, Copy)]
struct PubPlan {
    rate: f64,
    window: usize,
    payload: usize,
}

/// Opens one publisher connection per channel list, then serves `Run`.
async fn publishers(
    spec: WorkerSpec,
    mut stdin: Stdin_,
    dial: Dial,
    channels: Vec<Vec<String>>,
    plan: PubPlan,
    deadline: Instant,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut conns = Vec::new();
    let mut failed = Failures::default();
    for (k, list) in channels.into_iter().enumerate() {
        let client = spec.first_client + k;
        let source = spec.source_ips[client % spec.source_ips.len()];
        let user = format!("bench-{}-{client}", spec.run_id);
        let first = list.first().cloned().unwrap_or_default();
        match client::open(&dial, source, &user, &first, false).await {
            Ok(ws) => conns.push((ws, list)),
            Err(e) => failed.add(e.class, || e.message),
        }
    }
    emit(&Event::Ready {
        subscribers: 0,
        publishers: conns.len(),
        failed,
        elapsed_ms: started.elapsed().as_millis() as u64,
    });
    while let Some(command) = next_command(&mut stdin, deadline).await? {
        match command {
            Command::Run { duration_ms } => {
                let d = Duration::from_millis(duration_ms);
                let runs = conns
                    .iter_mut()
                    .map(|(ws, list)| publish_run(ws, list, plan, d));
                let mut totals = PublishTotals::default();
                let mut tops = BTreeMap::new();
                for (t, top) in futures_util::future::join_all(runs).await {
                    totals.merge(&t);
                    tops.extend(top);
                }
                emit(&Event::SoakPublished { totals, tops });
            }
            Command::Exit => {
                emit(&Event::Bye);
                return Ok(());
            }
            other => bail!("a soak publisher cannot {other:?}"),
        }
    }
    Ok(())
}

/// A stamped publish frame whose `data` is `{"t":<µs>,"text":"xx…"}` of about `payload`
/// bytes (schema-guard in `chat` requires a string `text`).
fn publish_frame(id: u64, channel: &str, payload: usize) -> Message {
    let t = now_us();
    let pad = "x".repeat(payload.saturating_sub(32).max(1));
    Message::text(format!(
        r#"{{"type":"publish","id":{id},"channel":"{channel}","data":{{"t":{t},"text":"{pad}"}}}}"#
    ))
}

/// Counts one answer; records the offset of a `published` one as its channel's top.
fn on_answer(text: &str, t: &mut PublishTotals, tops: &mut BTreeMap<String, u64>) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    match v["type"].as_str() {
        Some("published") => {
            t.acked += 1;
            if let (Some(c), Some(o)) = (v["channel"].as_str(), v["offset"].as_u64()) {
                let top = tops.entry(c.to_string()).or_insert(0);
                *top = (*top).max(o);
            }
            true
        }
        Some("error") => {
            t.errors += 1;
            t.first_error.get_or_insert_with(|| text.to_string());
            true
        }
        _ => false,
    }
}

// Long on purpose (bench code): one select! loop over sends, answers and the clock,
// then the drain of the answers still due.
async fn publish_run(
    ws: &mut Ws,
    channels: &[String],
    plan: PubPlan,
    duration: Duration,
) -> (PublishTotals, BTreeMap<String, u64>) {
    let mut t = PublishTotals::default();
    let mut tops = BTreeMap::new();
    let start = Instant::now();
    let end = start + duration;
    let period = Duration::from_secs_f64(1.0 / plan.rate.max(0.001)).max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut in_flight = 0u64;
    let mut broken = false;
    t.started_us = now_us();
    while Instant::now() < end && !broken {
        let due = (start.elapsed().as_secs_f64() * plan.rate) as u64 + 1;
        let room = plan.window.max(1) as u64 - in_flight;
        let want = due.saturating_sub(t.sent);
        if want > room {
            t.window_full += 1;
        }
        for _ in 0..want.min(room) {
            let channel = &channels[t.sent as usize % channels.len()];
            broken |= ws
                .feed(publish_frame(t.sent + 100, channel, plan.payload))
                .await
                .is_err();
            t.sent += 1;
            in_flight += 1;
        }
        broken |= ws.flush().await.is_err();
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(end) => {}
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if on_answer(text.as_str(), &mut t, &mut tops) {
                        in_flight = in_flight.saturating_sub(1);
                    }
                }
                Some(Ok(_)) => {}
                _ => broken = true,
            },
        }
    }
    t.stopped_us = now_us();
    let until = Instant::now() + DRAIN_TIMEOUT;
    while in_flight > 0 && !broken {
        match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                if on_answer(text.as_str(), &mut t, &mut tops) {
                    in_flight -= 1;
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    t.unanswered = in_flight;
    t.broken = u64::from(broken);
    (t, tops)
}
