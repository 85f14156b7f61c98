//! Identity state shared by every replica, on Redis (`dedupe.store: redis`).
//!
//! The rules are those of [`super::identity`]; only where they are kept changes. With several
//! replicas a change can reach one pod on the stream and another as a webhook, and a webhook
//! retry can land on a pod that never saw the first try, so the replay cache and the pairing
//! table must be one table for all of them.
//!
//! **One script per lookup.** [`RESOLVE`] runs the whole rule atomically inside Redis: read the
//! delivery id, pair with the oldest live entry of the other source or insert this copy as
//! unpaired, note the object for late detection, remember the delivery. A `SET NX` per key would
//! need several round trips and leave windows where two replicas both insert (two publishes) or
//! both pair with one entry; a Lua script is one round trip and no window. Time comes from Redis
//! (`TIME`), so replicas with skewed clocks agree on windows. Expiry is Redis's own (`PX`).
//!
//! **Owners.** Every entry names the process that accepted the occurrence (its *owner*, a random
//! id per process). A copy that resolves to an occurrence this process owns is left to the
//! dispatcher's in-flight table as before. A copy that resolves to an occurrence another replica
//! owns is that replica's to publish: this copy waits up to `owner_wait_ms` for the owner's
//! *done mark* and is then acknowledged without publishing ([`Identity::Covered`]); with no mark
//! by then (the owner is slow, gone, or could not deliver) it is published here, a possible
//! duplicate and never a loss. The owner writes the mark when it has delivered or dead-lettered
//! the occurrence: `{prefix}:o:{occurrence}` for pairing (lives `pair_window`), and the state
//! of the delivery's own entry for webhook retries (lives as long as the delivery).
//!
//! **Failure.** A lookup that fails or takes longer than `timeout_ms` publishes the event as a
//! new occurrence: a possible duplicate, counted in `fondo_bridge_dedupe_store_errors_total`.
//! After a failure the store is skipped for 200 ms (every event meanwhile is published and
//! counted), so a Redis that does not answer costs a timeout only five times a second.
//!
//! Keys (all under `{prefix}:`): `d:{delivery id}` the delivery's state, content key, owner and
//! occurrence; `u:{content key}:{ws|wh}` unpaired occurrences of one source, oldest first;
//! `s:{object}` the stream carried this object lately; `o:{occurrence}` its owner finished it.
//! Keys of one lookup hash to different slots, so Redis Cluster is not supported; a single
//! primary (with replicas for failover behind one address) is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue};

use super::redis_batch::{Batcher, Full, Outcomes};
pub use super::store::{Lookup, Mark};

use super::identity::{Copy, IdentityConfig, Resolution, Resolved};
use crate::config::RedisStoreConfig;
use crate::event::SourceKind;
use crate::metrics::Metrics;

/// Why the store cannot be set up. Only configuration errors: an unreachable Redis is not one
/// (the bridge starts and publishes without it).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("dedupe.redis.url: {0}")]
    Url(String),
}

/// Checks a Redis URL without connecting.
pub fn check_url(url: &str) -> Result<(), String> {
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| format!("not a usable Redis URL: {}", e.kind_name()))
}

trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for redis::RedisError {
    /// The error without its detail, which may quote the URL (and a password in it).
    fn kind_name(&self) -> String {
        format!("{:?}", self.kind())
    }
}

/// Pair-or-insert in one step. KEYS: 1 the delivery, 2 the other source's unpaired list, 3 this
/// source's unpaired list, 4 the object's stream-seen key. ARGV: 1 content key, 2 this copy's
/// occurrence id, 3 owner, 4 has a delivery id, 5 pair sources, 6 `ws`|`wh`, 7 has an object,
/// 8 pair window (ms), 9 replay time to live (ms), 10 most entries per unpaired list.
/// Returns {how, occurrence, owner, late, reused delivery id, delivery state}.
const RESOLVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local reused = 0
if ARGV[4] == '1' then
  local v = redis.call('GET', KEYS[1])
  if v then
    local state, ck, owner, occ = string.match(v, '^(%a)|([^|]*)|([^|]*)|(.*)$')
    if ck == ARGV[1] then
      return {'retry', occ, owner, 0, 0, state}
    end
    reused = 1
  end
