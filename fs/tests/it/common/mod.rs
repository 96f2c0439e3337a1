//! Shared test harness: the golden eStargz cases (`golden`) plus the
//! registry harness of `rstargz_fs::testutil` (a real `docker-registry` per
//! test, a fault proxy in front of it, helpers).
#![allow(dead_code, clippy::unwrap_used)]

#[allow(unused_imports)] // not every test binary uses everything
pub use rstargz_fs::testutil::golden::*;
#[allow(unused_imports)]
pub use rstargz_fs::testutil::*;
