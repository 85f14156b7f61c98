//! The simulated webhook sender (in progress).
