//! Logging (and, later, traces): `tracing` to stderr, text or JSON, level from config or `RUST_LOG`.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global subscriber. `RUST_LOG` wins over `telemetry.log_level`. Safe to call twice
/// (the second call does nothing), so tests and the CLI can both call it.
pub fn init_logging(cfg: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match cfg.log_format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_current_span(false),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr).with_target(false))
            .try_init(),
    };
    let _ = result;
}
