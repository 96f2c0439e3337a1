//! The daemon's config.toml and every setting derived from it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rstargz::fuzzing::fuzz_config(data));
