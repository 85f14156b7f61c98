//! The WebSocket source (in progress).
