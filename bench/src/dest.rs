//! Where a scenario publishes: the broker kind, what it set up there (to count and clean after),
//! and the bridge config that points at it.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use serde_json::json;

use fondo_bridge::config::Config;

use crate::args::Args;
use crate::brokers::{file, kafka, nats, rabbitmq};
use crate::payload::unique;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SinkKind {
    Kafka,
    Rabbit,
    Nats,
    File,
}

impl SinkKind {
    pub const ALL: [Self; 4] = [Self::Kafka, Self::Rabbit, Self::Nats, Self::File];

    pub fn name(self) -> &'static str {
        match self {
            Self::Kafka => "kafka",
            Self::Rabbit => "rabbitmq",
            Self::Nats => "nats",
            Self::File => "file",
        }
    }
}

/// What a scenario set up on the broker, to count and clean afterwards.
pub struct Dest {
    pub kind: SinkKind,
    /// Topic (routing key, subject) prefix: `<prefix>.<entity>`.
    pub prefix: String,
    pub exchange: String,
    queue: String,
    stream: String,
    pub file_dir: PathBuf,
    /// The file sink's `fsync` (`batch` unless a scenario measures without the disk's syncs).
    pub file_fsync: &'static str,
}

impl Dest {
    /// Names unique to this scenario, set up on the broker (Kafka: restarted first when
    /// `--kafka-restart-cmd` says how).
    pub async fn prepare(a: &Args, kind: SinkKind, tmp: &Path) -> anyhow::Result<Self> {
        let tag = unique("bench").replace('-', "_");
        let d = Self {
            kind,
            prefix: format!("b{}", tag.trim_start_matches("bench")),
            exchange: format!("{tag}_x"),
            queue: format!("{tag}_q"),
            stream: format!("{tag}_S").to_uppercase(),
            file_dir: tmp.join("out"),
            file_fsync: "batch",
        };
        match kind {
            SinkKind::Kafka => {
                if let Some(cmd) = &a.kafka_restart_cmd {
                    let st = tokio::process::Command::new("sh")
                        .arg("-c")
                        .arg(cmd)
                        .status()
                        .await?;
                    if !st.success() {
                        bail!("kafka restart command failed: {st}");
                    }
                }
                kafka::create_topics(&a.kafka, &d.prefix).await?
            }
            SinkKind::Rabbit => {
                let (conn, ch) = rabbitmq::admin(&a.amqp).await?;
                rabbitmq::topology(&ch, &d.exchange, &d.queue).await?;
                let _ = conn.close(200, "bye".into()).await;
            }
            SinkKind::Nats => nats::create_stream(&a.nats, &d.stream, &d.prefix).await?,
            SinkKind::File => std::fs::create_dir_all(&d.file_dir)?,
        }
        Ok(d)
    }

    /// The broker's own count of the messages published (waiting for at least `expect` on
    /// Kafka, which is read back), and the scenario's topics, queue or stream deleted.
    pub async fn count_and_clean(&self, a: &Args, expect: u64) -> anyhow::Result<u64> {
        Ok(match self.kind {
            SinkKind::Kafka => {
                let (b, p) = (a.kafka.clone(), self.prefix.clone());
                let (n, hw) =
                    tokio::task::spawn_blocking(move || kafka::count(&b, &p, expect)).await??;
                eprintln!("  kafka: {n} messages read back; high watermarks sum {hw}");
                n
            }
            SinkKind::Rabbit => {
                let (conn, ch) = rabbitmq::admin(&a.amqp).await?;
                let n = rabbitmq::count_and_delete(&ch, &self.exchange, &self.queue).await?;
                let _ = conn.close(200, "bye".into()).await;
                n
            }
            SinkKind::Nats => nats::count_and_delete(&a.nats, &self.stream).await?,
            SinkKind::File => file::count_lines(&self.file_dir),
        })
    }

    /// The bridge's `sinks.out` for this destination, its confirm window `--window`.
    fn sink_json(&self, a: &Args) -> serde_json::Value {
        match self.kind {
            SinkKind::Kafka => json!({"type": "kafka", "brokers": a.kafka,
                "max_in_flight": a.window}),
            SinkKind::Rabbit => json!({"type": "rabbitmq", "url": a.amqp,
                "exchange": self.exchange, "max_in_flight": a.window}),
            SinkKind::Nats => json!({"type": "nats", "url": a.nats,
                "max_in_flight": a.window}),
            SinkKind::File => {
                let mut j = json!({"type": "file", "dir": self.file_dir, "fsync": self.file_fsync});
                if let Some(ms) = a.group_commit_ms {
                    j["group_commit_ms"] = ms.into();
                }
                j
            }
        }
    }
}

/// The bridge under test: `source` (the `sources` section), one sink `out` at `dest`, and
/// `routes` routes of which only the last, a catch-all to `<prefix>.{entity}`, ever matches
/// (the others match `*` but their `where` filter never holds). The spool and the dead-letter
/// fallback live in `tmp`.
pub fn bridge_config(
    a: &Args,
    dest: &Dest,
    source: serde_json::Value,
    routes: usize,
    tmp: &Path,
) -> anyhow::Result<Config> {
    let mut rs: Vec<serde_json::Value> = (1..routes)
        .map(|i| {
            json!({"name": format!("never-{i}"), "match": ["*"],
                   "where": {"/eventType": format!("never-{i}")},
                   "to": [{"sink": "out", "topic": format!("{}.never", dest.prefix)}]})
        })
        .collect();
    rs.push(json!({"name": "all", "match": ["*"],
                   "to": [{"sink": "out", "topic": format!("{}.{{entity}}", dest.prefix)}]}));
    let mut spool = json!({"dir": tmp.join("spool")});
    if let Some(ms) = a.group_commit_ms {
        spool["group_commit_ms"] = ms.into();
    }
    let cfg = json!({
        "sources": source,
        "sinks": {"out": dest.sink_json(a)},
        "routes": rs,
        "unmatched": "dead_letter",
        "dead_letter": {"fallback_file": tmp.join("dead-letter.jsonl")},
        "delivery": {"max_in_flight": a.intake(), "drain_timeout_ms": 30000},
        "spool": spool,
    });
    Config::from_str_with_env(&cfg.to_string(), "yaml", Vec::<(String, String)>::new())
        .map_err(|e| anyhow!("bench config: {e}"))
}

/// A fresh directory under the system's temp dir.
pub fn tmp_dir(tag: &str) -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(unique(&format!("fondo-bench-{tag}")));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
