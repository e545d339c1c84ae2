//! Test harness: starts the real `hookwire` binary on port 0 and talks to it with a real
//! WebSocket client over loopback.
//!
//! - `broker`: a running [`TestBroker`] (its logs, signals, exit, clients connected to it);
//! - `browser`: Debian's headless Chromium driven by `tests/browser/drive.mjs` ([`Browser`]);
//! - `builder`: its [`Builder`] (config, environment, arguments) and the start-up;
//! - `command`: `hookwire` run once as a command ([`run_hookwire`]);
//! - `client`: the protocol v1 WebSocket [`Client`] and how its connection [`Closed`];
//! - `raw_client`: a hand-written WebSocket [`RawClient`] that answers nothing by itself;
//! - `nats`: a real `nats-server` with JetStream ([`TestNats`]) for cluster tests;
//! - `tokens`: the test [`SECRET`] and the tokens signed with it;
//! - `wt`: the WebTransport side of [`Client`] ([`WtWire`]), trusting `--dev`'s certificate by its hash;
//! - `wait`: the one bound on every wait ([`WAIT`], [`deadline`]).
//!
//! Tests import everything from here (`use crate::harness::*`).

#![allow(dead_code)]

mod broker;
mod browser;
mod builder;
mod client;
mod command;
mod nats;
mod raw_client;
mod tokens;
mod wait;
mod wt;

pub use broker::TestBroker;
pub use browser::Browser;
pub use builder::Builder;
pub use client::{Client, data_ns};
pub use command::{run_hookwire, run_hookwire_in, run_hookwire_within};
pub use nats::TestNats;
pub use raw_client::RawClient;
pub use tokens::{SECRET, forged_token, now_s, sign_claims, sign_with, spec, token};
pub use wait::{WAIT, deadline, raise_open_files};
pub use wt::{OpenError, WtWire, cert_hash};

// Part of the harness's API, though no test names them at the moment.
#[allow(unused_imports)]
pub use {broker::http_get, client::Closed};
