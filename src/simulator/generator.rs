//! Realistic, deterministic Fondo events for the simulator, tests and benchmarks.
//!
//! A [`Generator`] keeps a pool of `objects` live objects (accounts, clients, cash and fund
//! transactions, orders, journeys, instruments) and, on every [`Generator::next_event`], advances one
//! of them through its life: `create`, some `update`s, `delete`, after which the slot is refilled with
//! a fresh object. So the events of one object must be applied in order, and `previous` of each event
//! equals `current` of the one before it for the same object.
//!
//! Every object carries a `seq` field (its version, starting at 1 on create). An event's own order
//! number for its object is [`event_seq`]: `current.seq`, or for a delete `previous.seq + 1`. Objects
//! are identified by `ref` (accounts) or `id` (everything else), as Fondo does; ids are unique within
//! one generator (they embed the seed and a running number), so content-hash event ids never collide.
//!
//! The same seed, client id, object count and payload size always give the same sequence of bodies.
//! Bodies are written directly as JSON text (no `serde_json::Value` in between), so generation is
//! cheap enough for 100k+ events per second.
//!
//! ```
//! use fondo_bridge::simulator::generator::{Generator, heartbeat};
//! let mut g = Generator::new(7, "49ad7378-121c-4a53-9894-dfd14a7b4877", 100, 0);
//! let body = g.next_event();
//! let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert!(v["eventType"].is_string());
//! assert_eq!(&heartbeat()[..], br#"{"eventType":"heartbeat"}"#);
//! ```

use std::fmt::Write as _;

use bytes::Bytes;
use serde_json::Value;

/// The kinds of object the generator simulates, with the event types each may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// `account.create` / `.update` / `.delete`; identified by `ref`.
    Account,
    /// `client.update` / `.delete` (the reference lists no `client.create`).
    Client,
    /// `cashTransaction.create` / `.update` / `.delete`.
    CashTransaction,
    /// `fundTransaction.create` / `.update` / `.delete`.
    FundTransaction,
    /// `order.create` / `.update` / `.delete`.
    Order,
    /// `journey.update` / `.delete`.
    Journey,
    /// `instrument.reloaded` only.
    Instrument,
}

impl ObjectKind {
    /// All kinds, in the order slots are assigned (slot `i` gets `MIX[i % MIX.len()]`).
    const MIX: [ObjectKind; 12] = [
        ObjectKind::Order,
        ObjectKind::CashTransaction,
        ObjectKind::Account,
        ObjectKind::FundTransaction,
        ObjectKind::Order,
        ObjectKind::CashTransaction,
        ObjectKind::Client,
        ObjectKind::FundTransaction,
        ObjectKind::Order,
        ObjectKind::Journey,
        ObjectKind::Instrument,
        ObjectKind::Account,
    ];

    /// The entity part of the event type, e.g. `cashTransaction`.
    pub fn entity(self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::Client => "client",
            Self::CashTransaction => "cashTransaction",
            Self::FundTransaction => "fundTransaction",
            Self::Order => "order",
            Self::Journey => "journey",
            Self::Instrument => "instrument",
        }
    }

    fn has_create(self) -> bool {
        matches!(
            self,
            Self::Account | Self::CashTransaction | Self::FundTransaction | Self::Order
        )
    }

    fn has_delete(self) -> bool {
        !matches!(self, Self::Instrument)
    }
}

/// What one generated event was, for callers that want more than the bytes.
#[derive(Debug, Clone)]
pub struct GeneratedEvent {
    /// e.g. `order.update`.
    pub event_type: &'static str,
    /// The object's `ref` (accounts) or `id`.
    pub object_id: String,
    /// The event's order number for its object (see [`event_seq`]).
    pub seq: u64,
    /// The JSON body, exactly as it should be sent.
    pub body: Bytes,
}

#[derive(Debug, Clone)]
struct ObjectState {
    kind: ObjectKind,
    id: String,
    /// Last version emitted; 0 = nothing emitted yet.
    seq: u64,
    /// How many more updates before the delete.
    updates_left: u32,
    /// Kind-specific mutable fields.
    status: usize,
    amount_ore: u64,
    units_milli: u64,
}

