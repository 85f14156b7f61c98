//! RabbitMQ: a durable topic exchange and queue, the queue's count, and the bare lapin client.

use anyhow::anyhow;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use crate::payload::{CLIENT_ID, Ev};
use crate::window::{Published, windowed};

/// A connection and a channel for setting up and counting.
pub async fn admin(url: &str) -> anyhow::Result<(Connection, Channel)> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    Ok((conn, ch))
}

/// A durable topic exchange and a durable classic queue bound with `#`.
pub async fn topology(ch: &Channel, exchange: &str, queue: &str) -> anyhow::Result<()> {
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
    Ok(())
}

/// The queue's message count; the queue and the exchange are deleted.
pub async fn count_and_delete(ch: &Channel, exchange: &str, queue: &str) -> anyhow::Result<u64> {
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let n = u64::from(q.message_count());
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = ch
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await;
    Ok(n)
}

/// The bare client: persistent, `mandatory` publishes with publisher confirms, the sink's
/// properties and headers.
pub async fn raw(
    url: &str,
    exchange: &str,
    prefix: &str,
    pool: &[Ev],
    n: u64,
    window: usize,
) -> anyhow::Result<Published> {
    let (conn, ch) = confirming(url).await?;
    let ch = &ch;
    let published = windowed(n, window, |i| {
        let ev = &pool[(i as usize) % pool.len()];
        let rk = format!("{prefix}.{}", ev.entity);
        // As long as the bridge's ids (32 hex digits), so both send messages of one size.
        let id = format!("{i:032x}");
        async move { publish(ch, exchange, &rk, &id, ev.etype, &ev.key, &ev.body).await }
    })
    .await;
    let _ = conn.close(200, "bye".into()).await;
    Ok(published)
}

/// A connection and a channel in confirm mode: the bare publisher.
pub async fn confirming(url: &str) -> anyhow::Result<(Connection, Channel)> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok((conn, ch))
}

/// One message as the bare publisher sends it (`mandatory`, the sink's properties and headers),
/// awaited to its confirm.
pub async fn publish(
    ch: &Channel,
    exchange: &str,
    rk: &str,
    id: &str,
    etype: &str,
    key: &str,
    body: &[u8],
) -> anyhow::Result<()> {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            rk.into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            body,
            properties(id, etype, key),
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(anyhow!("returned (unroutable)")),
        other => Err(anyhow!("not acked: {other:?}")),
    }
}

/// The properties and headers the bridge's RabbitMQ sink sets, so the broker handles the same
/// message in both scenarios and the ratio is the bridge's own.
fn properties(id: &str, etype: &str, key: &str) -> BasicProperties {
    let mut table = FieldTable::default();
    table.insert("fondo-event-id".into(), AMQPValue::LongString(id.into()));
    table.insert(
        "fondo-event-type".into(),
        AMQPValue::LongString(etype.into()),
    );
    table.insert(
        "fondo-client-id".into(),
        AMQPValue::LongString(CLIENT_ID.into()),
    );
    table.insert(
        "fondo-source".into(),
        AMQPValue::LongString("websocket".into()),
    );
    table.insert("fondo-key".into(), AMQPValue::LongString(key.into()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(id))
        .with_timestamp(now)
        .with_app_id(ShortString::from("fondo-bridge"))
        .with_headers(table)
        .with_type(ShortString::from(etype))
}
