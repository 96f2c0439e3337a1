//! multipart/byteranges bodies (Content-Type line, then the body).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rstargz_fs::fuzzing::fuzz_multipart(data));