/// Deterministic generator of Fondo event bodies. See the module documentation.
#[derive(Debug, Clone)]
pub struct Generator {
    rng: fastrand::Rng,
    seed: u64,
    client_id: String,
    /// `client_id` as a JSON string literal, quotes included.
    client_id_json: String,
    payload_bytes: usize,
    slots: Vec<ObjectState>,
    next_serial: u64,
    generated: u64,
    buf: String,
}

const ORDER_STATUS: &[&str] = &["received", "placed", "executed", "settled"];
const TX_STATUS: &[&str] = &["pending", "booked", "settled"];
const ACCOUNT_STATUS: &[&str] = &["pending", "active", "active", "frozen", "active"];
const CLIENT_STATUS: &[&str] = &["onboarding", "active", "active", "review"];
const JOURNEY_STEP: &[&str] = &["started", "kyc", "signing", "funding", "completed"];
const FIRST: &[&str] = &[
    "Ben", "Astrid", "Lars", "Maja", "Nils", "Sara", "Omar", "Elin",
];
const LAST: &[&str] = &[
    "Rangel",
    "Lindqvist",
    "Berg",
    "Nyström",
    "Holm",
    "Ek",
    "Sjöberg",
    "Falk",
];
const ISINS: &[&str] = &[
    "SE0000000001",
    "SE0000000019",
    "SE0000000027",
    "LU0000000035",
    "IE0000000043",
];

impl Generator {
    /// A generator for the stream of `client_id`, keeping `objects` objects alive (at least 1), and
    /// padding each body to about `payload_bytes` (0 = no padding; small bodies are ~300-1200 bytes)
    /// with a top-level `padding` string field.
    pub fn new(seed: u64, client_id: &str, objects: usize, payload_bytes: usize) -> Self {
        let client_id_json =
            serde_json::to_string(client_id).unwrap_or_else(|_| "\"unknown\"".to_owned());
        let mut g = Self {
            rng: fastrand::Rng::with_seed(seed),
            seed,
            client_id: client_id.to_owned(),
            client_id_json,
            payload_bytes,
            slots: Vec::with_capacity(objects.max(1)),
            next_serial: 0,
            generated: 0,
            buf: String::with_capacity(2048),
        };
        for i in 0..objects.max(1) {
            let kind = ObjectKind::MIX[i % ObjectKind::MIX.len()];
            let obj = g.fresh(kind);
            g.slots.push(obj);
        }
        g
    }

    /// The client id events are generated for.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// How many events were generated so far.
    pub fn generated(&self) -> u64 {
        self.generated
    }

    /// The next event body: one JSON object with `eventType` and `current` and/or `previous`.
    pub fn next_event(&mut self) -> Bytes {
        self.next_detailed().body
    }

    /// The next event with its type, object id and order number.
    pub fn next_detailed(&mut self) -> GeneratedEvent {
        let slot = self.rng.usize(..self.slots.len());
        let before = self.slots[slot].clone();
        let mut after = before.clone();
        let action = if before.seq == 0 {
            if before.kind.has_create() {
                "create"
            } else if before.kind == ObjectKind::Instrument {
                "reloaded"
            } else {
                "update"
            }
        } else if before.kind == ObjectKind::Instrument {
            "reloaded"
        } else if before.updates_left == 0 && before.kind.has_delete() {
            "delete"
        } else {
            "update"
        };
        after.seq = before.seq + 1;
        if action == "update" || action == "reloaded" {
            after.updates_left = before.updates_left.saturating_sub(1);
            self.mutate(&mut after);
        }

        self.buf.clear();
        let event_type = event_type_str(before.kind, action);
        let _ = write!(self.buf, "{{\"eventType\":\"{event_type}\"");
        match action {
            "create" => {
                self.buf.push_str(",\"current\":");
                self.render(&after);
            }
            "delete" => {
                self.buf.push_str(",\"previous\":");
                self.render(&before);
            }
            "reloaded" => {
                self.buf.push_str(",\"current\":");
                self.render(&after);
            }
            _ => {
                self.buf.push_str(",\"current\":");
                self.render(&after);
                // The first update of a kind without `create` has no earlier state to show.
                if before.seq > 0 {
                    self.buf.push_str(",\"previous\":");
                    self.render(&before);
                }
            }
        }
        // Pad at the top level, so `current`/`previous` stay the objects' real states.
        let closing = 1;
        if self.payload_bytes > self.buf.len() + closing + 14 {
            let n = self.payload_bytes - self.buf.len() - closing - 14;
            self.buf.push_str(",\"padding\":\"");
            push_padding(&mut self.buf, n, (after.seq % 26) as usize);
            self.buf.push('"');
        }
        self.buf.push('}');

        let object_id = before.id.clone();
        if action == "delete" {
            let kind = before.kind;
            self.slots[slot] = self.fresh(kind);
        } else {
            self.slots[slot] = after.clone();
        }
        self.generated += 1;
        GeneratedEvent {
            event_type,
            object_id,
            seq: after.seq,
            body: Bytes::copy_from_slice(self.buf.as_bytes()),
        }
    }

