//! Hookwire: a programmable realtime broker.
//!
//! # Layout
//!
//! The path of a publication, and the module that owns each step:
//!
//! ```text
//! transport::ws      socket → Inbound items; batches of EncodedFrame → socket
//!   session          connect/auth, request handling, keepalive, expiry, writer loop
//!     publish        pipeline: name → namespace → permission → limits → plugins → idempotency
//!       plugins      the namespace's Wasm plugin chain (refuse, edit, reroute, emit)
//!       hub          sharded subscribers; offset + encode once; push to each queue
//!         history    per-channel streams (offset, epoch), bounded by size and TTL; node caps
//!         outbound   per-connection bounded queue, drained by the session's writer
//! ```
//!
//! Around it: `protocol` (frames, error and close codes; no I/O), `channel` (names,
//! namespaces, patterns), `access` (who may subscribe/publish), `auth` (JWT), `config`
//! (file + env, validated up front), `node` (shared state), `server` (listeners,
//! signals, shutdown order), `admin` (health, readiness, API, admin), `logging`, and
//! `plugins` (the wasmtime host of `wit/`; connect/subscribe/disconnect hooks run from
//! `session`).
//! See ARCHITECTURE.md for task ownership, lock order and shutdown order.

pub mod access;
pub mod admin;
pub mod auth;
pub mod channel;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod edge;
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub mod hub;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod outbound;
pub mod plugins;
pub mod protocol;
pub mod publish;
pub mod rate;
pub mod reads;
pub mod registry;
pub mod sequencer;
pub mod server;
pub mod session;
pub mod transport;
pub mod validation;

/// `n` as a `u32`, `u32::MAX` when larger: sizes and bounds kept in 4 bytes where they
/// sit in every connection.
pub(crate) fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
