//! The proxies that stand between a client and a real registry, one per
//! policy, and composable (a shaper in front of a fault proxy gives a slow
//! and faulty link):
//! - [`fault`]: HTTP-aware, one request per connection; records requests and
//!   misbehaves on purpose (faults, tokens, redirects) for the tests;
//! - [`shaper`]: TCP-level, keep-alive transparent; models a link (RTT,
//!   bandwidth) and counts bytes and requests for the benchmarks.

pub mod fault;
pub mod shaper;

pub use fault::{Fault, FaultMode, FaultPlan, FaultProxy, MIXED, Seen, TokenAuth};
pub use shaper::{Counters, Link, Shaper};