    fn fresh(&mut self, kind: ObjectKind) -> ObjectState {
        self.next_serial += 1;
        let n = self.next_serial;
        let s = self.seed & 0xffff;
        let id = match kind {
            // Account refs are numeric strings like "160367146695159".
            ObjectKind::Account => format!("1603{s:05}{n:06}"),
            ObjectKind::Client => format!("cli_{s:04x}_{n:06}"),
            ObjectKind::CashTransaction => format!("ct_{s:04x}_{n:06}"),
            ObjectKind::FundTransaction => format!("ft_{s:04x}_{n:06}"),
            ObjectKind::Order => format!("ord_{s:04x}_{n:06}"),
            ObjectKind::Journey => format!("jrn_{s:04x}_{n:06}"),
            ObjectKind::Instrument => format!("SE{s:05}{n:05}"),
        };
        ObjectState {
            kind,
            id,
            seq: 0,
            updates_left: self.rng.u32(1..=5),
            status: 0,
            amount_ore: self.rng.u64(10_000..10_000_000),
            units_milli: self.rng.u64(1_000..500_000),
        }
    }

    fn mutate(&mut self, o: &mut ObjectState) {
        o.status += 1;
        let delta = self.rng.u64(0..200_000);
        if self.rng.bool() {
            o.amount_ore += delta;
        } else {
            o.amount_ore = o.amount_ore.saturating_sub(delta);
        }
        o.units_milli += self.rng.u64(0..10_000);
    }

