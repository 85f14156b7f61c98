//! The nats sink (in progress).
