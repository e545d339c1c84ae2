//! End-to-end tests: the real `hookwire` binary on port 0, real WebSocket clients on loopback.

mod harness;
mod http;

mod api;
mod auth;
mod browser;
mod channels;
mod cli;
mod cluster;
mod connect;
mod hardening;
mod hardening_edge;
mod hardening_history;
mod hardening_plugins;
mod limits;
mod operations;
mod plugins;
mod presence;
mod protection;
mod recovery;
mod refresh;
mod webtransport;