    /// The body of one object as Fondo sends it: a match with one arm per entity, long on
    /// purpose so each payload shape reads as one block, as Fondo's sample payloads show it.
    fn render(&mut self, o: &ObjectState) {
        let b = &mut self.buf;
        let cid = &self.client_id_json;
        let amt = Money(o.amount_ore);
        let seq = o.seq;
        let id = &o.id;
        // Derive stable per-object facts from the id's serial so they do not change between versions.
        let serial = id.bytes().fold(0usize, |h, c| {
            h.wrapping_mul(31).wrapping_add(usize::from(c))
        });
        let first = FIRST[serial % FIRST.len()];
        let last = LAST[(serial / 7) % LAST.len()];
        let isin = ISINS[serial % ISINS.len()];
        let account_ref = format!("1603{:011}", serial % 100_000_000_000);
        let day = 1 + (serial % 28);
        let _ = match o.kind {
            ObjectKind::Account => {
                let status = pick(ACCOUNT_STATUS, o.status);
                let units = Units(o.units_milli);
                let deposited = Money(o.amount_ore + 12_345);
                let withdrawn = Money(12_345);
                write!(
                    b,
                    concat!(
                        "{{\"ref\":\"{id}\",\"name\":\"Spar\",\"status\":\"{status}\",",
                        "\"accountType\":\"isk\",\"serviceType\":\"portfolioManagement\",",
                        "\"owner\":{{\"firstName\":\"{first}\",\"lastName\":\"{last}\",",
                        "\"fullName\":\"{first} {last}\",\"ssn\":\"19700101{ssn:04}\"}},",
                        "\"balance\":{amt},\"amounts\":{{\"deposited\":{deposited},\"withdrawn\":{withdrawn}}},",
                        "\"positions\":[{{\"instrument\":\"{isin}\",\"units\":{units},\"unitsSettled\":{units},",
                        "\"value\":{amt},\"closePrice\":66.67,\"gav\":64.1}}],\"deleted\":false,",
                        "\"clientId\":{cid},\"bankAccounts\":[{{\"iban\":\"SE7280000810340009783242\",",
                        "\"bban\":\"666 666 666\",\"bank\":\"Buy n' Large\",\"name\":\"Lönekonto\",",
                        "\"createdDate\":\"2018-12-13T23:59:00.001Z\",\"modifiedDate\":\"2026-11-{day:02}T09:00:00.000Z\",",
                        "\"deletedDate\":null,\"validated\":true}}],\"currency\":\"SEK\",\"seq\":{seq}}}"
                    ),
                    id = id,
                    status = status,
                    first = first,
                    last = last,
                    ssn = serial % 10_000,
                    amt = amt,
                    deposited = deposited,
                    withdrawn = withdrawn,
                    isin = isin,
                    units = units,
                    cid = cid,
                    day = day,
                    seq = seq,
                )
            }
            ObjectKind::Client => {
                let status = pick(CLIENT_STATUS, o.status);
                write!(
                    b,
                    concat!(
                        "{{\"id\":\"{id}\",\"clientId\":{cid},\"firstName\":\"{first}\",",
                        "\"lastName\":\"{last}\",\"status\":\"{status}\",\"riskProfile\":{risk},",
                        "\"email\":\"{lower}@example.se\",\"seq\":{seq}}}"
                    ),
                    id = id,
                    cid = cid,
                    first = first,
                    last = last,
                    status = status,
                    risk = 1 + (o.status % 7),
                    lower = first.to_ascii_lowercase(),
                    seq = seq,
                )
            }
            ObjectKind::CashTransaction => {
                let status = pick(TX_STATUS, o.status);
                let ty = if serial % 3 == 0 {
                    "withdrawal"
                } else {
                    "deposit"
                };
                write!(
                    b,
                    concat!(
                        "{{\"id\":\"{id}\",\"accountRef\":\"{acc}\",\"clientId\":{cid},\"type\":\"{ty}\",",
                        "\"amount\":{amt},\"currency\":\"SEK\",\"status\":\"{status}\",",
                        "\"transactionDate\":\"2026-11-{day:02}\",\"settlementDate\":\"2026-11-{sday:02}\",",
                        "\"seq\":{seq}}}"
                    ),
                    id = id,
                    acc = account_ref,
                    cid = cid,
                    ty = ty,
                    amt = amt,
                    status = status,
                    day = day,
                    sday = day + 2,
                    seq = seq,
                )
            }
            ObjectKind::FundTransaction => {
                let status = pick(TX_STATUS, o.status);
                let ty = if serial % 4 == 0 {
                    "redemption"
                } else {
                    "subscription"
                };
                write!(
                    b,
                    concat!(
                        "{{\"id\":\"{id}\",\"accountRef\":\"{acc}\",\"clientId\":{cid},\"type\":\"{ty}\",",
                        "\"instrument\":\"{isin}\",\"units\":{units},\"price\":66.67,\"amount\":{amt},",
                        "\"currency\":\"SEK\",\"status\":\"{status}\",\"tradeDate\":\"2026-11-{day:02}\",",
                        "\"settlementDate\":\"2026-11-{sday:02}\",\"seq\":{seq}}}"
                    ),
                    id = id,
                    acc = account_ref,
                    cid = cid,
                    ty = ty,
                    isin = isin,
                    units = Units(o.units_milli),
                    amt = amt,
                    status = status,
                    day = day,
                    sday = day + 2,
                    seq = seq,
                )
            }
            ObjectKind::Order => {
                let status = pick(ORDER_STATUS, o.status);
                let side = if serial % 2 == 0 { "buy" } else { "sell" };
                let trade = if o.status >= 2 {
                    format!("\"2026-11-{day:02}\"")
                } else {
                    "null".to_owned()
                };
                write!(
                    b,
                    concat!(
                        "{{\"id\":\"{id}\",\"accountRef\":\"{acc}\",\"clientId\":{cid},",
                        "\"instrument\":\"{isin}\",\"side\":\"{side}\",\"amount\":{amt},\"currency\":\"SEK\",",
                        "\"status\":\"{status}\",\"tradeDate\":{trade},\"settlementDate\":null,",
                        "\"createdDate\":\"2026-11-{day:02}T09:14:03.120Z\",\"seq\":{seq}}}"
                    ),
                    id = id,
                    acc = account_ref,
                    cid = cid,
                    isin = isin,
                    side = side,
                    amt = amt,
                    status = status,
                    trade = trade,
                    day = day,
                    seq = seq,
                )
            }
            ObjectKind::Journey => {
                let step = pick(JOURNEY_STEP, o.status);
                write!(
                    b,
                    concat!(
                        "{{\"id\":\"{id}\",\"clientId\":{cid},\"type\":\"onboarding\",",
                        "\"step\":\"{step}\",\"updatedDate\":\"2026-11-{day:02}T10:00:00.000Z\",\"seq\":{seq}}}"
                    ),
                    id = id,
                    cid = cid,
                    step = step,
                    day = day,
                    seq = seq,
                )
            }
            ObjectKind::Instrument => write!(
                b,
                concat!(
                    "{{\"id\":\"{id}\",\"name\":\"Fondo Global {n}\",\"currency\":\"SEK\",",
                    "\"nav\":{nav},\"navDate\":\"2026-11-{day:02}\",\"seq\":{seq}}}"
                ),
                id = id,
                n = serial % 100,
                nav = Money(o.amount_ore / 100),
                day = day,
                seq = seq,
            ),
        };
    }
}

