//! The dispatcher's memory of event ids: which are in flight now (with the copies that arrived
//! meanwhile and wait for the first's outcome) and which were delivered lately.
//!
//! One map under one lock answers both questions, so admitting an event takes one lock and one
//! hash lookup, and settling it one more. Delivered ids are remembered in delivery order: every
//! entry lives the same `ttl`, so the oldest delivery is always the next to expire, and when more
//! than `capacity` are remembered the oldest is forgotten first. A queue in delivery order is
//! therefore the whole eviction policy; nothing is refreshed on lookup (as with a time-to-live
//! cache, an id is forgotten `ttl` after its delivery however often it is seen again).
//!
//! A general concurrent cache (a lock-free table, access and write queues, epoch-based
//! reclamation, housekeeping) would cost several percent of the bridge's CPU per event for a
//! policy that is a FIFO here.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What is known of one id.
enum Slot<P> {
    /// Being delivered; the copies that arrived since wait here for its outcome.
    InFlight(Vec<P>),
    /// Delivered at this instant (the key of its entry in the expiry queue).
    Delivered(Instant),
}

/// What to do with an event whose id was looked up.
pub(super) enum Admission<P> {
    /// The id is new (or forgotten): publish the event; its outcome settles the id.
    Publish(P),
    /// The id was delivered within the time to live: acknowledge the event as a duplicate.
    Duplicate(P),
    /// The same id is in flight: the event was parked behind it.
    Parked,
}

pub(super) struct Ids<P> {
    map: HashMap<Arc<str>, Slot<P>, foldhash::fast::RandomState>,
    /// Delivered ids, oldest delivery first. An entry whose slot no longer says `Delivered` at
    /// the same instant is stale (the id expired and was admitted again) and is skipped.
    expiry: VecDeque<(Instant, Arc<str>)>,
    ttl: Duration,
    capacity: usize,
}

impl<P> Ids<P> {
    /// Remembers up to `capacity` delivered ids, each for `ttl` after its delivery. A capacity of
    /// 0 remembers none (every redelivery is published again, as at-least-once allows).
    pub(super) fn new(ttl: Duration, capacity: u64) -> Self {
        Self {
            map: HashMap::default(),
            expiry: VecDeque::new(),
            ttl,
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
        }
    }

    /// Looks `id` up at `now` and records it as in flight when it is to be published.
    pub(super) fn admit(&mut self, id: &Arc<str>, p: P, now: Instant) -> Admission<P> {
        self.expire(now);
        match self.map.get_mut(id) {
            Some(Slot::InFlight(twins)) => {
                twins.push(p);
                Admission::Parked
            }
            Some(Slot::Delivered(at)) if now.saturating_duration_since(*at) < self.ttl => {
                Admission::Duplicate(p)
            }
            Some(slot) => {
                // Delivered longer ago than the time to live: forgotten; its queue entry is stale.
                *slot = Slot::InFlight(Vec::new());
                Admission::Publish(p)
            }
            None => {
                self.map.insert(Arc::clone(id), Slot::InFlight(Vec::new()));
                Admission::Publish(p)
            }
        }
    }

    /// Settles the id in flight: remembered as delivered at `now` when `delivered`, forgotten
    /// otherwise. Returns the copies that waited for this outcome.
    pub(super) fn settle(&mut self, id: &Arc<str>, delivered: bool, now: Instant) -> Vec<P> {
        // Only the admitted copy settles its id, and the id is in flight until it does.
        let twins = match self.map.remove(id) {
            Some(Slot::InFlight(twins)) => twins,
            _ => Vec::new(),
        };
        if delivered && self.capacity > 0 {
            self.map.insert(Arc::clone(id), Slot::Delivered(now));
            self.expiry.push_back((now, Arc::clone(id)));
        }
        self.expire(now);
        twins
    }

