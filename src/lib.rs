//! The `rstargz` binary's own code: its subcommands, the daemon's
//! configuration file and its log output. Everything they drive lives in the
//! library crates (`rstargz-snapshotter`, `rstargz-remote`, `rstargz-image`,
//! `rstargz-fs`); this is the only crate that uses `anyhow`.

pub mod cli;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