fn pick(list: &'static [&'static str], i: usize) -> &'static str {
    list[i.min(list.len() - 1)]
}

fn event_type_str(kind: ObjectKind, action: &str) -> &'static str {
    match (kind, action) {
        (ObjectKind::Account, "create") => "account.create",
        (ObjectKind::Account, "delete") => "account.delete",
        (ObjectKind::Account, _) => "account.update",
        (ObjectKind::Client, "delete") => "client.delete",
        (ObjectKind::Client, _) => "client.update",
        (ObjectKind::CashTransaction, "create") => "cashTransaction.create",
        (ObjectKind::CashTransaction, "delete") => "cashTransaction.delete",
        (ObjectKind::CashTransaction, _) => "cashTransaction.update",
        (ObjectKind::FundTransaction, "create") => "fundTransaction.create",
        (ObjectKind::FundTransaction, "delete") => "fundTransaction.delete",
        (ObjectKind::FundTransaction, _) => "fundTransaction.update",
        (ObjectKind::Order, "create") => "order.create",
        (ObjectKind::Order, "delete") => "order.delete",
        (ObjectKind::Order, _) => "order.update",
        (ObjectKind::Journey, "delete") => "journey.delete",
        (ObjectKind::Journey, _) => "journey.update",
        (ObjectKind::Instrument, _) => "instrument.reloaded",
    }
}

/// An amount in öre, printed as a JSON number with two decimals.
struct Money(u64);

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// Units in thousandths, printed with three decimals.
struct Units(u64);

