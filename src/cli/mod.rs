//! Command implementations behind the `hectorctl` binary.
