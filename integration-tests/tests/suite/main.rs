//! shardgate's integration suite: real Postgres servers (a shared local cluster of one primary and
//! one streaming replica), the proxy in-process, real clients (tokio-postgres, psql).
//!
//! Add a module: write `mod foo;` below with `tests![...]` in it, and list `foo::TESTS` in
//! `MODULES`. Run one test: `cargo test -p integration-tests --test suite -- smoke::select_through_proxy`.

mod admin;
mod bad_input;
mod balancing;
mod failover;
mod harness;
mod limits;
mod multiplexing;
mod pooling;
mod protocol_errors;
mod rawclient;
mod reload;
mod replica_health;
mod routing;
mod sharded;
mod sharding_atomicity;
mod sharding_merge;
mod sharding_migrations;
mod sharding_placement;
mod sharding_replicated;
mod sharding_routing;
mod smoke;
mod twophase;
mod wire;
mod wire_copy;
mod wire_messages;
mod wire_startup;

use std::sync::Arc;

use libtest_mimic::{Arguments, Trial};

use harness::{Ctx, Test};

/// Every module's tests.
const MODULES: &[&[Test]] = &[
    harness::TESTS,
    smoke::TESTS,
    failover::TESTS,
    wire::TESTS,
    wire_copy::TESTS,
    wire_messages::TESTS,
    wire_startup::TESTS,
    pooling::TESTS,
    limits::TESTS,
    reload::TESTS,
    admin::TESTS,
    bad_input::TESTS,
    protocol_errors::TESTS,
    multiplexing::TESTS,
    routing::TESTS,
    balancing::TESTS,
    replica_health::TESTS,
    twophase::TESTS,
    sharding_placement::TESTS,
    sharding_replicated::TESTS,
    sharding_routing::TESTS,
    sharding_atomicity::TESTS,
    sharding_merge::TESTS,
    sharding_migrations::TESTS,
];

fn main() {
    // SHARDGATE_LOG=info (or debug, ...) shows the in-process proxies' logs.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("SHARDGATE_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let args = Arguments::from_args();
    let ctx = Arc::new(Ctx::default());
    ctx.stop_clusters_on_signal();
    let trials = MODULES
        .iter()
        .flat_map(|tests| tests.iter())
        .map(|test| {
            let ctx = Arc::clone(&ctx);
            Trial::test(test.display_name(), move || {
                (test.run)(&ctx).map_err(|e| failure_message(&e).into())
            })
        })
        .collect();
    // libtest-mimic catches panics, so this returns even when tests panic.
    let conclusion = libtest_mimic::run(&args, trials);
    harness::teardown(ctx);
    conclusion.exit();
}

/// The error and its causes, one a line, without the backtrace that `{:?}` adds under RUST_BACKTRACE.
fn failure_message(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        text.push_str(&format!("\n  caused by: {cause}"));
    }
    text
}
