//! Each broker's side of a scenario: what it needs set up before (topics, an exchange and a
//! queue, a stream), counted and cleaned after, and the bare client that publishes to it (the
//! raw ceiling). `file` is the bare-disk counterpart of the file sink.

pub mod file;
pub mod kafka;
pub mod nats;
pub mod rabbitmq;
