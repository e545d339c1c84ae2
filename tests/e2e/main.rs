//! End-to-end tests: the real `hookwire` binary on port 0, real WebSocket clients on loopback.

mod harness;

mod connect;
