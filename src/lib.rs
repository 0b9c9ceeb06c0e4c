//! hector-operator: runs Hector plugins remotely on Kubernetes.

pub mod build;
pub mod cli;
pub mod config;
pub mod convert;
pub mod crd;
pub mod discover;
pub mod manifest;
