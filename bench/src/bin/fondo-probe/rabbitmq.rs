//! RabbitMQ: a topic exchange and a queue bound `#`, consumed as messages arrive; the count on the
//! broker is what was consumed plus what is still in the queue.

use futures::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use crate::Limits;
use crate::observe::{Observer, follow};

pub async fn watch(
    url: &str,
    exchange: &str,
    queue: &str,
    limits: Limits,
    obs: &mut Observer,
    ready: impl FnOnce() -> anyhow::Result<()>,
    keep: bool,
) -> anyhow::Result<u64> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    // Leftovers of an earlier run would be counted too.
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let consumer = ch
        .basic_consume(
            queue.into(),
            "fondo-probe".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    ready()?;
    let bodies = consumer.filter_map(|d| async move { d.ok().map(|d| d.data) });
    follow(Box::pin(bodies), obs, limits).await;
    let consumed = obs.seen();
    let left = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| u64::from(q.message_count()))
        .unwrap_or(0);
    if !keep {
        let admin = conn.create_channel().await?;
        let _ = admin
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
        let _ = admin
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "bye".into()).await;
    Ok(consumed + left)
}
