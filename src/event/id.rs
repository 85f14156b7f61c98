//! Event identity: the content key of a body, and occurrence ids.
//!
//! Fondo's bodies carry no event id, version or timestamp: an account that goes active → blocked →
//! active emits a first and third body that are byte for byte the same, and both are real changes.
//! So two notions are kept apart:
//!
//! - The **content key** ([`content_key`]) is a hash of the event type and the canonical body (keys
//!   sorted, no whitespace). Two copies with the same content key *could* be the same occurrence;
//!   the key alone never proves it, and nothing is acknowledged because its content was seen.
//! - The **occurrence id** (`Event::event_id`, the `fondo-event-id` header) names one change Fondo
//!   emitted. It is minted when the first copy enters ([`mint_occurrence_id`]) and carried by every
//!   later copy of that change: in the spool record of a WebSocket event, as the delivery id of a
//!   webhook, and by a copy from the other source that pairs with it (see `dispatch::identity`).
//!
//! The hash is XXH3-128: the content key is for pairing copies, not for security (every event comes
//! from an authenticated Fondo stream or a signed webhook), and it costs a small fraction of SHA-256
//! on the per-event path.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use xxhash_rust::xxh3::{Xxh3Default, xxh3_128};

/// Canonical JSON: object keys sorted, no whitespace. (`serde_json::Map` is a `BTreeMap` here: the
/// crate is built without `preserve_order`, which a test guards.)
pub fn canonical_json(v: &Value) -> Vec<u8> {
    // Serialising a Value cannot fail: every key is a string.
    serde_json::to_vec(v).unwrap_or_default()
}

/// `xxh3_128(event_type "\n" canonical body)`. `body` is a `Value` or a [`super::Node`]: both
/// serialise to the same canonical bytes.
pub fn content_key<T: serde::Serialize + ?Sized>(event_type: &str, body: &T) -> u128 {
    let mut h = Xxh3Default::new();
    h.update(event_type.as_bytes());
    h.update(b"\n");
    // The canonical form streamed straight into the hash: the same bytes as `canonical_json`,
    // without building them in memory.
    let _ = serde_json::to_writer(HashWriter(&mut h), body);
    h.digest128()
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

/// [`content_key`] of a [`super::Node`], through its direct canonical writer: the same key,
/// computed without a serializer per string (checked against the `Value` path in tests and in the
/// `parse_event` fuzz target).
pub fn node_content_key(event_type: &str, body: &super::Node<'_>, size_hint: usize) -> u128 {
    let mut buf = Vec::with_capacity(event_type.len() + 1 + size_hint);
    buf.extend_from_slice(event_type.as_bytes());
    buf.push(b'\n');
    body.write_canonical(&mut buf);
    xxh3_128(&buf)
}

/// `xxh3_128(event_type "\n" body bytes)`: the content key of [`super::ContentKey::Bytes`].
pub fn bytes_content_key(event_type: &str, raw: &[u8]) -> u128 {
    let mut h = Xxh3Default::new();
    h.update(event_type.as_bytes());
    h.update(b"\n");
    h.update(raw);
    h.digest128()
}

/// A new occurrence id: 32 hex digits, unique across processes and restarts. The first half is
/// drawn once per process (from the clock, the process id and a random seed), the second counts
/// the ids this process minted, so minting is one atomic increment and one format.
pub fn mint_occurrence_id() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed =
            (u128::from(fastrand::u64(..)) << 64) ^ nanos ^ (u128::from(std::process::id()) << 32);
        // Folded through the hash so that close clocks and pids give unrelated prefixes.
        let h = xxh3_128(&seed.to_le_bytes());
        (h >> 64) as u64 ^ h as u64
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix:016x}{n:016x}")
}

/// The id under which one occurrence is published to one destination (AMQP `message_id`,
/// `Nats-Msg-Id`): unique per occurrence *and* destination, so one event fanned out to two
/// subjects of one JetStream stream is stored twice, and only a replay of the same occurrence to
/// the same destination is collapsed by the broker.
pub fn message_id(occurrence_id: &str, route: &str, topic: &str) -> String {
    let mut h = Xxh3Default::new();
    for part in [occurrence_id, route, topic] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    format!("{:032x}", h.digest128())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_never_repeat() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| mint_occurrence_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|i| i.len() == 32));
    }

    #[test]
    fn message_ids_differ_per_destination_and_occurrence() {
        let a = message_id("occ-1", "orders", "fondo.order");
        assert_eq!(a, message_id("occ-1", "orders", "fondo.order"));
        assert_ne!(a, message_id("occ-1", "audit", "fondo.order"));
        assert_ne!(a, message_id("occ-1", "orders", "fondo.audit"));
        assert_ne!(a, message_id("occ-2", "orders", "fondo.order"));
        // Length prefixes keep the parts apart: ("ab","c") is not ("a","bc").
        assert_ne!(message_id("x", "ab", "c"), message_id("x", "a", "bc"));
    }
}
