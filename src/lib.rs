//! fondo-bridge: carries Fondo Partner API events from its WebSocket stream and signed webhooks into
//! Kafka, RabbitMQ or NATS, at least once, in order per object, with dead letters and traces.
//!
//! The data flow is `sources → Envelope → router → dispatch → sinks`, with acknowledgements flowing
//! back to the source only once every destination delivered or dead-lettered the event.
//!
//! # A tour: follow one event
//!
//! - **From config to a running bridge.** `src/main.rs` parses the arguments; each command is in
//!   `src/cli/`. [`config`] reads the file under the environment and checks each section;
//!   [`plan::Plan`] (`src/plan/`) compiles the routing table once and builds the dead-letter
//!   writer and the dispatcher; [`app::Bridge`] (`src/app.rs`) starts sinks, dispatcher, sources
//!   and the admin server from it, reloads routes, and shuts down in order.
//! - **Where it arrives.** The stream: [`sources::websocket`] (`src/sources/websocket.rs`: one
//!   connection per client id, reconnects, the reader and the submitter). Webhooks:
//!   `src/sources/webhook/` (`server.rs` the HTTP port and its limits, `signature.rs` the
//!   verification, `mod.rs` the handler `receive`).
//! - **Where it is parsed.** [`event::Event::parse`] (`src/event/mod.rs`; `node.rs` the JSON tree,
//!   `id.rs` the content key and the occurrence id).
//! - **Where it is made durable.** A stream event is appended to the [`spool`] (`src/spool/`: `format.rs`, `writer.rs`, `recovery.rs`)
//!   before it is handed on, and released when it is acknowledged. A webhook is not spooled: the
//!   HTTP answer is its acknowledgement, so Fondo keeps it until then.
//! - **Which occurrence it is.** [`dispatch::Dispatcher::identify`]: the rules in
//!   `src/dispatch/identity.rs` (in memory) and `src/dispatch/redis_store.rs` (shared by replicas,
//!   pipelined by `redis_batch.rs`); copies already in flight or delivered are held in
//!   `src/dispatch/dedupe.rs`.
//! - **Where its destination is chosen.** [`router::Router::route`] (`src/router.rs`: compiled
//!   routes, topic templates, `where` filters, redaction; pure).
//! - **Where it waits for a broker.** [`dispatch::Dispatcher::submit`] admits it (bounded in
//!   flight); a worker per sink runs `deliver` (`src/dispatch.rs`: per-key order, retries with
//!   backoff, then the dead letter), calling [`sinks::Sink::publish`].
//! - **Where it is acknowledged.** [`event::AckHandle`] (`src/event/ack.rs`) resolves once every
//!   destination delivered or dead-lettered; the webhook handler then answers 200 (or 503 to be
//!   retried), and the stream's submitter releases the spool record.
//! - **Where it goes when it cannot be delivered.** [`dlq`] (`src/dlq/mod.rs`: the record, the
//!   writer, the private fallback file); `src/dlq/commands.rs` lists, shows and replays them.
//! - **Each broker.** `src/sinks/{kafka,rabbitmq,nats,file}/`: `mod.rs` the sink, `reader.rs`
//!   what `dlq` reads dead letters back with; their settings in `src/config/{kafka,rabbitmq,nats}.rs`.
//!   `src/sinks/mod.rs` has the [`sinks::Sink`] trait; `deferred.rs` connects a sink in the
//!   background when its broker is down at start. A destination with a CloudEvents `format` gets
//!   its attributes from the dispatcher, and each sink writes them as its broker's binding names
//!   them ([`cloudevents`], `src/cloudevents.rs`).
//! - **What operators see.** [`telemetry`]: logs, traces (`trace.rs`, W3C propagation),
//!   metrics (`metrics.rs`) and the admin server (`admin.rs`: `/metrics`, `/healthz`, `/readyz`).
//!   [`top`] (`src/top/mod.rs`) reads them back for `fondo-bridge top`: scrape, rates, figures.
//! - **What consumers can rely on.** [`asyncapi`]: the AsyncAPI document of what a config
//!   publishes (`fondo-bridge asyncapi`), with the Fondo payload schemas in `schema.rs`.
//! - **The Fondo stand-in.** [`simulator`]: the WebSocket stream and the signed webhook sender that
//!   tests, the demo and the benchmarks use.

pub mod app;
pub mod asyncapi;
pub mod backoff;
pub mod cloudevents;
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
pub mod timers;
pub mod top;

// The metrics and the admin server live in `telemetry`; these keep `crate::metrics` and
// `crate::admin` (and `fondo_bridge::metrics`, `fondo_bridge::admin`) as paths.
pub use telemetry::{admin, metrics};
