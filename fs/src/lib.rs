//! rstargz's filesystem side: the eStargz format, and (later) the registry
//! reader, chunk caches and the FUSE filesystem that serve lazily pulled layers.
//!
//! The layering follows backend → cache → device: `estargz` is pure format
//! code that reads through a small random-access trait and knows nothing of
//! HTTP or FUSE, so the same code serves local files, registries and fuzzers.

pub mod cache;
pub mod estargz;
pub mod fuse;
pub mod layer;
