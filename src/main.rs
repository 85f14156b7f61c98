//! The `fondo-bridge` command line: argument parsing; each command lives in `cli/`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

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
        command: fondo_bridge::dlq::commands::DlqCommand,
    },
    /// Validate a config file and list every problem with its path. Exit 0 when valid.
    Check {
        #[arg(short, long, env = "FONDO_BRIDGE_CONFIG")]
        config: PathBuf,
    },
    /// Print the AsyncAPI 3.0 document of what a config publishes: channels, messages, schemas.
    Asyncapi {
        #[arg(short, long, env = "FONDO_BRIDGE_CONFIG")]
        config: PathBuf,
        /// `yaml` or `json`.
        #[arg(long, value_enum, default_value_t = cli::asyncapi::Format::Yaml)]
        format: cli::asyncapi::Format,
    },
    /// A live view of a running bridge from its admin endpoint: events/s per sink and route, in
    /// flight, dead letters, retries, WebSocket streams, spool, readiness. `q` quits.
    Top(cli::top::TopArgs),
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
        Command::Run { config } => cli::run::run(config).await,
        Command::Check { config } => Ok(cli::check::check(&config)),
        Command::Asyncapi { config, format } => cli::asyncapi::asyncapi(&config, format),
        Command::Demo(args) => cli::demo::demo(args).await,
        Command::Dlq { config, command } => cli::dlq::dlq(&config, command).await,
        Command::Simulate { what } => cli::simulate::simulate(what).await,
        Command::Top(args) => cli::top::top(args).await,
        Command::Route {
            config,
            event,
            client_id,
            event_type,
        } => cli::route::route(&config, &event, client_id.as_deref(), event_type.as_deref()),
    }
}
