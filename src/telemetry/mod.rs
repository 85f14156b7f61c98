//! Logs, traces, metrics and the admin server.
//!
//! - Logs: `tracing` to stderr, text or JSON, level from `RUST_LOG` or `telemetry.log_level`.
//! - Traces: when an OTLP endpoint is configured (`telemetry.otlp_endpoint`, or the standard
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`), the bridge's spans
//!   (target `fondo_bridge`, level info and above) go through `tracing-opentelemetry` to an OTLP
//!   exporter over gRPC or HTTP/protobuf. Without an endpoint there is no exporter and no
//!   OpenTelemetry layer at all: spans cost what a `tracing` span costs.
//! - `trace`: the per-event spans dispatch opens, and W3C Trace Context in and out of events.
//! - [`metrics`]: the Prometheus registry; [`admin`]: the server for `/metrics` and the probes.
//!
//! Secrets (OTLP headers) are handed to the exporter and never logged.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

use crate::config::{LogFormat, OtlpProtocol, TelemetryConfig};

pub mod admin;
pub mod metrics;
pub mod prom;
pub mod quantiles;
pub(crate) mod trace;

/// The `tracing` target prefix exported as spans.
const EXPORTED_TARGET: &str = "fondo_bridge";
/// The target of the per-event spans (event, publish, retry, dead letter).
const PER_EVENT_SPANS: &str = "fondo_bridge::dispatch";

/// Why trace export could not be set up. Logging still works; the bridge runs without traces.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("OTLP protocol {0:?} is not supported (use grpc or http/protobuf)")]
    Protocol(String),
    #[error("OTLP header {0:?} is not a valid header name or value")]
    Header(String),
    #[error("sampling_ratio {0} is not between 0.0 and 1.0")]
    SamplingRatio(f64),
    #[error("flushing spans: {0}")]
    Flush(String),
}

/// Owns the tracer provider; flushes and shuts it down when dropped (or on [`Telemetry::shutdown`]).
/// Keep it alive for as long as the process runs.
#[must_use = "dropping the guard shuts trace export down"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("traces", &self.traces_enabled())
            .finish()
    }
}

impl Telemetry {
    /// A guard that exports nothing.
    pub fn disabled() -> Self {
        Self { provider: None }
    }

    /// Whether spans are exported.
    pub fn traces_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports every finished span now. Blocks: call it off the async threads
    /// (`spawn_blocking`) when the exporter is gRPC.
    pub fn force_flush(&self) -> Result<(), TelemetryError> {
        match &self.provider {
            Some(p) => p
                .force_flush()
                .map_err(|e| TelemetryError::Flush(e.to_string())),
            None => Ok(()),
        }
    }

    /// Exports what is left and stops the exporter.
    pub fn shutdown(mut self) {
        self.shutdown_inner();
    }

    fn shutdown_inner(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        let run = move || {
            if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
                tracing::warn!(error = %e, "trace exporter did not shut down cleanly");
            }
        };
        // The gRPC exporter's connection is driven by the Tokio runtime; on a multi-thread
        // runtime, hand this worker's tasks to another thread while we block.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
            _ => run(),
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown_inner();
    }
}

/// Installs logging only (no trace export). Safe to call twice: the second call does nothing.
pub fn init_logging(cfg: &TelemetryConfig) {
    let _ = tracing_subscriber::registry()
        .with(log_layer(cfg))
        .try_init();
}

/// Installs logging and, when an OTLP endpoint is configured, trace export. Must be called inside
/// a Tokio runtime (the gRPC exporter spawns its connection there). A broken trace configuration
/// is logged and leaves the bridge running without traces. Safe to call twice: the second call
/// installs nothing and returns a disabled guard.
pub fn init(cfg: &TelemetryConfig) -> Telemetry {
    let provider = if otlp_configured(cfg) {
        Some(build_provider(cfg))
    } else {
        None
    };
    let (provider, error) = match provider {
        Some(Ok(p)) => (Some(p), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("fondo-bridge"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_filter(Targets::new().with_target(EXPORTED_TARGET, Level::INFO))
    });
    let installed = tracing_subscriber::registry()
        .with(log_layer(cfg))
        .with(otel)
        .try_init()
        .is_ok();
    if let Some(e) = error {
        tracing::error!(error = %e, "trace export disabled: invalid OpenTelemetry configuration");
    }
    match provider {
        Some(p) if installed => {
            opentelemetry::global::set_tracer_provider(p.clone());
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            tracing::info!(
                protocol = protocol(cfg).map(|p| p.as_str()).unwrap_or("?"),
                "exporting traces over OTLP"
            );
            Telemetry { provider: Some(p) }
        }
        Some(p) => {
            let _ = p.shutdown();
            Telemetry::disabled()
        }
        None => Telemetry::disabled(),
    }
}

fn log_layer<S>(cfg: &TelemetryConfig) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let env = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // The per-event spans exist for trace export; logs don't need them as context, and formatting
    // their fields for every event would cost more than the rest of the event's handling. Log
    // lines emitted inside them are still logged.
    let filter = tracing_subscriber::filter::FilterExt::and(
        env,
        tracing_subscriber::filter::filter_fn(|meta| {
            !(meta.is_span() && meta.target() == PER_EVENT_SPANS)
        }),
    );
    match cfg.log_format {
        LogFormat::Json => fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(false)
            .with_filter(filter)
            .boxed(),
        // Colours only on a terminal: piped into a log collector they would be escape codes.
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .with_target(false)
            .with_filter(filter)
            .boxed(),
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// An endpoint in config or the standard variables, and the SDK not disabled.
fn otlp_configured(cfg: &TelemetryConfig) -> bool {
    if env_nonempty("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    if env_nonempty("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none")) {
        return false;
    }
    cfg.otlp_endpoint
        .as_deref()
        .is_some_and(|e| !e.trim().is_empty())
        || env_nonempty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || env_nonempty("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
}

impl OtlpProtocol {
    fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http/protobuf",
        }
    }
}

/// Config first, then `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL`, gRPC.
fn protocol(cfg: &TelemetryConfig) -> Result<OtlpProtocol, TelemetryError> {
    if let Some(p) = cfg.protocol {
        return Ok(p);
    }
    let from_env = env_nonempty("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env_nonempty("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match from_env.as_deref().map(str::trim) {
        None | Some("grpc") => Ok(OtlpProtocol::Grpc),
        Some("http/protobuf") | Some("http") => Ok(OtlpProtocol::Http),
        Some(other) => Err(TelemetryError::Protocol(other.to_owned())),
    }
}

fn build_provider(cfg: &TelemetryConfig) -> Result<SdkTracerProvider, TelemetryError> {
    let endpoint = cfg
        .otlp_endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty());
    let exporter = match protocol(cfg)? {
        OtlpProtocol::Grpc => {
            let mut metadata = opentelemetry_otlp::tonic_types::metadata::MetadataMap::new();
            for (k, v) in &cfg.headers {
                let key = tonic::metadata::AsciiMetadataKey::from_bytes(k.as_bytes())
                    .map_err(|_| TelemetryError::Header(k.clone()))?;
                let value = tonic::metadata::AsciiMetadataValue::try_from(v.expose())
                    .map_err(|_| TelemetryError::Header(k.clone()))?;
                metadata.insert(key, value);
            }
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_metadata(metadata);
            if let Some(e) = endpoint {
                if e.starts_with("https:") {
                    b = b.with_tls_config(
                        opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                            .with_enabled_roots(),
                    );
                }
                b = b.with_endpoint(e);
            }
            b.build()?
        }
        OtlpProtocol::Http => {
            let headers: HashMap<String, String> = cfg
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                .collect();
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_headers(headers);
            if let Some(e) = endpoint {
                // Like OTEL_EXPORTER_OTLP_ENDPOINT: a base URL, the signal path is appended.
                let full = if e.trim_end_matches('/').ends_with("/v1/traces") {
                    e.to_owned()
                } else {
                    format!("{}/v1/traces", e.trim_end_matches('/'))
                };
                b = b.with_endpoint(full);
            }
            b.build()?
        }
    };
    let resource = if env_nonempty("OTEL_SERVICE_NAME").is_some() {
        Resource::builder().build()
    } else {
        Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .build()
    };
    let mut builder = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource);
    if let Some(ratio) = cfg.sampling_ratio {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(TelemetryError::SamplingRatio(ratio));
        }
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))));
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn http_cfg() -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: Some("http://127.0.0.1:4318".into()),
            protocol: Some(OtlpProtocol::Http),
            ..TelemetryConfig::default()
        }
    }

    #[test]
    fn config_protocol_wins_over_the_environment() {
        assert_eq!(protocol(&http_cfg()).ok(), Some(OtlpProtocol::Http));
        assert!(otlp_configured(&http_cfg()) || std::env::var("OTEL_SDK_DISABLED").is_ok());
    }

    #[test]
    fn a_sampling_ratio_outside_0_1_is_refused() {
        let cfg = TelemetryConfig {
            sampling_ratio: Some(1.5),
            ..http_cfg()
        };
        assert!(matches!(
            build_provider(&cfg),
            Err(TelemetryError::SamplingRatio(_))
        ));
        let cfg = TelemetryConfig {
            sampling_ratio: Some(0.25),
            ..http_cfg()
        };
        let p = build_provider(&cfg);
        assert!(p.is_ok(), "{:?}", p.err());
    }

    #[test]
    fn errors_name_the_header_but_never_its_value() {
        let cfg = TelemetryConfig {
            protocol: Some(OtlpProtocol::Grpc),
            headers: [("bad header".to_owned(), Secret("s3cr3t-value".into()))].into(),
            ..http_cfg()
        };
        let e = build_provider(&cfg).err().map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.contains("bad header"), "{e}");
        assert!(!e.contains("s3cr3t-value"), "{e}");
        assert!(!format!("{cfg:?}").contains("s3cr3t-value"));
    }

    #[test]
    fn no_endpoint_means_no_exporter() {
        if std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok()
            || std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_ok()
        {
            return;
        }
        assert!(!otlp_configured(&TelemetryConfig::default()));
    }
}
