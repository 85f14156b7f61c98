//! The webhook source (in progress).
