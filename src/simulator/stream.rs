//! The simulated WebSocket stream (in progress).
