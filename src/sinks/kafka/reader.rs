//! Reads a Kafka topic back from its start: what `dlq list`/`dlq replay` consume dead letters
//! with. No consumer group and nothing committed, so reading changes nothing on the broker.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

/// Assigns every partition from its low to its high watermark (no group, nothing committed).
pub async fn read(
    cfg: &crate::config::KafkaSinkConfig,
    topic: &str,
) -> Result<Vec<Vec<u8>>, String> {
    let mut cc = ClientConfig::new();
    for (k, v) in &cfg.options {
        let k = k.as_str();
        if k.starts_with("security.")
            || k.starts_with("sasl.")
            || k.starts_with("ssl.")
            || k.starts_with("socket.")
            || k == "broker.address.family"
        {
            cc.set(k, v);
        }
    }
    if let Ok(Some(p)) = crate::config::read_secret(
        cfg.sasl_password.as_ref(),
        cfg.sasl_password_file.as_deref(),
    ) {
        cc.set("sasl.password", p.expose());
    }
    cc.set("bootstrap.servers", cfg.brokers.trim())
        .set(
            "group.id",
            format!(
                "fondo-bridge-dlq-reader-{}-{}",
                std::process::id(),
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default()
            ),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("client.id", "fondo-bridge-dlq-reader");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_blocking(cc, &topic))
        .await
        .map_err(|e| e.to_string())?
}

fn read_blocking(cc: ClientConfig, topic: &str) -> Result<Vec<Vec<u8>>, String> {
    let t = Duration::from_secs(10);
    let consumer: BaseConsumer = cc.create().map_err(|e| e.to_string())?;
    let md = consumer
        .fetch_metadata(Some(topic), t)
        .map_err(|e| format!("metadata: {e}"))?;
    let Some(tm) = md.topics().iter().find(|x| x.name() == topic) else {
        return Ok(Vec::new());
    };
    if let Some(e) = tm.error() {
        if e == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART {
            return Ok(Vec::new());
        }
        return Err(format!("topic {topic}: {e:?}"));
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for p in tm.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), t)
            .map_err(|e| format!("watermarks of partition {}: {e}", p.id()))?;
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))
                .map_err(|e| e.to_string())?;
            ends.insert(p.id(), high);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    // To the high watermark of every partition, then on until nothing more comes for a
    // moment (some Kafka-protocol brokers report a stale high watermark).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut idle_since = Instant::now();
    while Instant::now() < deadline
        && (!ends.is_empty() || idle_since.elapsed() < Duration::from_millis(1500))
    {
        match consumer.poll(Duration::from_millis(300)) {
            None => {}
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(m)) => {
                idle_since = Instant::now();
                out.push(m.payload().map(<[u8]>::to_vec).unwrap_or_default());
                if ends
                    .get(&m.partition())
                    .is_some_and(|end| m.offset() + 1 >= *end)
                {
                    ends.remove(&m.partition());
                }
            }
        }
    }
    if !ends.is_empty() {
        return Err(format!(
            "partitions {:?} not read to their end",
            ends.keys().collect::<Vec<_>>()
        ));
    }
    Ok(out)
}
