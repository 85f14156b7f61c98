//! Kafka: a topic `<prefix>.<event type>` per event type the generator emits (created here, so
//! both bridges write to the same partitions), the sum of their high watermarks, polled while the
//! load runs, and at the end the count of messages read back from the beginning (tansu's high
//! watermarks have lagged behind what it holds, so the count is the one read back).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::Limits;
use crate::observe::Observer;

fn topics(prefix: &str) -> Vec<String> {
    fondo_bridge::event::KNOWN_EVENT_TYPES
        .iter()
        .filter(|t| **t != "heartbeat")
        .map(|t| format!("{prefix}.{t}"))
        .collect()
}

pub async fn watch(
    brokers: &str,
    prefix: &str,
    partitions: i32,
    limits: Limits,
    obs: &mut Observer,
    ready: impl FnOnce() -> anyhow::Result<()>,
    keep: bool,
) -> anyhow::Result<u64> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let names = topics(prefix);
    let new: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .context("create_topics")?
    {
        if let Err((t, e)) = r {
            bail!("cannot create topic {t}: {e}");
        }
    }
    ready()?;
    let brokers = brokers.to_owned();
    let (total, seen_at) = tokio::task::spawn_blocking({
        let names = names.clone();
        move || {
            let (hw, seen_at) = poll_watermarks(&brokers, &names, partitions, limits)?;
            let read = read_back(&brokers, &names, partitions, limits.expect)?;
            if read != hw {
                eprintln!("fondo-probe: high watermarks sum to {hw}, {read} messages read back");
            }
            anyhow::Ok((read, seen_at))
        }
    })
    .await??;
    for (n, at) in seen_at {
        obs.counted(n, at);
    }
    if !keep {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let _ = admin.delete_topics(&refs, &AdminOptions::new()).await;
    }
    Ok(total)
}

/// Messages in the topics, read from the beginning until `expect` were read and nothing more
/// came for a second, or nothing came for 3 s.
fn read_back(brokers: &str, names: &[String], partitions: i32, expect: u64) -> anyhow::Result<u64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("fondo-probe-read-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for t in names {
        for p in 0..partitions {
            tpl.add_partition_offset(t, p, Offset::Beginning)?;
        }
    }
    c.assign(&tpl)?;
    let started = Instant::now();
    let mut last = Instant::now();
    let mut n = 0u64;
    loop {
        let quiet = last.elapsed();
        if quiet >= Duration::from_secs(3)
            || (n >= expect && quiet >= Duration::from_secs(1))
            || started.elapsed() >= Duration::from_secs(300)
        {
            return Ok(n);
        }
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(_)) => {
                n += 1;
                last = Instant::now();
            }
            Some(Err(e)) => eprintln!("fondo-probe: kafka read-back: {e}"),
            None => {}
        }
    }
}

/// Polls the sum of high watermarks every 200 ms until it reaches `expect`, stops growing for
/// `idle`, or `timeout` passes; returns it and each increase.
fn poll_watermarks(
    brokers: &str,
    names: &[String],
    partitions: i32,
    limits: Limits,
) -> anyhow::Result<(u64, Vec<(u64, u128)>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "fondo-probe")
        .create()?;
    let started = Instant::now();
    let mut last_change = started;
    let mut total = 0u64;
    let mut increases = Vec::new();
    loop {
        let mut sum = 0u64;
        for t in names {
            for p in 0..partitions {
                if let Ok((_, hi)) = c.fetch_watermarks(t, p, Duration::from_secs(10)) {
                    sum += u64::try_from(hi).unwrap_or(0);
                }
            }
        }
        if sum > total {
            increases.push((sum - total, crate::observe::unix_ns()));
            total = sum;
            last_change = Instant::now();
        }
        let idle = total > 0 && last_change.elapsed() >= limits.idle;
        if total >= limits.expect || idle || started.elapsed() >= limits.timeout {
            return Ok((total, increases));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
