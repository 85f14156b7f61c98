//! A Fondo stand-in for demos, tests and benchmarks: the WebSocket stream and a signed webhook sender.

pub mod generator;
pub mod stream;
pub mod webhook_sender;