end
local id, owner, how, late = ARGV[2], ARGV[3], 'new', 0
if ARGV[5] == '1' then
  local window = tonumber(ARGV[8])
  while true do
    local e = redis.call('LPOP', KEYS[2])
    if not e then break end
    local ts, own, occ = string.match(e, '^(%d+)|([^|]*)|(.*)$')
    if ts and now - tonumber(ts) < window then
      id, owner, how = occ, own, 'paired'
      break
    end
  end
  if how == 'new' then
    if ARGV[6] == 'wh' and ARGV[7] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then
      late = 1
    end
    while true do
      local head = redis.call('LINDEX', KEYS[3], 0)
      if not head then break end
      local ts = string.match(head, '^(%d+)|')
      if ts and now - tonumber(ts) < window then break end
      redis.call('LPOP', KEYS[3])
    end
    redis.call('RPUSH', KEYS[3], now .. '|' .. owner .. '|' .. id)
    redis.call('LTRIM', KEYS[3], -tonumber(ARGV[10]), -1)
    redis.call('PEXPIRE', KEYS[3], window)
  end
  if ARGV[6] == 'ws' and ARGV[7] == '1' then
    redis.call('SET', KEYS[4], '1', 'PX', window)
  end
end
if ARGV[4] == '1' then
  redis.call('SET', KEYS[1], 'p|' .. ARGV[1] .. '|' .. owner .. '|' .. id, 'PX', ARGV[9])
end
return {how, id, owner, late, reused, 'p'}
";

/// Whether an occurrence was finished by its owner. KEYS: 1 its mark, 2 the delivery (or the
/// mark again). Returns 1 when either says done.
const DONE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
local v = redis.call('GET', KEYS[2])
if v and string.sub(v, 1, 2) == 'd|' then return 1 end
return 0
";

/// The most entries kept per unpaired list (one content key, one source): a body repeated more
/// often than this within the pair window loses its oldest pairings (duplicates, not losses).
const MAX_UNPAIRED_PER_KEY: u32 = 10_000;
/// How long the store is skipped after a failure: long enough that a Redis that does not answer
/// costs a timeout only every so often, short enough that lookups resume soon after it is back.
const BACKOFF: Duration = Duration::from_millis(200);

/// [`RESOLVE`]'s answer: how, occurrence, owner, late, reused delivery id, delivery state.
type ResolveReply = (String, String, String, i64, i64, String);

/// The shared identity tables.
pub struct RedisStore {
    /// One per connection: lookups and done marks go out in pipelines ([`super::redis_batch`]).
    pipes: Vec<Batcher>,
    next: AtomicUsize,
    resolve: redis::Script,
    done: redis::Script,
    prefix: String,
    owner: String,
    timeout: Duration,
    owner_wait: Duration,
    cfg: IdentityConfig,
    metrics: Arc<Metrics>,
    started: Instant,
    /// Milliseconds since `started` before which the store is skipped.
    skip_until_ms: AtomicU64,
    /// Milliseconds since `started` of the last failure (0: none), and of the last success.
    last_failure_ms: AtomicU64,
    last_success_ms: AtomicU64,
}

