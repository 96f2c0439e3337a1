//! Command-line interface: one module per subcommand group.

pub mod fd_holder;
pub mod image;
pub mod layer;
pub mod mount;
pub mod serve;
