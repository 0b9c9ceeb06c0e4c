//! hector-operator: runs Hector plugins remotely on Kubernetes.

pub mod access;
pub mod apply;
pub mod build;
pub mod cache_index;
pub mod cli;
pub mod config;
pub mod convert;
pub mod crd;
pub mod discover;
pub mod event_queue;
pub mod fence;
pub mod index;
pub mod leader;
pub mod manifest;
pub mod metrics;
pub mod mounts;
pub mod multiwatch;
pub mod ownership;
pub mod probe;
pub mod publish;
pub mod readiness;
pub mod reconcile;
pub mod rollout;
pub mod run;
pub mod status;
pub mod trim;
