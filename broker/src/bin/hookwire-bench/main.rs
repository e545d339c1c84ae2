//! `hookwire-bench`: load generator and meter for a local Hookwire broker.
//!
//! The coordinator (this process) plans the clients, starts worker processes (the same
//! binary, `hookwire-bench worker`) that hold them, tells them when to publish, and
//! merges what they measured with the broker's RSS and CPU read from `/proc`.
//!
//! Files: `scenarios` (the four client scenarios and their options), `hook` (the
//! in-process plugin-chain timer), `common` (target, plan,
//! bring-up, merging, printing), `fleet` (worker processes), `ipc` (their messages),
//! `worker` (a worker's main loop), `client` (dial, connect, subscribe, receive),
//! `publisher` (stamped publishes at a rate or in a window), `stats` (histogram and the
//! cheap receive path), `procfs` (RSS and CPU),
//! `swap` (plugin hot reload during `pairs`), `soak` (the long run with churn and
//! recovery checks), `soak_worker` and `soak_track` (its worker side and bookkeeping).

mod client;
mod common;
mod conn;
mod fleet;
mod hook;
mod ipc;
mod procfs;
mod publisher;
mod scenarios;
mod soak;
mod soak_track;
mod soak_worker;
mod stats;
mod swap;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::common::{Common, Ctx};
use crate::scenarios::{BroadcastArgs, FanoutArgs, IdleArgs, PairsArgs};

#[derive(Parser)]
#[command(
    name = "hookwire-bench",
    about = "Benchmarks a local Hookwire broker: connection memory, fanout, broadcast latency, pairs, soak.",
    long_about = "Benchmarks a local Hookwire broker (127.0.0.0/8 only).\n\n\
Clients are spread over --workers processes (each raises its soft open-files limit to the \
hard one) and over --source-ips local addresses. Messages carry their send time (µs since \
the epoch) in `data`, so latency is send-to-receive across processes. Give --broker-pid to \
get the broker's RSS and CPU beside the bench's own CPU. Each scenario prints a summary and, \
last, one JSON line with every number.\n\n\
Example:\n  HOOKWIRE_JWT_SECRET=... hookwire-bench fanout --url ws://127.0.0.1:8080/ws \
--broker-pid $(pgrep -nx hookwire) --subscribers 10000 --rate 80\n\n\
A namespace with join/leave pushes sends every subscriber a `join` for each later \
subscriber (N²/2 frames for N subscribers of one channel); for one-channel fanout and \
broadcast runs start the broker with HOOKWIRE_NAMESPACES_CHAT_JOIN_LEAVE=false."
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Hold N connections, each connected and subscribed; report the broker's RSS per
    /// connection ((RSS after - RSS before) / connected, KiB) and CPU while idle.
    Idle {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: IdleArgs,
    },
    /// S subscribers on one channel, one publisher at --rate msgs/s (or flat out with a
    /// window); report publishes/s, deliveries/s, p50/p99/max latency and lost messages.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: FanoutArgs,
    },
    /// One message at a time to S idle subscribers; report time to the first and the last
    /// recipient for each round.
    Broadcast {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: BroadcastArgs,
    },
    /// P pairs, each with its own channel, publisher and subscriber; report publications/s
    /// in total and latency.
    Pairs {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: PairsArgs,
    },
    /// Hold N connections for minutes while publishing to many channels; every
    /// --churn-every-secs a fraction reconnect and recover. Checks every recovery is
    /// exact and the broker's RSS returns to its level after the first churn cycle.
    Soak {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: soak::SoakArgs,
    },
    /// In process, no clients: the time a namespace's plugin chain adds to each
    /// publication (p50/p99 per call), with the plugins of a broker config.
    Hook {
        #[command(flatten)]
        args: hook::HookArgs,
    },
    /// Internal: a worker process, driven by the coordinator over stdin/stdout.
    #[command(hide = true)]
    Worker,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = match &cli.scenario {
        Scenario::Worker => return worker::main(),
        Scenario::Hook { args } => {
            return match hook::run(args.clone()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Scenario::Idle { common, .. }
        | Scenario::Fanout { common, .. }
        | Scenario::Broadcast { common, .. }
        | Scenario::Pairs { common, .. }
        | Scenario::Soak { common, .. } => common.clone(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let ctx = Ctx::new(common)?;
        match cli.scenario {
            Scenario::Idle { args, .. } => scenarios::idle(ctx, args).await,
            Scenario::Fanout { args, .. } => scenarios::fanout(ctx, args).await,
            Scenario::Broadcast { args, .. } => scenarios::broadcast(ctx, args).await,
            Scenario::Pairs { args, .. } => scenarios::pairs(ctx, args).await,
            Scenario::Soak { args, .. } => soak::soak(ctx, args).await,
            Scenario::Worker | Scenario::Hook { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
