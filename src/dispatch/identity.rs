//! Which occurrence a copy of an event belongs to (see `event::id` for the two notions of identity).
//!
//! Three rules, applied by [`Identities::resolve`] before an event is spooled or submitted:
//!
//! - **WebSocket**: the stream has no retries, so a WebSocket copy is never a repeat of an earlier
//!   WebSocket copy; it is a new occurrence under the id minted at parse.
//! - **Webhook retries**: a delivery id (Standard Webhooks `webhook-id`) seen within the replay
//!   cache's time to live, with the same content, is the same delivery again and takes the
//!   occurrence id of its first copy. The same id with other content is not a retry (a retry
//!   resends its body; the id was reused, or a saved cache came from elsewhere): it is published
//!   and counted as `identity_forgotten{table="reused_delivery_id"}`, never dropped.
//! - **Both sources at once**: a copy from one source *pairs* with the oldest unpaired occurrence of
//!   the same content key from the other source seen within `pair_window`, and adopts its id;
//!   otherwise it is a new occurrence and waits, unpaired, for its twin. Per content key the
//!   number of occurrences is then max(copies on the stream, deliveries by webhook): a change seen
//!   on both is published once, and no change either source saw is lost. A pairing that was
//!   forgotten (window over, capacity reached, process restarted) can only make the twin a new
//!   occurrence, a duplicate; it never makes a copy disappear.
//!
//! A replayed spool record keeps its id and never pairs: its twin may have been delivered before
//! the crash, and pairing a later change with the same body to it would drop that change.
//!
//! Everything here is memory, bounded by `capacity` per table with the oldest entry forgotten first
//! (counted in `fondo_bridge_identity_forgotten_total{table}`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::event::SourceKind;
use crate::metrics::Metrics;

/// How identities are kept.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Both sources are configured: copies pair across them.
    pub pair_sources: bool,
    /// How long an unpaired occurrence waits for its twin from the other source.
    pub pair_window: Duration,
    /// How long a webhook delivery id is remembered (signature tolerance plus the retry horizon).
    pub replay_ttl: Duration,
    /// The most entries each table holds.
    pub capacity: usize,
}

impl IdentityConfig {
    /// From the `dedupe` section, the webhook's signature tolerance and which sources are on.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let tolerance_s = match cfg.sources.webhook.as_ref().map(|w| &w.signature) {
            Some(crate::config::SignatureConfig::StandardWebhooks { tolerance_s, .. })
            | Some(crate::config::SignatureConfig::Hmac { tolerance_s, .. }) => *tolerance_s,
            _ => 0,
        };
        Self {
            pair_sources: cfg.sources.websocket.is_some() && cfg.sources.webhook.is_some(),
            pair_window: Duration::from_millis(cfg.dedupe.pair_window_ms.max(1)),
            replay_ttl: Duration::from_secs(
                tolerance_s
                    .saturating_add(cfg.dedupe.retry_horizon_s)
                    .max(1),
            ),
            capacity: usize::try_from(cfg.dedupe.capacity).unwrap_or(usize::MAX),
        }
    }
}

impl Default for IdentityConfig {
    /// One source (no pairing), a day of webhook retries, a million entries per table.
    fn default() -> Self {
        Self {
            pair_sources: false,
            pair_window: Duration::from_secs(600),
            replay_ttl: Duration::from_secs(24 * 3600 + 300),
            capacity: 1_000_000,
        }
    }
}

/// How a copy was identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// A new occurrence: it keeps the id it came with.
    New,
    /// A webhook delivery seen before: the occurrence id of its first copy.
    Retry,
    /// The twin of an occurrence the other source brought: that occurrence's id.
    Paired,
}

/// The outcome of [`Identities::resolve`].
#[derive(Debug, Clone)]
pub struct Resolved {
    pub id: Arc<str>,
    pub how: Resolution,
    /// A new occurrence from a webhook while the stream recently carried other changes of the same
    /// object but not this one: it was most likely lost on the stream and is published after
    /// changes that came later.
    pub late: bool,
}

impl Resolved {
    fn new_occurrence(id: &Arc<str>, late: bool) -> Self {
        Self {
            id: Arc::clone(id),
            how: Resolution::New,
            late,
        }
    }
}

/// A remembered webhook delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: Arc<str>,
    pub occurrence: Arc<str>,
    pub content_key: u128,
    /// When its first copy arrived.
    pub seen: Instant,
}

