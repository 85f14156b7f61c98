//! Where the identity tables live, behind one type. [`IdentityStore`] keeps them in this process
//! ([`Identities`]) until a shared store is attached ([`RedisStore`], `dedupe.store: redis`), and
//! from then on every lookup and done mark goes there. The dispatcher asks it which occurrence a
//! copy is and tells it when an occurrence is done; it never asks which store answers.
//!
//! A struct over both rather than a trait object: the two stores are known when the crate is
//! built, and a lookup in memory stays a plain call, with no boxed future per event.

use std::sync::Arc;
use std::time::Instant;

use super::identity::{Copy, Identities, IdentityConfig, Resolved};
#[cfg(feature = "redis")]
use super::redis_store::RedisStore;
use crate::metrics::Metrics;

/// What the store decided for one copy.
#[derive(Debug)]
pub struct Lookup {
    pub resolved: Resolved,
    /// Another replica owns the occurrence.
    pub owner_elsewhere: bool,
    /// The delivery's owner has already finished it.
    pub done: bool,
    /// The replica that owns the occurrence (empty in memory: always this process).
    pub owner: String,
}

/// A done mark to write.
#[derive(Debug)]
pub struct Mark {
    pub occurrence: Arc<str>,
    pub content_key: u128,
    pub delivery: Option<Arc<str>>,
    /// The occurrence's owner, when another replica: a delivery entry keeps naming it.
    pub owner: Option<String>,
}

/// The identity tables of this dispatcher.
pub struct IdentityStore {
    memory: Identities,
    #[cfg(feature = "redis")]
    shared: std::sync::OnceLock<Arc<RedisStore>>,
}

impl IdentityStore {
    pub fn new(cfg: IdentityConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            memory: Identities::new(cfg, metrics),
            #[cfg(feature = "redis")]
            shared: std::sync::OnceLock::new(),
        }
    }

    /// Keeps the tables in `store` from now on (once, before any copy is looked up).
    #[cfg(feature = "redis")]
    pub fn share(&self, store: Arc<RedisStore>) {
        let _ = self.shared.set(store);
    }

    pub fn config(&self) -> &IdentityConfig {
        self.memory.config()
    }

    /// Whether the tables are shared with other replicas (done marks are then written).
    pub fn is_shared(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.shared.get().is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    /// Which occurrence `copy` is. `None` when the shared store failed or was slow: the copy is
    /// then a new occurrence (a possible duplicate, counted by the store).
    pub async fn resolve(&self, copy: Copy<'_>) -> Option<Lookup> {
        #[cfg(feature = "redis")]
        if let Some(store) = self.shared.get() {
            return store.resolve(copy).await;
        }
        let resolved = self.memory.resolve(copy, Instant::now());
        Some(Lookup {
            resolved,
            owner_elsewhere: false,
            done: false,
            owner: String::new(),
        })
    }

    /// Waits (at most `dedupe.redis.owner_wait_ms`) for the replica that owns `occurrence` to
    /// finish it; `true` when it did. In memory every occurrence is this process's own.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub async fn await_owner(&self, occurrence: &str, delivery: Option<&str>) -> bool {
        #[cfg(feature = "redis")]
        if let Some(store) = self.shared.get() {
            return store.await_owner(occurrence, delivery).await;
        }
        false
    }

    /// Tells the other replicas that an occurrence is done (nothing to tell in memory).
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub fn mark_done(&self, mark: Mark) {
        #[cfg(feature = "redis")]
        if let Some(store) = self.shared.get() {
            store.mark_done(mark);
        }
    }

    /// The shared store's state, when one is used: `Err` says since when it fails.
    pub fn health(&self) -> Option<Result<(), String>> {
        #[cfg(feature = "redis")]
        if let Some(store) = self.shared.get() {
            return Some(store.health());
        }
        None
    }

    /// The in-memory tables: what a snapshot saves and restores, and the unpaired count.
    pub fn memory(&self) -> &Identities {
        &self.memory
    }
}
