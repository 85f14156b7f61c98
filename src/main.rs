//! The `fondo-bridge` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use fondo_bridge::app::{AppError, Bridge};
use fondo_bridge::config::Config;
use fondo_bridge::event::{Event, ParseContext, ParseOptions};
use fondo_bridge::router::Router;

/// mimalloc instead of glibc's malloc: the per-event path allocates many small short-lived
/// objects (parsed JSON, headers), where glibc spent a quarter of the CPU in a profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Carries Fondo Partner API events (WebSocket stream and signed webhooks) into Kafka, RabbitMQ,
/// NATS JetStream or files, at least once, in order per object, with dead letters.
#[derive(Parser)]
#[command(name = "fondo-bridge", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge with a config file until SIGTERM or Ctrl-C, then drain and exit.
    Run {
        /// YAML or TOML config; `FONDO_BRIDGE__SECTION__KEY` variables override it.
        #[arg(short, long, env = "FONDO_BRIDGE_CONFIG")]
        config: PathBuf,
    },
    /// The demo: a simulated Fondo stream into the bridge, written to ./demo-out/*.jsonl. No broker.
    Demo(fondo_bridge::demo::DemoArgs),
    /// A simulated Fondo: the WebSocket stream (default) or a signed webhook sender.
    Simulate {
        #[command(subcommand)]
        what: Simulate,
    },
    /// Dead letters: list, show, replay (never deletes them).
    Dlq {
        #[arg(short, long, env = "FONDO_BRIDGE_CONFIG")]
        config: PathBuf,
        #[command(subcommand)]
        command: fondo_bridge::dlq_cli::DlqCommand,
    },
    /// Validate a config file and list every problem with its path. Exit 0 when valid.
    Check {
        #[arg(short, long, env = "FONDO_BRIDGE_CONFIG")]
        config: PathBuf,
    },
    /// Show where one event would go: destinations, topic, key, headers and (redacted) body.
    Route {
        #[arg(short, long, env = "FONDO_BRIDGE_CONFIG")]
        config: PathBuf,
        /// A file holding one event body as Fondo sends it (JSON with `eventType`).
        #[arg(short, long)]
        event: PathBuf,
        /// The client id of the stream the event came from (for `{client_id}`).
        #[arg(long)]
        client_id: Option<String>,
        /// The event type, for bodies without `eventType` (as a webhook type header would give).
        #[arg(long = "type")]
        event_type: Option<String>,
    },
}

