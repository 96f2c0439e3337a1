//! Shared test harness: the golden eStargz cases (`golden`) plus the
//! registry harness of `rstargz_test_support` (a real `docker-registry` per
//! test, a fault proxy in front of it, helpers).
#![allow(dead_code, clippy::unwrap_used)]

#[allow(unused_imports)] // the plain tier uses only part of it
pub use rstargz_test_support::golden::*;
#[allow(unused_imports)]
pub use rstargz_test_support::*;
