//! End-to-end tests: the real `hookwire` binary on port 0, real WebSocket clients on loopback.

mod harness;

mod auth;
mod channels;
mod cli;
mod connect;
mod limits;
mod presence;
mod recovery;
mod refresh;
