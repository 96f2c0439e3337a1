//! rstargz's filesystem side: the eStargz format, the registry reader, the
//! chunk caches and the FUSE filesystem that serve lazily pulled layers.
//!
//! The layering follows backend → cache → device: `estargz` is pure format
//! code that reads through a small random-access trait and knows nothing of
//! HTTP or FUSE; `registry` fetches byte ranges of blobs; `cache` keeps
//! verified chunks in memory and on disk; `layer` joins them into a reader of
//! one layer; `fuse` serves that reader to the kernel. `purpose`,
//! `priority_gate` and `work` are shared by all of them: why bytes are
//! wanted, and the bounded, priority-ordered use of connections and of
//! blocking threads that follows from it.

pub mod cache;
pub mod estargz;
pub mod file_stamp;
pub mod fuse;
#[doc(hidden)]
pub mod fuzzing;
pub mod histogram;
pub mod layer;
pub mod priority_gate;
pub mod purpose;
pub mod registry;
pub mod thread_sched;
pub mod urgency;
pub mod work;
