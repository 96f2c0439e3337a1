//! containerd hosts.toml parsing and endpoint building.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rstargz_fs::fuzzing::fuzz_hosts_toml(data));
