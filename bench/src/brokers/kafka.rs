//! Kafka: topics per entity, a count read back, and the bare rdkafka producer.

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::payload::{CLIENT_ID, ENTITIES, Ev, unique};
use crate::window::{Published, windowed};

/// `<prefix>.<entity>` for every entity, and `<prefix>.warmup`, 3 partitions each.
pub async fn create_topics(brokers: &str, prefix: &str) -> anyhow::Result<()> {
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let mut names: Vec<String> = ENTITIES.iter().map(|e| format!("{prefix}.{e}")).collect();
    names.push(format!("{prefix}.warmup"));
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, 3, TopicReplication::Fixed(1)))
        .collect();
    let res = admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .context("create_topics")?;
    for r in res {
        if let Err((t, e)) = r {
            bail!("cannot create topic {t}: {e}");
        }
    }
    Ok(())
}

/// Messages in the prefix's topics, counted by reading them all back (tansu's high
/// watermarks were not reliable here), plus the high watermarks' sum for the record.
pub fn count(brokers: &str, prefix: &str, expect: u64) -> anyhow::Result<(u64, u64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("fondo-bench-count"))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut hw = 0u64;
    for e in ENTITIES {
        let topic = format!("{prefix}.{e}");
        let md = c.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)?;
                if let Ok((_, hi)) = c.fetch_watermarks(&topic, p.id(), Duration::from_secs(10)) {
                    hw += u64::try_from(hi).unwrap_or(0);
                }
            }
        }
    }
    c.assign(&tpl)?;
    let mut n = 0u64;
    let started = Instant::now();
    let mut last = Instant::now();
    let idle = Duration::from_secs(3);
    while last.elapsed() < idle && started.elapsed() < Duration::from_secs(300) {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(_)) => {
                n += 1;
                last = Instant::now();
            }
            Some(Err(e)) => eprintln!("  kafka count: {e}"),
            None if n >= expect => break,
            None => {}
        }
    }
    Ok((n, hw))
}

/// The bare producer: `acks=all`, idempotent, the sink's queue limits, the sink's four
/// `fondo-*` headers; warmed up by one message outside the timing.
pub async fn raw(
    brokers: &str,
    prefix: &str,
    pool: &[Ev],
    n: u64,
    window: usize,
) -> anyhow::Result<Published> {
    let producer = producer(brokers, prefix).await?;
    let topics: Vec<String> = ENTITIES.iter().map(|e| format!("{prefix}.{e}")).collect();
    let topic_of = |entity: &str| {
        ENTITIES
            .iter()
            .position(|e| *e == entity)
            .and_then(|i| topics.get(i))
            .cloned()
            .unwrap_or_else(|| format!("{prefix}.other"))
    };
    let producer = &producer;
    let published = windowed(n, window, |i| {
        let ev = &pool[(i as usize) % pool.len()];
        let topic = topic_of(ev.entity);
        let id = format!("raw-{i}");
        async move { send(producer, &topic, &id, ev.etype, &ev.key, &ev.body).await }
    })
    .await;
    Ok(published)
}

/// The bare producer (`acks=all`, idempotent, the sink's queue limits), warmed up (idempotent
/// producer id, metadata, connections) by one message to `<prefix>.warmup`.
pub async fn producer(brokers: &str, prefix: &str) -> anyhow::Result<FutureProducer> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "fondo-bench-raw")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", "100000")
        .set("queue.buffering.max.kbytes", "65536")
        .create()?;
    let warm = format!("{prefix}.warmup");
    producer
        .send(
            FutureRecord::to(&warm).key("w").payload("{}"),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow!("kafka warm-up: {e}"))?;
    Ok(producer)
}

/// One message as the bare producer sends it, with the sink's four `fondo-*` headers, awaited
/// to its delivery report.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    id: &str,
    etype: &str,
    key: &str,
    body: &[u8],
) -> anyhow::Result<()> {
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "fondo-event-id",
            value: Some(id),
        })
        .insert(Header {
            key: "fondo-event-type",
            value: Some(etype),
        })
        .insert(Header {
            key: "fondo-client-id",
            value: Some(CLIENT_ID),
        })
        .insert(Header {
            key: "fondo-source",
            value: Some("websocket"),
        });
    let rec = FutureRecord::to(topic)
        .key(key.as_bytes())
        .payload(body)
        .headers(headers);
    producer
        .send(rec, Duration::from_secs(30))
        .await
        .map(|_| ())
        .map_err(|(e, _)| anyhow!("kafka: {e}"))
}
