//! `fondo-probe`: the broker side of `scripts/bench-peer.sh`, the same for any bridge under test.
//!
//! `fondo-probe watch` prepares the broker (NATS: a fresh JetStream stream with memory storage over
//! `<prefix>.>`; RabbitMQ: a topic exchange and a queue bound `#`; Kafka: a topic per event type),
//! watches what arrives (NATS: a core subscription on `<prefix>.>`; RabbitMQ: a consumer of the
//! queue; Kafka: the sum of the topics' high watermarks), and when `--expect` messages arrived (or
//! nothing more came for `--idle-ms`, or `--timeout-s` passed) prints one JSON line: the count on
//! the broker, what it saw live, when the first and the last message arrived, the latency from the
//! `benchSentNs` field the simulator's `--stamp` writes into each body, and with `--order` how
//! many events arrived out of order for their object. Then it deletes what it created.
//!
//! `fondo-probe event-types` prints the event types the simulator's generator emits, one a line
//! (for routing configurations that need the list).

mod kafka;
mod nats;
mod observe;
mod rabbitmq;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use observe::Observer;

#[derive(Parser)]
#[command(about = "Prepares a broker for a bridge benchmark, watches it, and reports its count")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Prepare the broker, watch it, print one JSON line, clean up.
    Watch(WatchArgs),
    /// The event types the simulator's generator emits, one a line.
    EventTypes,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Broker {
    Nats,
    Rabbitmq,
    Kafka,
}

#[derive(clap::Args)]
struct WatchArgs {
    /// Which broker.
    #[arg(long, value_enum)]
    broker: Broker,
    /// Its address (nats://…, amqp://…, or Kafka bootstrap servers).
    #[arg(long)]
    url: String,
    /// The subject / routing key / topic prefix the bridges publish under (`<prefix>.<type>`).
    #[arg(long)]
    prefix: String,
    /// NATS: the JetStream stream's name.
    #[arg(long, default_value = "FONDO_PROBE")]
    stream: String,
    /// RabbitMQ: the topic exchange.
    #[arg(long, default_value = "fondo-probe")]
    exchange: String,
    /// RabbitMQ: the queue bound `#` to the exchange.
    #[arg(long, default_value = "fondo-probe")]
    queue: String,
    /// Kafka: partitions per topic.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Messages expected; the probe stops once it has seen them.
    #[arg(long)]
    expect: u64,
    /// Check the order of each object's events (costs a JSON parse per message).
    #[arg(long)]
    order: bool,
    /// Touched once the broker is prepared and the probe is watching.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Stop when nothing arrived for this long after the first message.
    #[arg(long, default_value_t = 10_000)]
    idle_ms: u64,
    /// Stop after this long in any case.
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
    /// Leave the stream / queue / exchange / topics in place.
    #[arg(long)]
    keep: bool,
}

/// When to stop watching.
#[derive(Clone, Copy)]
struct Limits {
    expect: u64,
    idle: Duration,
    timeout: Duration,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::EventTypes => {
            for t in fondo_bridge::event::KNOWN_EVENT_TYPES {
                if *t != "heartbeat" {
                    println!("{t}");
                }
            }
            Ok(())
        }
        Cmd::Watch(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let line = rt.block_on(watch(a))?;
            println!("{line}");
            Ok(())
        }
    }
}

async fn watch(a: WatchArgs) -> anyhow::Result<String> {
    let limits = Limits {
        expect: a.expect,
        idle: Duration::from_millis(a.idle_ms),
        timeout: Duration::from_secs(a.timeout_s),
    };
    let mut obs = Observer::new(a.order)?;
    let ready = || -> anyhow::Result<()> {
        if let Some(f) = &a.ready_file {
            std::fs::write(f, b"ready\n")?;
        }
        Ok(())
    };
    let on_broker = match a.broker {
        Broker::Nats => {
            nats::watch(
                &a.url, &a.stream, &a.prefix, limits, &mut obs, ready, a.keep,
            )
            .await?
        }
        Broker::Rabbitmq => {
            rabbitmq::watch(
                &a.url,
                &a.exchange,
                &a.queue,
                limits,
                &mut obs,
                ready,
                a.keep,
            )
            .await?
        }
        Broker::Kafka => {
            kafka::watch(
                &a.url,
                &a.prefix,
                a.partitions,
                limits,
                &mut obs,
                ready,
                a.keep,
            )
            .await?
        }
    };
    let broker = match a.broker {
        Broker::Nats => "nats",
        Broker::Rabbitmq => "rabbitmq",
        Broker::Kafka => "kafka",
    };
    Ok(obs.report(broker, a.expect, on_broker).to_string())
}
