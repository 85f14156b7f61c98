//! NATS JetStream: a fresh memory stream over `<prefix>.>`, a core subscription on the same
//! subjects, and the stream's message count.

use anyhow::anyhow;
use async_nats::jetstream::{self, stream};
use futures::StreamExt as _;

use crate::Limits;
use crate::observe::{Observer, follow};

pub async fn watch(
    url: &str,
    name: &str,
    prefix: &str,
    limits: Limits,
    obs: &mut Observer,
    ready: impl FnOnce() -> anyhow::Result<()>,
    keep: bool,
) -> anyhow::Result<u64> {
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client.clone());
    // A stream left by an earlier run would count its messages too.
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{prefix}.>")],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow!("create stream {name}: {e}"))?;
    let sub = client.subscribe(format!("{prefix}.>")).await?;
    client.flush().await?;
    ready()?;
    follow(sub.map(|m| m.payload), obs, limits).await;
    let mut s = js
        .get_stream(name)
        .await
        .map_err(|e| anyhow!("get stream {name}: {e}"))?;
    let n = s
        .info()
        .await
        .map_err(|e| anyhow!("stream info {name}: {e}"))?
        .state
        .messages;
    if !keep {
        let _ = js.delete_stream(name).await;
    }
    Ok(n)
}
