//! The events every scenario publishes: the simulator's generator, padded to a payload size.

use bytes::Bytes;

use fondo_bridge::simulator::generator::Generator;

pub const CLIENT_ID: &str = "49ad7378-121c-4a53-9894-dfd14a7b4877";
/// The simulated stream's bearer token.
pub const TOKEN: &str = "bench-token";
/// The entities of Fondo's event types: one topic (subject, routing key) each.
pub use fondo_bridge::event::ENTITIES;
/// Events kept in memory for the raw publishers (cycled; ids stay unique).
pub const POOL: usize = 20_000;

/// One generated event, with what a publisher needs besides the body.
#[derive(Clone)]
pub struct Ev {
    pub body: Bytes,
    /// The object's id: events of one object share it.
    pub key: String,
    pub etype: &'static str,
    pub entity: &'static str,
}

/// `n` events about `objects` objects, bodies padded to about `payload_bytes`; the same for the
/// same arguments.
pub fn pool(objects: usize, payload_bytes: usize, n: usize) -> Vec<Ev> {
    let mut g = Generator::new(7, CLIENT_ID, objects.max(1), payload_bytes);
    (0..n)
        .map(|_| {
            let e = g.next_detailed();
            let entity = ENTITIES
                .iter()
                .copied()
                .find(|x| e.event_type.split('.').next() == Some(*x))
                .unwrap_or("other");
            Ev {
                body: e.body,
                key: e.object_id,
                etype: e.event_type,
                entity,
            }
        })
        .collect()
}

/// The average body length in bytes.
pub fn avg_len(p: &[Ev]) -> f64 {
    if p.is_empty() {
        return 0.0;
    }
    p.iter().map(|e| e.body.len() as f64).sum::<f64>() / p.len() as f64
}

/// `prefix-<pid>-<ms>`: a name no earlier run used.
pub fn unique(prefix: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{prefix}-{}-{}", std::process::id(), t % 100_000_000)
}
