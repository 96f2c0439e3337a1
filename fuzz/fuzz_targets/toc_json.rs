//! TOC JSON parsing and index building over arbitrary JSON bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rstargz_fs::fuzzing::fuzz_toc_json(data));
