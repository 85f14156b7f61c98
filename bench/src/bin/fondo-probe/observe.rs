//! What the probe keeps of each message: when it arrived, its latency from `benchSentNs`, and
//! (with `--order`) whether it came after the previous event of its object.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use fondo_bridge::simulator::generator::{event_seq, object_key};

/// The field `fondo-bridge simulate stream --stamp` writes (the simulator's `STAMP_FIELD`).
const STAMP_FIELD: &str = "benchSentNs";

/// Latencies are recorded in nanoseconds, up to an hour, to 3 significant digits (0.1 %).
const MAX_NS: u64 = 3_600_000_000_000;

pub struct Observer {
    seen: u64,
    first_ns: Option<u128>,
    last_ns: u128,
    latency: Histogram<u64>,
    unstamped: u64,
    order: Option<HashMap<String, u64>>,
    out_of_order: u64,
    needle: Vec<u8>,
}

/// Now in Unix nanoseconds.
pub fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl Observer {
    pub fn new(order: bool) -> anyhow::Result<Self> {
        Ok(Self {
            seen: 0,
            first_ns: None,
            last_ns: 0,
            latency: Histogram::new_with_bounds(1, MAX_NS, 3)?,
            unstamped: 0,
            order: order.then(HashMap::new),
            out_of_order: 0,
            needle: format!("\"{STAMP_FIELD}\":").into_bytes(),
        })
    }

    /// Messages seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// One message arrived now with this body.
    pub fn message(&mut self, body: &[u8]) {
        let now = unix_ns();
        self.seen_at(now);
        match stamp(body, &self.needle) {
            Some(sent) if now >= u128::from(sent) => {
                let ns = u64::try_from(now - u128::from(sent)).unwrap_or(MAX_NS);
                self.latency.saturating_record(ns.max(1));
            }
            _ => self.unstamped += 1,
        }
        if let Some(last) = self.order.as_mut() {
            let Ok(v) = serde_json::from_slice::<Value>(body) else {
                return;
            };
            if let (Some(key), Some(seq)) = (object_key(&v), event_seq(&v)) {
                let prev = last.insert(key, seq);
                if prev.is_some_and(|p| p >= seq) {
                    self.out_of_order += 1;
                }
            }
        }
    }

    /// `n` messages became visible at `at` (Unix nanoseconds; counted, not read).
    pub fn counted(&mut self, n: u64, at: u128) {
        if n > 0 {
            self.seen_at(at);
            self.seen += n - 1;
        }
    }

    fn seen_at(&mut self, now: u128) {
        self.seen += 1;
        self.first_ns.get_or_insert(now);
        self.last_ns = now;
    }

    /// The JSON line.
    pub fn report(&self, broker: &str, expect: u64, on_broker: u64) -> Value {
        let first = self.first_ns.unwrap_or(0);
        let span_s = (self.last_ns.saturating_sub(first)) as f64 / 1e9;
        let q = |p: f64| {
            (!self.latency.is_empty()).then(|| self.latency.value_at_quantile(p) as f64 / 1e6)
        };
        json!({
            "broker": broker,
            "expected": expect,
            "on_broker": on_broker,
            "seen": self.seen,
            "ok": on_broker == expect,
            "first_ns": first.to_string(),
            "last_ns": self.last_ns.to_string(),
            "span_s": span_s,
            "events_per_s": if span_s > 0.0 { Some(on_broker as f64 / span_s) } else { None },
            "latency_n": self.latency.len(),
            "latency_p50_ms": q(0.5),
            "latency_p99_ms": q(0.99),
            "latency_max_ms": (!self.latency.is_empty()).then(|| self.latency.max() as f64 / 1e6),
            "unstamped": self.unstamped,
            "out_of_order": self.order.as_ref().map(|_| self.out_of_order),
        })
    }
}

/// Feeds `messages` to `obs` until `limits.expect` were seen (then a short while longer, to catch
/// duplicates), nothing came for `limits.idle` after the first, or `limits.timeout` passed.
pub async fn follow<S, B>(mut messages: S, obs: &mut Observer, limits: crate::Limits)
where
    S: futures::Stream<Item = B> + Unpin,
    B: AsRef<[u8]>,
{
    use futures::StreamExt as _;
    use tokio::time::{Duration, Instant, sleep_until};
    let deadline = Instant::now() + limits.timeout;
    let mut settle: Option<Instant> = None;
    loop {
        let idle_end = if obs.seen() == 0 {
            deadline
        } else {
            Instant::now() + limits.idle
        };
        let until = settle.unwrap_or(idle_end).min(deadline);
        tokio::select! {
            m = messages.next() => match m {
                Some(m) => obs.message(m.as_ref()),
                None => break,
            },
            () = sleep_until(until) => break,
        }
        if settle.is_none() && obs.seen() >= limits.expect {
            settle = Some(Instant::now() + Duration::from_millis(500));
        }
    }
}

/// The integer after the first `"benchSentNs":` in `body`.
fn stamp(body: &[u8], needle: &[u8]) -> Option<u64> {
    let at = body.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let digits = &body[at..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stamps_are_found_anywhere_and_orders_checked() {
        let n = b"\"benchSentNs\":";
        assert_eq!(stamp(br#"{"benchSentNs":123,"a":1}"#, n), Some(123));
        assert_eq!(stamp(br#"{"data":{"benchSentNs":7}}"#, n), Some(7));
        assert_eq!(stamp(br#"{"a":1}"#, n), None);
        let mut o = Observer::new(true).unwrap();
        let ev = |seq: u64| {
            format!(r#"{{"eventType":"order.update","current":{{"id":"o1","seq":{seq}}}}}"#)
        };
        o.message(ev(1).as_bytes());
        o.message(ev(3).as_bytes());
        o.message(ev(2).as_bytes());
        let r = o.report("nats", 3, 3);
        assert_eq!(r["out_of_order"], 1);
        assert_eq!(r["unstamped"], 3);
        assert_eq!(r["ok"], true);
    }
}
