//! Helpers shared by the cross-process ring tests.
#![allow(dead_code)]

use std::time::Duration;

use ce_common::link::{self, LinkConfig, SupervisorLink};
use ce_common::spawn::{SpawnSpec, Spawned, spawn_now};

/// Long enough never to fire in a passing test; peer death ends waits early.
pub const WAIT: Duration = Duration::from_secs(60);

/// Starts `ce-ring-peer` with `args` on a fresh link.
pub fn peer(config: LinkConfig, args: &[&str]) -> (SupervisorLink, Spawned) {
    let (sup, child) = link::create(config, "ce-ring-test").expect("link");
    let mut spec = SpawnSpec::new(env!("CARGO_BIN_EXE_ce-ring-peer")).with_link(child);
    spec.args = args.iter().map(|a| a.into()).collect();
    let spawned = spawn_now(spec).expect("spawn ce-ring-peer");
    (sup, spawned)
}

/// A number from the environment, else `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU time of a process or thread, from its `stat` file.
pub fn cpu_time(stat_path: &str) -> Duration {
    ce_common::procstat::cpu_time(stat_path).expect("read stat")
}
