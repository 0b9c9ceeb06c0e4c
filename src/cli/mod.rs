//! Command implementations behind the `hectorctl` binary.

pub mod call;
pub mod discover;
pub mod endpoints;
pub mod manifest;
pub mod output;
