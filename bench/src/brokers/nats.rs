//! NATS JetStream: a stream over the prefix's subjects, its count, and the bare async-nats client.

use std::time::Duration;

use anyhow::anyhow;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use crate::payload::{CLIENT_ID, Ev};
use crate::window::{Published, windowed};

/// A file-storage stream `name` over `<prefix>.>`, deduplicating by `Nats-Msg-Id` for 2 minutes.
pub async fn create_stream(url: &str, name: &str, prefix: &str) -> anyhow::Result<()> {
    let js = jetstream::new(async_nats::connect(url).await?);
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{prefix}.>")],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow!("create stream {name}: {e}"))?;
    Ok(())
}

/// The stream's message count; the stream is deleted.
pub async fn count_and_delete(url: &str, name: &str) -> anyhow::Result<u64> {
    let js = jetstream::new(async_nats::connect(url).await?);
    let mut s = js
        .get_stream(name)
        .await
        .map_err(|e| anyhow!("get stream {name}: {e}"))?;
    let n = s
        .info()
        .await
        .map_err(|e| anyhow!("stream info: {e}"))?
        .state
        .messages;
    let _ = js.delete_stream(name).await;
    Ok(n)
}

/// The bare client: JetStream publish with the sink's headers and `Nats-Msg-Id`, each awaited
/// to its PubAck.
pub async fn raw(
    url: &str,
    prefix: &str,
    pool: &[Ev],
    n: u64,
    window: usize,
) -> anyhow::Result<Published> {
    let js = jetstream::new(async_nats::connect(url).await?);
    let js = &js;
    let published = windowed(n, window, |i| {
        let ev = &pool[(i as usize) % pool.len()];
        let subject = format!("{prefix}.{}", ev.entity);
        let id = format!("raw-{i}");
        async move { publish(js, subject, &id, ev.etype, &ev.key, ev.body.clone()).await }
    })
    .await;
    Ok(published)
}

/// One message as the bare client publishes it: the sink's headers and `Nats-Msg-Id`, awaited
/// to its PubAck.
pub async fn publish(
    js: &jetstream::Context,
    subject: String,
    id: &str,
    etype: &str,
    key: &str,
    body: Bytes,
) -> anyhow::Result<()> {
    let mut h = async_nats::HeaderMap::new();
    h.insert("fondo-event-id", id);
    h.insert("fondo-event-type", etype);
    h.insert("fondo-client-id", CLIENT_ID);
    h.insert("fondo-source", "websocket");
    h.insert("fondo-key", key);
    h.insert("Nats-Msg-Id", id);
    let ack = js
        .publish_with_headers(subject, h, body)
        .await
        .map_err(|e| anyhow!("publish: {e}"))?;
    ack.await.map_err(|e| anyhow!("puback: {e}"))?;
    Ok(())
}