impl RedisStore {
    /// Sets the store up without connecting (connections are made on first use and remade after
    /// a failure), and starts a pipeline task per connection.
    pub fn new(
        rc: &RedisStoreConfig,
        cfg: IdentityConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, StoreError> {
        let url = rc.url.as_deref().unwrap_or_default();
        let mut info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| StoreError::Url(format!("not a usable Redis URL: {}", e.kind_name())))?;
        let mut settings = info.redis_settings().clone();
        if let Some(p) = &rc.password {
            settings = settings.set_password(p.expose());
        }
        if let Some(u) = &rc.username {
            settings = settings.set_username(u);
        }
        info = info.set_redis_settings(settings);
        let client = redis::Client::open(info)
            .map_err(|e| StoreError::Url(format!("not a usable Redis URL: {}", e.kind_name())))?;
        let timeout = Duration::from_millis(rc.timeout_ms.max(1));
        let mgr_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let mut conns = Vec::with_capacity(rc.connections.max(1));
        for _ in 0..rc.connections.max(1) {
            let c = ConnectionManager::new_lazy_with_config(client.clone(), mgr_cfg.clone())
                .map_err(|e| StoreError::Url(e.kind_name()))?;
            conns.push(c);
        }
        let store = Arc::new_cyclic(|me| Self {
            pipes: conns
                .into_iter()
                .map(|c| Batcher::spawn(c, timeout, me.clone()))
                .collect(),
            next: AtomicUsize::new(0),
            resolve: redis::Script::new(RESOLVE),
            done: redis::Script::new(DONE),
            prefix: rc.prefix.clone(),
            // Per store, not per process: a bridge restarted inside one process (tests, a
            // reload) has forgotten what it had in flight, so it is another owner.
            owner: format!("{:016x}", fastrand::u64(..)),
            timeout,
            owner_wait: Duration::from_millis(rc.owner_wait_ms),
            cfg,
            metrics,
            started: Instant::now(),
            skip_until_ms: AtomicU64::new(0),
            last_failure_ms: AtomicU64::new(0),
            last_success_ms: AtomicU64::new(0),
        });
        Ok(store)
    }

    pub fn config(&self) -> &IdentityConfig {
        &self.cfg
    }

