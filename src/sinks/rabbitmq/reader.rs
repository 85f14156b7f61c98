//! Reads a RabbitMQ queue without consuming it: what `dlq list`/`dlq replay` read dead letters
//! with. Every message is fetched unacknowledged and then requeued.

use lapin::options::{BasicGetOptions, BasicNackOptions};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

/// Fetches every message of `queue` unacknowledged, then requeues them all.
pub async fn read(
    cfg: &crate::config::RabbitMqSinkConfig,
    queue: &str,
) -> Result<Vec<Vec<u8>>, String> {
    let mut uri: AMQPUri = cfg
        .url
        .parse()
        .map_err(|e| format!("invalid AMQP URL: {e}"))?;
    if let Some(user) = &cfg.user {
        uri.authority.userinfo.username = user.clone();
    }
    if let Ok(Some(p)) =
        crate::config::read_secret(cfg.password.as_ref(), cfg.password_file.as_deref())
    {
        uri.authority.userinfo.password = p.expose().to_owned();
    }
    let conn = Connection::connect_uri(uri, ConnectionProperties::default())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let result = async {
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| format!("channel: {e}"))?;
        let mut out = Vec::new();
        let mut last_tag = None;
        let res = loop {
            match ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
            {
                Ok(Some(m)) => {
                    last_tag = Some(m.delivery.delivery_tag);
                    out.push(m.delivery.data.clone());
                    if m.message_count == 0 {
                        break Ok(());
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(format!("queue {queue}: {e}")),
            }
        };
        if let Some(tag) = last_tag {
            // Everything fetched goes back, in order; closing the channel would do it too.
            let _ = ch
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await;
        }
        let _ = ch.close(200, "dlq read done".into()).await;
        res.map(|()| out)
    }
    .await;
    let _ = conn.close(200, "dlq read done".into()).await;
    result
}
