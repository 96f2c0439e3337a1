//! The converter's tar reader: tar bytes to an eStargz blob that must open again.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rstargz_fs::fuzzing::fuzz_tar(data));
