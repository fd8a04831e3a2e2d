//! Resolved training configuration (in progress).