    /// Forgets deliveries older than the time to live, and the oldest beyond the capacity.
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.expiry.front() {
            let too_old = now.saturating_duration_since(*at) >= self.ttl;
            if !too_old && self.expiry.len() <= self.capacity {
                break;
            }
            if let Some((at, id)) = self.expiry.pop_front()
                && matches!(self.map.get(&id), Some(Slot::Delivered(t)) if *t == at)
            {
                self.map.remove(&id);
            }
        }
    }

    /// When `id` was delivered, if that is remembered.
    pub(super) fn delivered_at(&self, id: &str) -> Option<Instant> {
        match self.map.get(id) {
            Some(Slot::Delivered(at)) => Some(*at),
            _ => None,
        }
    }

    /// Remembers `id` as delivered at `at` (restored from a snapshot; `at` may lie in the past).
    /// Restores must come oldest first, as deliveries do.
    pub(super) fn restore_delivered(&mut self, id: Arc<str>, at: Instant) {
        if self.capacity == 0 || self.map.contains_key(&id) {
            return;
        }
        self.map.insert(Arc::clone(&id), Slot::Delivered(at));
        self.expiry.push_back((at, id));
        self.expire(Instant::now());
    }

    /// Delivered ids remembered now (stale queue entries included until they reach the front).
    #[cfg(test)]
    pub(super) fn remembered(&self) -> usize {
        self.expiry.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    fn is_publish<P>(a: &Admission<P>) -> bool {
        matches!(a, Admission::Publish(_))
    }

    /// Admits `name` (it must be published) and settles it as delivered at `at`.
    fn deliver(ids: &mut Ids<u32>, name: &str, at: Instant) {
        assert!(
            is_publish(&ids.admit(&id(name), 0, at)),
            "{name} must be published"
        );
        assert!(ids.settle(&id(name), true, at).is_empty());
    }

    #[test]
    fn a_delivered_id_is_a_duplicate_until_its_ttl_ends() {
        let t0 = Instant::now();
        let mut ids = Ids::new(Duration::from_secs(10), 100);
        deliver(&mut ids, "a", t0);
        let at = |s| t0 + Duration::from_secs(s);
        assert!(matches!(
            ids.admit(&id("a"), 2, at(9)),
            Admission::Duplicate(2)
        ));
        assert!(is_publish(&ids.admit(&id("a"), 3, at(10))));
        // Delivered again: remembered for another ttl from this delivery.
        ids.settle(&id("a"), true, at(10));
        assert!(matches!(
            ids.admit(&id("a"), 4, at(19)),
            Admission::Duplicate(4)
        ));
        assert!(is_publish(&ids.admit(&id("a"), 5, at(20))));
    }

    #[test]
    fn copies_of_an_id_in_flight_wait_and_come_back_with_its_outcome() {
        let now = Instant::now();
        let mut ids = Ids::new(Duration::from_secs(10), 100);
        assert!(is_publish(&ids.admit(&id("a"), 1, now)));
        assert!(matches!(ids.admit(&id("a"), 2, now), Admission::Parked));
        assert!(matches!(ids.admit(&id("a"), 3, now), Admission::Parked));
        assert!(is_publish(&ids.admit(&id("b"), 9, now)));
        // Failed: the copies come back and the id is forgotten, so the next copy publishes.
        assert_eq!(ids.settle(&id("a"), false, now), vec![2, 3]);
        assert!(is_publish(&ids.admit(&id("a"), 4, now)));
        assert!(matches!(ids.admit(&id("a"), 5, now), Admission::Parked));
        assert_eq!(ids.settle(&id("a"), true, now), vec![5]);
        assert!(matches!(
            ids.admit(&id("a"), 6, now),
            Admission::Duplicate(6)
        ));
        assert!(ids.settle(&id("b"), true, now).is_empty());
    }

    #[test]
    fn beyond_the_capacity_the_oldest_delivery_is_forgotten_first() {
        let t0 = Instant::now();
        let mut ids = Ids::new(Duration::from_secs(3600), 3);
        for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            deliver(&mut ids, name, t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(ids.remembered(), 3);
        let later = t0 + Duration::from_secs(1);
        for name in ["c", "d", "e"] {
            assert!(
                matches!(ids.admit(&id(name), 0, later), Admission::Duplicate(_)),
                "{name} is among the newest three and must be remembered"
            );
        }
        for name in ["a", "b"] {
            assert!(
                is_publish(&ids.admit(&id(name), 0, later)),
                "{name} is older than the newest three and must be forgotten"
            );
        }
    }

    #[test]
    fn a_capacity_of_zero_remembers_nothing() {
        let now = Instant::now();
        let mut ids = Ids::new(Duration::from_secs(60), 0);
        deliver(&mut ids, "a", now);
        deliver(&mut ids, "a", now);
        assert_eq!(ids.remembered(), 0);
    }

    #[test]
    fn a_delivery_after_the_ttl_outlives_the_first_deliverys_queue_entry() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut ids = Ids::new(ttl, 100);
        deliver(&mut ids, "a", t0);
        // Expired, so admitted and delivered again.
        let t1 = t0 + ttl;
        deliver(&mut ids, "a", t1);
        // The first entry is swept now; the second delivery must survive it.
        let t2 = t1 + Duration::from_secs(1);
        assert!(matches!(
            ids.admit(&id("a"), 0, t2),
            Admission::Duplicate(_)
        ));
    }
}