/// What is known of one copy.
#[derive(Debug, Clone, Copy)]
pub struct Copy<'a> {
    pub source: SourceKind,
    pub content_key: u128,
    /// The object's ref (the default ordering key), for spotting late changes.
    pub object: Option<&'a str>,
    /// The webhook delivery id, when the signature covers one.
    pub delivery_id: Option<&'a str>,
    /// The id the copy came with (minted at parse, or read from the body).
    pub id: &'a Arc<str>,
}

/// The identity tables of one bridge process.
pub struct Identities {
    cfg: IdentityConfig,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct State {
    seq: u64,
    /// Delivery id → (occurrence id, content key of the delivery's body).
    replay: Fifo<Arc<str>, (Arc<str>, u128)>,
    /// Unpaired occurrences per content key, oldest first, one queue per source side.
    unpaired: HashMap<u128, [VecDeque<Waiting>; 2], foldhash::fast::RandomState>,
    /// Every unpaired entry in arrival order (entries paired since are skipped when met).
    unpaired_order: VecDeque<(u64, Instant, u128, usize)>,
    unpaired_len: usize,
    /// Objects the stream carried lately.
    stream_seen: Fifo<Arc<str>, ()>,
}

struct Waiting {
    seq: u64,
    id: Arc<str>,
}

impl State {
    /// The oldest unpaired occurrence of `key` on side `side`, taken out of the table.
    fn take_twin(&mut self, key: u128, side: usize) -> Option<Waiting> {
        let twin = self.unpaired.get_mut(&key)?[side].pop_front()?;
        self.unpaired_len -= 1;
        if self
            .unpaired
            .get(&key)
            .is_some_and(|s| s[0].is_empty() && s[1].is_empty())
        {
            self.unpaired.remove(&key);
        }
        Some(twin)
    }

