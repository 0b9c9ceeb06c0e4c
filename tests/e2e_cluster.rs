//! Live-cluster tests (in progress).
