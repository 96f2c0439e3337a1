//! Footer + TOC + index + chunk reads over arbitrary blob bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rstargz_fs::fuzzing::fuzz_blob(data));
