//! The durable spool for the WebSocket source (in progress).
