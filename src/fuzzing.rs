//! Fuzz harness of the daemon's own parsers, shared by the cargo-fuzz crate
//! (`fuzz/`) and the stable regression test that replays saved inputs.
//! Nothing here may panic on any input.

use std::time::Duration;

use rstargz_fs::registry::hosts::resolve_hosts;

use crate::config::Config;

/// Every fuzz target of the workspace by name (`fuzz/fuzz_targets/<name>.rs`):
/// the format and registry harnesses of `rstargz-fs` plus the config file.
pub fn targets() -> Vec<rstargz_fs::fuzzing::Target> {
    let mut all = rstargz_fs::fuzzing::TARGETS.to_vec();
    all.push(("config", fuzz_config));
    all
}

/// The config file: parse it, then derive every setting the daemon derives
/// from it at start-up and while running (timeouts, retry delays, mirror
/// endpoints, the log filter).
pub fn fuzz_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text) else {
        return;
    };
    let remote = &config.remote;
    let _ = remote.check_validity();
    let mut registry = remote.registry_config();
    for attempt in 0..=registry.backoff.max_retries.min(64) {
        let _ = registry.backoff.delay(attempt, None);
        let _ = registry.backoff.delay(attempt, Some(Duration::MAX));
    }
    // No file system reads: hosts.toml has its own target.
    registry.hosts.certs_dir = None;
    for name in registry.hosts.mirrors.keys() {
        let _ = resolve_hosts(&registry.hosts, name);
    }
    if let Some(level) = &config.log_level {
        let _ = tracing_subscriber::EnvFilter::try_new(level);
    }
}
