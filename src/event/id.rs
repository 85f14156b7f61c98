//! Stable event ids: the same event gets the same id whatever its key order or whitespace, so the
//! same event seen on the WebSocket and on a webhook, or redelivered, is recognised.
//!
//! The hash is XXH3-128: ids are for recognising the same event, not for security (every event
//! comes from an authenticated Fondo stream or a signed webhook), and it costs a small fraction of
//! SHA-256 on the per-event path (SHA-256 was about a tenth of the bridge's CPU per event).

use serde_json::Value;
use xxhash_rust::xxh3::{Xxh3Default, xxh3_128};

/// Canonical JSON: object keys sorted, no whitespace. (`serde_json::Map` is a `BTreeMap` here: the
/// crate is built without `preserve_order`, which a test guards.)
pub fn canonical_json(v: &Value) -> Vec<u8> {
    // Serialising a Value cannot fail: every key is a string.
    serde_json::to_vec(v).unwrap_or_default()
}

/// `xxh3_128(event_type "\n" canonical body)`, 32 hex digits. `body` is a `Value` or a
/// [`super::Node`]: both serialise to the same canonical bytes.
pub fn content_event_id<T: serde::Serialize + ?Sized>(event_type: &str, body: &T) -> String {
    let mut h = Xxh3Default::new();
    h.update(event_type.as_bytes());
    h.update(b"\n");
    // The canonical form streamed straight into the hash: the same bytes as `canonical_json`,
    // without building them in memory.
    let _ = serde_json::to_writer(HashWriter(&mut h), body);
    hex::encode(h.digest128().to_be_bytes())
}

/// `io::Write` into a running hash.
struct HashWriter<'a>(&'a mut Xxh3Default);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// [`content_event_id`] of a [`super::Node`], through its direct canonical writer: the same id,
/// computed without a serializer per string (checked against the `Value` path in tests and in the
/// `parse_event` fuzz target).
pub fn node_event_id(event_type: &str, body: &super::Node<'_>, size_hint: usize) -> String {
    let mut buf = Vec::with_capacity(event_type.len() + 1 + size_hint);
    buf.extend_from_slice(event_type.as_bytes());
    buf.push(b'\n');
    body.write_canonical(&mut buf);
    hex::encode(xxh3_128(&buf).to_be_bytes())
}