impl std::fmt::Display for Units {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// The heartbeat frame Fondo sends at intervals: `{"eventType":"heartbeat"}`.
pub fn heartbeat() -> Bytes {
    Bytes::from_static(br#"{"eventType":"heartbeat"}"#)
}

/// The object an event is about, as `entity:id` (e.g. `order:ord_0007_000012`), from
/// `current`/`previous` `ref` or `id`. `None` for heartbeats and bodies without an object.
pub fn object_key(body: &Value) -> Option<String> {
    let ty = body.get("eventType")?.as_str()?;
    let entity = ty.split('.').next().unwrap_or(ty);
    for field in ["current", "previous"] {
        if let Some(obj) = body.get(field).filter(|v| v.is_object()) {
            for idf in ["ref", "id"] {
                if let Some(id) = obj.get(idf).and_then(Value::as_str) {
                    return Some(format!("{entity}:{id}"));
                }
            }
        }
    }
    None
}

/// Appends `n` padding letters: the alphabet from letter `start` on, repeated (`a + (i + start) % 26`
/// for the `i`-th letter). Copied a run at a time: the benchmarks' load generator pads every event.
fn push_padding(buf: &mut String, n: usize, start: usize) {
    const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz";
    buf.reserve(n);
    let (mut left, mut from) = (n, start % ALPHABET.len());
    while left > 0 {
        let take = (ALPHABET.len() - from).min(left);
        buf.push_str(&ALPHABET[from..from + take]);
        left -= take;
        from = 0;
    }
}

/// An event's order number for its object: `current.seq`, or `previous.seq + 1` when there is no
/// `current` (a delete). Strictly increasing along one object's events.
pub fn event_seq(body: &Value) -> Option<u64> {
    if let Some(s) = body.pointer("/current/seq").and_then(Value::as_u64) {
        return Some(s);
    }
    body.pointer("/previous/seq")
        .and_then(Value::as_u64)
        .map(|s| s + 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::event::{Event, KNOWN_EVENT_TYPES, ParseContext, ParseOptions};

    const CID: &str = "49ad7378-121c-4a53-9894-dfd14a7b4877";

    #[test]
    fn deterministic_per_seed() {
        let mut a = Generator::new(42, CID, 50, 0);
        let mut b = Generator::new(42, CID, 50, 0);
        let mut c = Generator::new(43, CID, 50, 0);
        let xs: Vec<_> = (0..200).map(|_| a.next_event()).collect();
        let ys: Vec<_> = (0..200).map(|_| b.next_event()).collect();
        let zs: Vec<_> = (0..200).map(|_| c.next_event()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn all_types_parse_consistent_and_ordered() {
        let mut g = Generator::new(1, CID, 64, 0);
        let opts = ParseOptions::default();
        let ctx = ParseContext {
            client_id: Some(CID),
            ..Default::default()
        };
        let mut seen_types = HashSet::new();
        let mut last_current: HashMap<String, Value> = HashMap::new();
        let mut last_seq: HashMap<String, u64> = HashMap::new();
        let mut ids = HashSet::new();
        for _ in 0..20_000 {
            let d = g.next_detailed();
            let ev = Event::parse(d.body.clone(), &opts, &ctx).unwrap();
            assert_eq!(ev.event_type.as_str(), d.event_type);
            assert!(ids.insert(ev.event_id.clone()), "duplicate event id");
            seen_types.insert(d.event_type);
            let key = object_key(ev.body()).unwrap();
            let seq = event_seq(ev.body()).unwrap();
            assert_eq!(seq, d.seq);
            assert_eq!(ev.object_ref().unwrap(), d.object_id);
            if let Some(prev) = last_seq.insert(key.clone(), seq) {
                assert_eq!(seq, prev + 1, "{key}");
            } else {
                assert_eq!(seq, 1);
            }
            if let (Some(p), Some(lc)) = (ev.previous(), last_current.get(&key)) {
                assert_eq!(p, lc, "previous must equal the last current of {key}");
            }
            match ev.current() {
                Some(c) => {
                    last_current.insert(key, c.clone());
                }
                None => {
                    last_current.remove(&key);
                }
            }
        }
        for t in KNOWN_EVENT_TYPES {
            if *t != "heartbeat" {
                assert!(seen_types.contains(t), "never generated {t}");
            }
        }
    }

    #[test]
    fn padding_is_the_alphabet_from_the_given_letter() {
        for (n, start) in [(0, 0), (1, 25), (26, 0), (27, 3), (100, 7), (2000, 13)] {
            let mut fast = String::new();
            push_padding(&mut fast, n, start);
            let slow: String = (0..n)
                .map(|i| char::from(b'a' + ((i + start) % 26) as u8))
                .collect();
            assert_eq!(fast, slow, "n={n} start={start}");
        }
    }

    #[test]
    fn padding_reaches_target_size() {
        let mut g = Generator::new(3, CID, 10, 2048);
        for _ in 0..100 {
            let b = g.next_event();
            assert!(b.len() >= 2048 - 15, "{}", b.len());
            let _: Value = serde_json::from_slice(&b).unwrap();
        }
    }

    #[test]
    fn account_looks_like_the_sample() {
        let mut g = Generator::new(9, CID, 12, 0);
        let acc = (0..1000)
            .map(|_| g.next_event())
            .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
            .find(|v| v["eventType"] == "account.update")
            .unwrap();
        let cur = &acc["current"];
        for f in [
            "ref",
            "name",
            "status",
            "accountType",
            "serviceType",
            "owner",
            "balance",
            "amounts",
            "positions",
            "deleted",
            "clientId",
            "bankAccounts",
            "currency",
        ] {
            assert!(cur.get(f).is_some(), "missing {f}");
        }
        assert_eq!(cur["clientId"], CID);
    }
}
