//! Reads a JetStream subject from its start: what `dlq list`/`dlq replay` read dead letters
//! with, through an ephemeral consumer that acknowledges nothing.

use std::time::{Duration, Instant};

use futures::StreamExt as _;

use crate::sinks::Sink as _;
use async_nats::jetstream::{self, consumer};

/// Reads every message of `subject` through an ephemeral consumer that acknowledges nothing.
pub async fn read(
    name: &str,
    cfg: &crate::config::NatsSinkConfig,
    subject: &str,
) -> Result<Vec<Vec<u8>>, String> {
    let sink = crate::sinks::nats::NatsSink::connect(name, cfg)
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(sink.client().clone());
    let result = async {
        let stream = match js.stream_by_subject(subject).await {
            Ok(s) => s,
            Err(e) => {
                let text = e.to_string();
                if text.contains("not found") || text.contains("no stream") {
                    return Ok(Vec::new());
                }
                return Err(format!("no JetStream stream for subject {subject}: {e}"));
            }
        };
        let stream = js
            .get_stream(&stream)
            .await
            .map_err(|e| format!("stream {stream}: {e}"))?;
        let mut c: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: subject.to_owned(),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(300),
                max_ack_pending: -1,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("ephemeral consumer: {e}"))?;
        let info = c.info().await.map_err(|e| e.to_string())?;
        let total = usize::try_from(info.num_pending).unwrap_or(usize::MAX);
        let cname = info.name.clone();
        let mut out = Vec::with_capacity(total.min(100_000));
        let mut empty = 0;
        while out.len() < total && empty < 5 {
            let want = (total - out.len()).clamp(1, 500);
            let mut batch = c
                .batch()
                .max_messages(want)
                .expires(Duration::from_secs(2))
                .messages()
                .await
                .map_err(|e| format!("fetch: {e}"))?;
            let before = out.len();
            while let Some(m) = batch.next().await {
                let m = m.map_err(|e| format!("fetch: {e}"))?;
                // Never acknowledged: the consumer is ephemeral and goes away.
                out.push(m.payload.to_vec());
            }
            if out.len() == before {
                empty += 1;
            }
        }
        let _ = stream.delete_consumer(&cname).await;
        if out.len() < total {
            return Err(format!("read {} of {total} messages", out.len()));
        }
        Ok(out)
    }
    .await;
    let _ = sink.close(Instant::now() + Duration::from_secs(2)).await;
    result
}