    /// This process's owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn pipe(&self) -> &Batcher {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pipes.len();
        &self.pipes[i]
    }

    /// Sends `cmd` and reads its answer as `T`, within `timeout_ms`.
    async fn call<T: FromRedisValue>(&self, cmd: Cmd) -> Result<T, String> {
        let answer = match tokio::time::timeout(self.timeout, self.pipe().query(cmd)).await {
            Ok(answer) => answer?,
            Err(_) => return Err("timed out".into()),
        };
        // The parse error is not shown: it can quote the value (delivery ids, owners).
        redis::from_redis_value(answer).map_err(|_| "unexpected answer".to_owned())
    }

    /// Runs a script by its hash (`build` makes the `EVALSHA`); a Redis that does not know the
    /// script (restarted, flushed) is given it and asked again.
    async fn eval<T: FromRedisValue>(
        &self,
        body: &str,
        build: impl Fn() -> Cmd,
    ) -> Result<T, String> {
        match self.call(build()).await {
            Err(e) if e == "NOSCRIPT" => {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(body);
                self.call::<String>(load).await?;
                self.call(build()).await
            }
            r => r,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn key(&self, kind: &str, rest: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + kind.len() + rest.len() + 2);
        k.push_str(&self.prefix);
        k.push(':');
        k.push_str(kind);
        k.push(':');
        k.push_str(rest);
        k
    }

    /// True while the store is skipped after a failure.
    fn skipping(&self) -> bool {
        self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed)
    }

    fn failed(&self, op: &str, why: &str) {
        let now = self.now_ms();
        self.metrics.dedupe_store_errors_in(op).inc();
        let previous = self.last_failure_ms.swap(now.max(1), Ordering::Relaxed);
        let skip = now.saturating_add(u64::try_from(BACKOFF.as_millis()).unwrap_or(1000));
        self.skip_until_ms.store(skip, Ordering::Relaxed);
        if previous == 0 || self.last_success_ms.load(Ordering::Relaxed) >= previous {
            // The first failure after a success: one warning per outage.
            tracing::warn!(
                op,
                error = why,
                "dedupe store (Redis) failed; events are published without cross-replica dedupe (duplicates possible) until it answers"
            );
        }
    }

    fn succeeded(&self) {
        let now = self.now_ms();
        let before = self.last_success_ms.swap(now.max(1), Ordering::Relaxed);
        let failed_at = self.last_failure_ms.load(Ordering::Relaxed);
        if failed_at > 0 && failed_at >= before {
            tracing::info!("dedupe store (Redis) answers again");
        }
    }

    /// `Ok` when the last operation succeeded (or none failed yet); else since when it fails.
    pub fn health(&self) -> Result<(), String> {
        let failed = self.last_failure_ms.load(Ordering::Relaxed);
        let ok = self.last_success_ms.load(Ordering::Relaxed);
        if failed > 0 && failed >= ok {
            let ago = self.now_ms().saturating_sub(failed);
            Err(format!(
                "unreachable (last failure {:.1}s ago); publishing without cross-replica dedupe",
                ago as f64 / 1000.0
            ))
        } else {
            Ok(())
        }
    }

    /// Looks a copy up. `None` when the store failed, timed out or is skipped: the caller
    /// publishes the copy as a new occurrence.
    pub async fn resolve(&self, copy: Copy<'_>) -> Option<Lookup> {
        let side = match copy.source {
            SourceKind::WebSocket => "ws",
            SourceKind::Webhook => "wh",
            SourceKind::Replay => return None,
        };
        if self.skipping() {
            self.metrics.dedupe_store_errors_in("resolve").inc();
            return None;
        }
        let ck = format!("{:032x}", copy.content_key);
        let answer = if self.cfg.pair_sources {
            self.resolve_pairing(&copy, side, &ck).await
        } else if let Some(d) = copy.delivery_id {
            self.resolve_delivery(d, &ck, copy.id).await
        } else {
            return None;
        };
        let (how, id, owner, late, reused, state) = match answer {
            Ok(v) => v,
            Err(why) => {
                self.failed("resolve", &why);
                return None;
            }
        };
        self.succeeded();
        if reused == 1 {
            self.metrics
                .identity_forgotten_in("reused_delivery_id")
                .inc();
            tracing::warn!(
                delivery_id = copy.delivery_id.unwrap_or_default(),
                "a webhook delivery id came again with another body: published as a new change"
            );
        }
        let how = match how.as_str() {
            "retry" => Resolution::Retry,
            "paired" => Resolution::Paired,
            _ => Resolution::New,
        };
        match how {
            Resolution::Retry => self.metrics.identity_retries.inc(),
            Resolution::Paired => self.metrics.identity_paired_from(copy.source).inc(),
            Resolution::New => 0,
        };
        if late == 1 {
            self.metrics.late.inc();
        }
        let id: Arc<str> = if how == Resolution::New {
            Arc::clone(copy.id)
        } else {
            Arc::from(id)
        };
        Some(Lookup {
            resolved: Resolved {
                id,
                how,
                late: late == 1,
            },
            owner_elsewhere: how != Resolution::New && owner != self.owner,
            done: state == "d",
            owner,
        })
    }

    /// Both sources: the whole rule in one script ([`RESOLVE`]).
    async fn resolve_pairing(
        &self,
        copy: &Copy<'_>,
        side: &str,
        ck: &str,
    ) -> Result<ResolveReply, String> {
        let other = if side == "ws" { "wh" } else { "ws" };
        let keys = [
            self.key("d", copy.delivery_id.unwrap_or("-")),
            self.key("u", &format!("{ck}:{other}")),
            self.key("u", &format!("{ck}:{side}")),
            self.key("s", copy.object.unwrap_or("-")),
        ];
        self.eval(RESOLVE, || {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(self.resolve.get_hash())
                .arg(keys.len())
                .arg(&keys)
                .arg(ck)
                .arg(&**copy.id)
                .arg(&self.owner)
                .arg(if copy.delivery_id.is_some() { "1" } else { "0" })
                .arg("1")
                .arg(side)
                .arg(if copy.object.is_some() { "1" } else { "0" })
                .arg(u64::try_from(self.cfg.pair_window.as_millis()).unwrap_or(u64::MAX))
                .arg(u64::try_from(self.cfg.replay_ttl.as_millis()).unwrap_or(u64::MAX))
                .arg(MAX_UNPAIRED_PER_KEY);
            cmd
        })
        .await
    }

    /// Webhooks only: the replay cache alone, as one native `SET NX GET` (no script: a fraction
    /// of the Redis time). The first copy of a delivery sets it; a later one reads it.
    async fn resolve_delivery(
        &self,
        delivery: &str,
        ck: &str,
        id: &Arc<str>,
    ) -> Result<ResolveReply, String> {
        let key = self.key("d", delivery);
        let value = format!("p|{ck}|{}|{id}", self.owner);
        let ttl = u64::try_from(self.cfg.replay_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key)
            .arg(&value)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl);
        let old: Option<String> = self.call(cmd).await?;
        let new = |reused| {
            (
                "new".to_owned(),
                id.to_string(),
                self.owner.clone(),
                0,
                reused,
                "p".to_owned(),
            )
        };
        let Some(old) = old else {
            return Ok(new(0));
        };
        let mut parts = old.splitn(4, '|');
        let (state, old_ck, owner, occ) = (parts.next(), parts.next(), parts.next(), parts.next());
        match (state, old_ck, owner, occ) {
            (Some(state), Some(old_ck), Some(owner), Some(occ)) if old_ck == ck => Ok((
                "retry".into(),
                occ.to_owned(),
                owner.to_owned(),
                0,
                0,
                state.to_owned(),
            )),
            _ => {
                // The id came with another body: this copy is a new change and the delivery now
                // names it.
                let mut set = redis::cmd("SET");
                set.arg(&key).arg(&value).arg("PX").arg(ttl);
                self.call::<()>(set).await.map(|()| new(1))
            }
        }
    }

    /// Waits up to `owner_wait` for the owner of `occurrence` to finish it. `true` when it did.
    pub async fn await_owner(&self, occurrence: &str, delivery: Option<&str>) -> bool {
        let deadline = tokio::time::Instant::now() + self.owner_wait;
        let mark = self.key("o", occurrence);
        let delivery = delivery.map_or_else(|| mark.clone(), |d| self.key("d", d));
        let mut pause = Duration::from_millis(2);
        loop {
            if self.skipping() {
                self.metrics.dedupe_store_errors_in("await_owner").inc();
                return false;
            }
            let done = self.eval::<i64>(DONE, || {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(self.done.get_hash())
                    .arg(2)
                    .arg(&mark)
                    .arg(&delivery);
                cmd
            });
            match done.await {
                Ok(1) => {
                    self.succeeded();
                    return true;
                }
                Ok(_) => self.succeeded(),
                Err(e) => {
                    self.failed("await_owner", &e);
                    return false;
                }
            }
            if tokio::time::Instant::now() + pause > deadline {
                self.metrics.identity_owner_timeouts.inc();
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Queues the done mark of an occurrence this process finished (delivered or dead-lettered):
    /// its own mark (pairing), and the delivery's entry rewritten as done only if it still
    /// exists (`XX`, keeping its time to live). A mark that cannot be queued or written is
    /// counted; it can only make a copy elsewhere wait its `owner_wait` and publish.
    pub fn mark_done(&self, m: Mark) {
        if self.skipping() {
            self.metrics.dedupe_store_errors_in("mark").inc();
            return;
        }
        let pipe = self.pipe();
        let mut queued = Ok(());
        if self.cfg.pair_sources {
            let window = u64::try_from(self.cfg.pair_window.as_millis()).unwrap_or(u64::MAX);
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.key("o", &m.occurrence))
                .arg("1")
                .arg("PX")
                .arg(window);
            queued = pipe.send(cmd);
        }
        if let Some(d) = &m.delivery {
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.key("d", d))
                .arg(format!(
                    "d|{:032x}|{}|{}",
                    m.content_key,
                    m.owner.as_deref().unwrap_or(&self.owner),
                    m.occurrence
                ))
                .arg("XX")
                .arg("KEEPTTL");
            queued = queued.and(pipe.send(cmd));
        }
        if let Err(Full::Full | Full::Closed) = queued {
            self.metrics.dedupe_store_errors_in("mark").inc();
        }
    }
}

impl Outcomes for RedisStore {
    fn unanswered(&self, commands: u64, why: &str) {
        self.metrics
            .dedupe_store_errors_in("mark")
            .inc_by(commands.saturating_sub(1));
        self.failed("mark", why);
    }

    fn answered(&self) {
        self.succeeded();
    }
}
