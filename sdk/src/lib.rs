//! Hector plugin SDK (in progress).
