//! Command implementations behind the `hectorctl` binary.

pub mod answer;
pub mod call;
pub mod cluster;
pub mod completion;
pub mod discover;
pub mod endpoints;
pub mod error;
pub mod manifest;
pub mod output;
