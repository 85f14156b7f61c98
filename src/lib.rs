//! fondo-bridge: carries Fondo Partner API events from its WebSocket stream and signed webhooks into
//! Kafka, RabbitMQ or NATS, at least once, in order per object, with dead letters and traces.
//!
//! The data flow is `sources → Envelope → router → dispatch → sinks`, with acknowledgements flowing
//! back to the source only once every destination delivered or dead-lettered the event. See
//! `ARCHITECTURE` in the README for the guarantees.

pub mod app;
pub mod config;
pub mod demo;
pub mod dispatch;
pub mod dlq;
pub mod event;
pub mod group_commit;
pub mod plan;
pub mod private_fs;
pub mod router;
pub mod simulator;
pub mod sinks;
pub mod sources;
pub mod spool;
pub mod telemetry;

// The metrics and the admin server live in `telemetry`; these keep `crate::metrics` and
// `crate::admin` (and `fondo_bridge::metrics`, `fondo_bridge::admin`) as paths.
pub use telemetry::{admin, metrics};
