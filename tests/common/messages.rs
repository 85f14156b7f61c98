//! The message the sink tests publish: what the dispatcher renders, with a body that is hard to
//! carry.

use std::sync::Arc;

use bytes::Bytes;
use fondo_bridge::sinks::{Message, headers};

/// A message as the dispatcher renders it: the `fondo-*` headers, `traceparent` and a route
/// header `x-test-seq`. The body is JSON with non-ASCII text and escaped line breaks; every third
/// body (`seq` divisible by 3) goes on with bytes that are not UTF-8 (NUL, 0xFF) and a raw line
/// break, which a broker must give back byte for byte. `key` takes `"k"`, `&String`, `Some("k")`
/// or `None`.
pub fn message(topic: &str, key: impl MessageKey, seq: usize, event_id: &str) -> Message {
    let key = key.key();
    let id = key.unwrap_or("none");
    let mut body = format!(
        r#"{{"eventType":"order.update","current":{{"id":"{id}","seq":{seq},"note":"åäö \r\n"}}}}"#
    )
    .into_bytes();
    if seq.is_multiple_of(3) {
        body.extend_from_slice(&[0, 159, 146, 150, 255, b'\n']);
    }
    Message {
        topic: topic.to_owned(),
        key: key.map(str::to_owned),
        headers: vec![
            (headers::EVENT_ID.into(), event_id.to_owned()),
            (headers::EVENT_TYPE.into(), "order.update".into()),
            (
                headers::CLIENT_ID.into(),
                "49ad7378-121c-4a53-9894-dfd14a7b4877".into(),
            ),
            (headers::SOURCE.into(), "websocket".into()),
            (
                headers::TRACEPARENT.into(),
                format!("00-{:032x}-{:016x}-01", seq + 1, seq + 1),
            ),
            ("x-test-seq".into(), seq.to_string()),
        ],
        payload: Bytes::from(body),
        event_id: Arc::from(event_id),
        message_id: Arc::from(event_id),
        payload_is_json: false,
        pace: fondo_bridge::group_commit::Pace::Prompt,
        cloudevent: None,
    }
}

/// What [`message`] takes as its key.
pub trait MessageKey {
    fn key(&self) -> Option<&str>;
}

impl MessageKey for &str {
    fn key(&self) -> Option<&str> {
        Some(self)
    }
}

impl MessageKey for &String {
    fn key(&self) -> Option<&str> {
        Some(self.as_str())
    }
}

impl MessageKey for Option<&str> {
    fn key(&self) -> Option<&str> {
        *self
    }
}