    /// Records a new occurrence `id` of `key` on side `side` as waiting for its twin.
    fn wait_for_twin(&mut self, key: u128, side: usize, seq: u64, id: Arc<str>, now: Instant) {
        self.unpaired.entry(key).or_default()[side].push_back(Waiting { seq, id });
        self.unpaired_order.push_back((seq, now, key, side));
        self.unpaired_len += 1;
    }
}

/// A map whose entries all live the same time, forgotten oldest first: a queue in insertion order
/// is the whole expiry policy. A key inserted again is refreshed.
struct Fifo<K, V> {
    map: HashMap<K, (u64, Instant, V), foldhash::fast::RandomState>,
    order: VecDeque<(u64, K)>,
}

impl<K, V> Default for Fifo<K, V> {
    fn default() -> Self {
        Self {
            map: HashMap::default(),
            order: VecDeque::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone, V> Fifo<K, V> {
    fn get(&self, k: &K, now: Instant, ttl: Duration) -> Option<&V> {
        self.map
            .get(k)
            .filter(|(_, at, _)| now.saturating_duration_since(*at) < ttl)
            .map(|(_, _, v)| v)
    }

    fn insert(&mut self, seq: u64, k: K, v: V, now: Instant) {
        self.order.push_back((seq, k.clone()));
        self.map.insert(k, (seq, now, v));
    }

    /// Forgets entries older than `ttl`, then the oldest beyond `capacity`; returns how many were
    /// forgotten for capacity.
    fn expire(&mut self, now: Instant, ttl: Duration, capacity: usize) -> u64 {
        let mut evicted = 0;
        while let Some((seq, k)) = self.order.front() {
            let live = self.map.get(k).filter(|(s, _, _)| s == seq);
            let Some((_, at, _)) = live else {
                // Refreshed since: a stale queue entry.
                self.order.pop_front();
                continue;
            };
            let old = now.saturating_duration_since(*at) >= ttl;
            if !old && self.map.len() <= capacity {
                break;
            }
            if !old {
                evicted += 1;
            }
            if let Some((_, k)) = self.order.pop_front() {
                self.map.remove(&k);
            }
        }
        evicted
    }
}

fn side(source: SourceKind) -> Option<usize> {
    match source {
        SourceKind::WebSocket => Some(0),
        SourceKind::Webhook => Some(1),
        SourceKind::Replay => None,
    }
}

impl Identities {
    pub fn new(cfg: IdentityConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            cfg,
            state: Mutex::new(State::default()),
            metrics,
        }
    }

    pub fn config(&self) -> &IdentityConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a sequence of single map or queue steps: a poisoned table is consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Identifies one copy at `now`. Never fails: anything unknown is a new occurrence.
    pub fn resolve(&self, copy: Copy<'_>, now: Instant) -> Resolved {
        let Some(me) = side(copy.source) else {
            return Resolved::new_occurrence(copy.id, false);
        };
        let mut st = self.lock();
        st.seq += 1;
        let seq = st.seq;
        self.expire(&mut st, now);
        if let Some(id) = self.retried(&st, copy, now) {
            drop(st);
            self.metrics.identity_retries.inc();
            return Resolved {
                id,
                how: Resolution::Retry,
                late: false,
            };
        }
        let out = if self.cfg.pair_sources {
            self.pair(&mut st, copy, me, seq, now)
        } else {
            Resolved::new_occurrence(copy.id, false)
        };
        if let Some(d) = copy.delivery_id {
            st.replay.insert(
                seq,
                Arc::from(d),
                (Arc::clone(&out.id), copy.content_key),
                now,
            );
        }
        self.expire(&mut st, now);
        drop(st);
        if out.how == Resolution::Paired {
            self.metrics.identity_paired_from(copy.source).inc();
        }
        if out.late {
            self.metrics.late.inc();
        }
        out
    }

    /// The occurrence id of the first copy when `copy` is a webhook retry: its delivery id was
    /// seen, with the same content. The same id with other content is counted and logged, and is
    /// not a retry.
    fn retried(&self, st: &State, copy: Copy<'_>, now: Instant) -> Option<Arc<str>> {
        let d = copy.delivery_id?;
        match st.replay.get(&Arc::from(d), now, self.cfg.replay_ttl) {
            Some((id, key)) if *key == copy.content_key => Some(Arc::clone(id)),
            Some(_) => {
                self.metrics
                    .identity_forgotten_in("reused_delivery_id")
                    .inc();
                tracing::warn!(
                    delivery_id = d,
                    "a webhook delivery id came again with another body: published as a new change"
                );
                None
            }
            None => None,
        }
    }

    /// Both sources on: the copy pairs with the oldest unpaired occurrence of its content from
    /// the other side, or is a new occurrence that waits, unpaired, for its twin. The stream's
    /// copies also record their object, for spotting late webhook changes.
    fn pair(&self, st: &mut State, copy: Copy<'_>, me: usize, seq: u64, now: Instant) -> Resolved {
        let out = match st.take_twin(copy.content_key, 1 - me) {
            Some(twin) => Resolved {
                id: twin.id,
                how: Resolution::Paired,
                late: false,
            },
            None => {
                let late = copy.source == SourceKind::Webhook
                    && copy.object.is_some_and(|o| {
                        st.stream_seen
                            .get(&Arc::from(o), now, self.cfg.pair_window)
                            .is_some()
                    });
                st.wait_for_twin(copy.content_key, me, seq, Arc::clone(copy.id), now);
                Resolved::new_occurrence(copy.id, late)
            }
        };
        if copy.source == SourceKind::WebSocket
            && let Some(o) = copy.object
        {
            st.stream_seen.insert(seq, Arc::from(o), (), now);
        }
        out
    }

    fn expire(&self, st: &mut State, now: Instant) {
        let cfg = &self.cfg;
        let replay = st.replay.expire(now, cfg.replay_ttl, cfg.capacity);
        st.stream_seen.expire(now, cfg.pair_window, cfg.capacity);
        let mut pairing = 0;
        // The order queue holds at most twice the capacity (paired entries wait in it as stale).
        while let Some(&(seq, at, key, s)) = st.unpaired_order.front() {
            let old = now.saturating_duration_since(at) >= cfg.pair_window;
            let full = st.unpaired_len > cfg.capacity
                || st.unpaired_order.len() > cfg.capacity.saturating_mul(2).max(1);
            let front_is_this = st
                .unpaired
                .get(&key)
                .and_then(|sides| sides[s].front())
                .is_some_and(|w| w.seq == seq);
            if front_is_this && !old && !full {
                break;
            }
            st.unpaired_order.pop_front();
            if !front_is_this {
                continue;
            }
            if let Some(sides) = st.unpaired.get_mut(&key) {
                sides[s].pop_front();
                if sides[0].is_empty() && sides[1].is_empty() {
                    st.unpaired.remove(&key);
                }
            }
            st.unpaired_len -= 1;
            if !old {
                pairing += 1;
            }
        }
        if replay > 0 {
            self.metrics.identity_forgotten_in("replay").inc_by(replay);
        }
        if pairing > 0 {
            self.metrics
                .identity_forgotten_in("pairing")
                .inc_by(pairing);
        }
    }

    /// The webhook deliveries remembered now, oldest first.
    pub fn deliveries(&self, now: Instant) -> Vec<Delivery> {
        let st = self.lock();
        let mut out: Vec<_> = st
            .replay
            .map
            .iter()
            .filter(|(_, (_, at, _))| now.saturating_duration_since(*at) < self.cfg.replay_ttl)
            .map(|(d, (_, at, (occ, key)))| Delivery {
                id: Arc::clone(d),
                occurrence: Arc::clone(occ),
                content_key: *key,
                seen: *at,
            })
            .collect();
        out.sort_by_key(|d| d.seen);
        out
    }

    /// Remembers a delivery (restored from a snapshot, oldest first).
    pub fn restore_delivery(&self, d: Delivery) {
        let Delivery {
            id: delivery,
            occurrence,
            content_key,
            seen: at,
        } = d;
        let now = Instant::now();
        if now.saturating_duration_since(at) >= self.cfg.replay_ttl {
            return;
        }
        let mut st = self.lock();
        st.seq += 1;
        let seq = st.seq;
        st.replay
            .insert(seq, delivery, (occurrence, content_key), at);
        self.expire(&mut st, now);
    }

    /// Unpaired occurrences waiting for their twin now.
    pub fn unpaired(&self) -> usize {
        self.lock().unpaired_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(pair: bool, capacity: usize) -> Identities {
        Identities::new(
            IdentityConfig {
                pair_sources: pair,
                pair_window: Duration::from_secs(60),
                replay_ttl: Duration::from_secs(600),
                capacity,
            },
            Arc::new(Metrics::new()),
        )
    }

    struct Feed<'a> {
        ids: &'a Identities,
        now: Instant,
        n: u64,
    }

    impl Feed<'_> {
        /// One copy: `key` is the content, `delivery` the webhook id (webhook when given).
        fn copy(&mut self, source: SourceKind, key: u128, delivery: Option<&str>) -> Resolved {
            self.n += 1;
            let own: Arc<str> = Arc::from(format!("minted-{}", self.n));
            self.ids.resolve(
                Copy {
                    source,
                    content_key: key,
                    object: Some("obj"),
                    delivery_id: delivery,
                    id: &own,
                },
                self.now,
            )
        }
    }

    const WS: SourceKind = SourceKind::WebSocket;
    const WH: SourceKind = SourceKind::Webhook;

    #[test]
    fn a_repeated_body_on_the_stream_is_always_a_new_occurrence() {
        for pair in [false, true] {
            let ids = ids(pair, 100);
            let mut f = Feed {
                ids: &ids,
                now: Instant::now(),
                n: 0,
            };
            let got: Vec<_> = [1, 2, 1, 2]
                .into_iter()
                .map(|k| f.copy(WS, k, None))
                .collect();
            assert!(got.iter().all(|r| r.how == Resolution::New));
            let distinct: std::collections::HashSet<_> = got.iter().map(|r| &r.id).collect();
            assert_eq!(distinct.len(), 4, "pair={pair}");
        }
    }

    #[test]
    fn webhook_retries_share_the_first_copys_id_and_new_deliveries_do_not() {
        let ids = ids(false, 100);
        let mut f = Feed {
            ids: &ids,
            now: Instant::now(),
            n: 0,
        };
        let first = f.copy(WH, 7, Some("msg_1"));
        assert_eq!(first.how, Resolution::New);
        for _ in 0..3 {
            let again = f.copy(WH, 7, Some("msg_1"));
            assert_eq!(again.how, Resolution::Retry);
            assert_eq!(again.id, first.id);
        }
        // The same delivery id with another body is not a retry.
        let reused = f.copy(WH, 8, Some("msg_1"));
        assert_eq!(reused.how, Resolution::New);
        assert_ne!(reused.id, first.id);
        let other = f.copy(WH, 7, Some("msg_2"));
        assert_eq!(other.how, Resolution::New);
        assert_ne!(other.id, first.id);
        // Beyond the time to live the delivery id is forgotten: a duplicate at worst.
        f.now += Duration::from_secs(601);
        assert_eq!(f.copy(WH, 7, Some("msg_1")).how, Resolution::New);
    }

    #[test]
    fn flip_flop_on_both_sources_pairs_one_to_one_in_order() {
        let ids = ids(true, 100);
        let mut f = Feed {
            ids: &ids,
            now: Instant::now(),
            n: 0,
        };
        // A B A B on the stream, then the same four by webhook.
        let ws: Vec<_> = [1, 2, 1, 2].map(|k| f.copy(WS, k, None)).to_vec();
        let wh: Vec<_> = [(1, "d1"), (2, "d2"), (1, "d3"), (2, "d4")]
            .map(|(k, d)| f.copy(WH, k, Some(d)))
            .to_vec();
        for (w, h) in ws.iter().zip(&wh) {
            assert_eq!(h.how, Resolution::Paired);
            assert_eq!(
                h.id, w.id,
                "each webhook takes its own stream twin, oldest first"
            );
        }
        assert_eq!(ids.unpaired(), 0);
    }

    #[test]
    fn a_change_lost_on_the_stream_stays_a_new_occurrence_and_is_marked_late() {
        let ids = ids(true, 100);
        let mut f = Feed {
            ids: &ids,
            now: Instant::now(),
            n: 0,
        };
        // Stream: A, (B lost), C. Webhooks: A, B, C.
        let a = f.copy(WS, 1, None);
        let c = f.copy(WS, 3, None);
        let a2 = f.copy(WH, 1, Some("d1"));
        let b2 = f.copy(WH, 2, Some("d2"));
        let c2 = f.copy(WH, 3, Some("d3"));
        assert_eq!((a2.how, &a2.id), (Resolution::Paired, &a.id));
        assert_eq!(b2.how, Resolution::New);
        assert!(b2.late, "the stream carried a later change of the object");
        assert_eq!((c2.how, &c2.id), (Resolution::Paired, &c.id));
        let ids_out: std::collections::HashSet<_> = [&a.id, &b2.id, &c.id].into_iter().collect();
        assert_eq!(ids_out.len(), 3, "three changes, three occurrences");
    }

    #[test]
    fn a_webhook_ahead_of_the_stream_is_paired_by_the_stream_copy() {
        let ids = ids(true, 100);
        let mut f = Feed {
            ids: &ids,
            now: Instant::now(),
            n: 0,
        };
        let h = f.copy(WH, 5, Some("d"));
        let w = f.copy(WS, 5, None);
        assert_eq!((w.how, &w.id), (Resolution::Paired, &h.id));
        // A retry of that delivery still maps to the same occurrence.
        assert_eq!(f.copy(WH, 5, Some("d")).id, h.id);
    }

    #[test]
    fn unpaired_occurrences_are_forgotten_after_the_window_or_beyond_capacity() {
        let ids = ids(true, 3);
        let mut f = Feed {
            ids: &ids,
            now: Instant::now(),
            n: 0,
        };
        for k in 0..5 {
            f.copy(WS, k, None);
        }
        assert_eq!(ids.unpaired(), 3);
        assert_eq!(ids.metrics.identity_forgotten_in("pairing").get(), 2);
        // The two oldest are forgotten: their webhook copies are new occurrences (duplicates).
        assert_eq!(f.copy(WH, 1, Some("x1")).how, Resolution::New);
        assert_eq!(f.copy(WH, 4, Some("x4")).how, Resolution::Paired);
        // After the window nothing waits any more, and running out of time is not "forgotten".
        f.now += Duration::from_secs(61);
        let before = ids.metrics.identity_forgotten_in("pairing").get();
        assert_eq!(f.copy(WH, 3, Some("x3")).how, Resolution::New);
        assert_eq!(ids.metrics.identity_forgotten_in("pairing").get(), before);
        assert_eq!(ids.unpaired(), 1, "only the last webhook copy waits");
    }

    #[test]
    fn without_pairing_nothing_is_remembered_per_content() {
        let ids = ids(false, 100);
        let mut f = Feed {
            ids: &ids,
            now: Instant::now(),
            n: 0,
        };
        let a = f.copy(WH, 1, Some("d1"));
        let b = f.copy(WH, 1, Some("d2"));
        let c = f.copy(WH, 1, None);
        let d = f.copy(WH, 1, None);
        let all: std::collections::HashSet<_> = [a.id, b.id, c.id, d.id].into_iter().collect();
        assert_eq!(all.len(), 4);
        assert_eq!(ids.unpaired(), 0);
    }
}