#[derive(Subcommand)]
enum Simulate {
    /// Serve GET /v2/partner/client/{client_id}/subscribe as Fondo does, streaming realistic events.
    Stream(fondo_bridge::simulator::stream::SimulateArgs),
    /// POST signed events to a webhook endpoint, retrying like Fondo.
    Webhooks(fondo_bridge::simulator::webhook_sender::WebhookSendArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Several crates enable different rustls crypto backends; pick one explicitly so `wss://` and
    // TLS broker connections never panic on an ambiguous default. An already installed one wins.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => run(config).await,
        Command::Check { config } => Ok(check(&config)),
        Command::Demo(args) => demo(args).await,
        Command::Dlq { config, command } => dlq(&config, command).await,
        Command::Simulate { what } => simulate(what).await,
        Command::Route {
            config,
            event,
            client_id,
            event_type,
        } => route(&config, &event, client_id.as_deref(), event_type.as_deref()),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) => {
            println!(
                "{}: valid ({} sink(s), {} route(s), sources: {})",
                path.display(),
                cfg.sinks.len(),
                cfg.routes.len(),
                [
                    cfg.sources.websocket.as_ref().map(|_| "websocket"),
                    cfg.sources.webhook.as_ref().map(|_| "webhook"),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: invalid", path.display());
            for p in e.problems() {
                eprintln!("  - {p}");
            }
            ExitCode::from(2)
        }
    }
}

fn route(
    config: &std::path::Path,
    event: &std::path::Path,
    client_id: Option<&str>,
    event_type: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: invalid", config.display());
            for p in e.problems() {
                eprintln!("  - {p}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    let router = Router::compile(&cfg).map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let raw = std::fs::read(event).with_context(|| format!("reading {}", event.display()))?;
    let opts = ParseOptions {
        id_pointer: cfg.event.id_pointer.clone(),
        ..ParseOptions::default()
    };
    let ctx = ParseContext {
        client_id,
        type_hint: event_type,
        id_hint: None,
    };
    let ev = match Event::parse(Bytes::from(raw), &opts, &ctx) {
        Ok(ev) => ev,
        Err(e) => {
            println!("not an event: {e}");
            println!("-> dead letter (reason: unparseable)");
            return Ok(ExitCode::from(1));
        }
    };
    println!(
        "event {} (type {}, entity {}, action {}, client {})",
        ev.event_id,
        ev.event_type,
        ev.event_type.entity(),
        ev.event_type.action(),
        ev.client_id.as_deref().unwrap_or("-")
    );
    let routed = router.route(&ev);
    for f in &routed.filtered_by {
        println!("route {f}: type matches, excluded by its `where` filter");
    }
    if routed.is_unmatched() {
        if ev.event_type.is_heartbeat() {
            println!("-> heartbeat: feeds the WebSocket watchdog, not published");
        } else {
            println!(
                "-> unmatched: {}",
                match router.unmatched_policy() {
                    fondo_bridge::config::Unmatched::DeadLetter => "dead-lettered",
                    fondo_bridge::config::Unmatched::Drop => "dropped (counted)",
                }
            );
        }
    }
    for d in &routed.destinations {
        println!("-> route {} → sink {}", d.route, d.sink);
        println!("   topic:   {}", d.topic);
        println!("   key:     {}", d.key.as_deref().unwrap_or("(none)"));
        for (k, v) in &d.headers {
            println!("   header:  {k}: {v}");
        }
        println!("   body:    {}", String::from_utf8_lossy(&d.body));
    }
    for f in &routed.failures {
        println!(
            "-> route {} → sink {}: cannot render ({}) → dead letter",
            f.route, f.sink, f.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(config: PathBuf) -> anyhow::Result<ExitCode> {
    let cfg = match Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: invalid", config.display());
            for p in e.problems() {
                eprintln!("  - {p}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    let _telemetry = fondo_bridge::telemetry::init(&cfg.telemetry); // flushes spans when dropped
    let stop = CancellationToken::new();
    spawn_signal_handler(stop.clone());
    let bridge = Bridge::start(cfg).await.context("starting the bridge")?;
    bridge.watch_config(config.clone(), std::time::Duration::from_secs(2));
    tracing::info!("fondo-bridge running");
    stop.cancelled().await;
    match bridge.shutdown().await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ AppError::DrainTimeout(_)) => {
            tracing::error!(error = %e, "shutdown incomplete");
            Ok(ExitCode::from(3))
        }
        Err(e) => Err(e.into()),
    }
}

async fn demo(args: fondo_bridge::demo::DemoArgs) -> anyhow::Result<ExitCode> {
    fondo_bridge::telemetry::init_logging(&fondo_bridge::config::TelemetryConfig {
        log_level: "error".into(),
        ..Default::default()
    });
    let stop = CancellationToken::new();
    spawn_signal_handler(stop.clone());
    let s = fondo_bridge::demo::run(args, stop).await?;
    println!(
        "demo: sent {} events, received {}, delivered {} (every destination confirmed), dead-lettered {}, in {:.1} s",
        s.sent,
        s.received,
        s.delivered,
        s.dead_lettered,
        s.elapsed.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

async fn dlq(
    config: &std::path::Path,
    command: fondo_bridge::dlq_cli::DlqCommand,
) -> anyhow::Result<ExitCode> {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: invalid", config.display());
            for p in e.problems() {
                eprintln!("  - {p}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    fondo_bridge::telemetry::init_logging(&fondo_bridge::config::TelemetryConfig {
        log_level: "warn".into(),
        ..Default::default()
    });
    match fondo_bridge::dlq_cli::run(command, &cfg).await {
        Ok(outcome) => Ok(ExitCode::from(outcome.code)),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

async fn simulate(what: Simulate) -> anyhow::Result<ExitCode> {
    fondo_bridge::telemetry::init_logging(&fondo_bridge::config::TelemetryConfig::default());
    match what {
        Simulate::Stream(args) => {
            let stop = CancellationToken::new();
            spawn_signal_handler(stop.clone());
            fondo_bridge::simulator::stream::run_stream(args, stop).await?;
        }
        Simulate::Webhooks(args) => {
            let report = fondo_bridge::simulator::webhook_sender::run(args).await?;
            println!("{}", report.summary());
            if report.failed > 0 {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or SIGINT (Ctrl-C) cancels `stop`.
fn spawn_signal_handler(stop: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        stop.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        stop.cancel();
    });
}
