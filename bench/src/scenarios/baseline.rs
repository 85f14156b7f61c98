//! `baseline`: the bridge's job done by hand, the ceiling for what the bridge does. The same
//! simulated stream as `bridge-ws` (same simulator thread, seed, payloads and event count) is
//! read with a bare tokio-tungstenite client; each text frame is parsed with serde_json, its
//! `eventType` picks the topic the `ws` scenario's catch-all route renders (`<prefix>.{entity}`),
//! its object's `ref`/`id` is the key (the bridge's default key), and the frame is published
//! verbatim with the raw scenario's client, headers and confirm window. No spool, no dedupe, no
//! per-key queues, no acknowledgement bookkeeping. Timed from the simulator's first event until
//! the last of `n` broker confirms.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::brokers::{kafka, nats, rabbitmq};
use crate::dest::{Dest, SinkKind, tmp_dir};
use crate::latency::Latencies;
use crate::measure::{CpuMeter, peak_rss_mb, reset_peak_rss};
use crate::payload::{avg_len, pool};
use crate::row::{Outcome, Row, Setup};
use crate::scenarios::{Ctx, ws};
use crate::sim::SimThread;

/// What the baseline takes from one frame: what the bridge's route would render.
#[derive(Debug, PartialEq, Eq)]
pub struct Routed {
    /// `<prefix>.<entity>`, the `ws` scenario's route `<prefix>.{entity}`.
    pub topic: String,
    /// The object's `ref` or `id` (of `current`, else of `previous`); empty when it has none.
    pub key: String,
    pub event_type: String,
}

/// Parses one frame and picks its topic from `eventType`; `None` for a heartbeat or a frame
/// that is not a JSON object with a string `eventType` (the bridge publishes neither).
pub fn route(prefix: &str, frame: &[u8]) -> Option<Routed> {
    let body: Value = serde_json::from_slice(frame).ok()?;
    let event_type = body.get("eventType")?.as_str()?;
    if event_type == "heartbeat" || event_type.is_empty() {
        return None;
    }
    let entity = event_type.split('.').next().unwrap_or(event_type);
    let key = ["current", "previous"]
        .iter()
        .filter_map(|f| body.get(*f).filter(|o| o.is_object()))
        .find_map(|o| {
            ["ref", "id"].iter().find_map(|k| match o.get(*k) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            })
        })
        .unwrap_or_default();
    Some(Routed {
        topic: format!("{prefix}.{entity}"),
        key,
        event_type: event_type.to_owned(),
    })
}

/// The raw scenario's client for one broker.
enum Client {
    Nats(async_nats::jetstream::Context),
    Kafka(rdkafka::producer::FutureProducer),
    Rabbit {
        conn: lapin::Connection,
        ch: lapin::Channel,
        exchange: String,
    },
}

impl Client {
    async fn connect(c: &Ctx, dest: &Dest) -> anyhow::Result<Self> {
        let a = &c.args;
        Ok(match dest.kind {
            SinkKind::Nats => Self::Nats(async_nats::jetstream::new(
                async_nats::connect(a.nats.as_str()).await?,
            )),
            SinkKind::Kafka => Self::Kafka(kafka::producer(&a.kafka, &dest.prefix).await?),
            SinkKind::Rabbit => {
                let (conn, ch) = rabbitmq::confirming(&a.amqp).await?;
                Self::Rabbit {
                    conn,
                    ch,
                    exchange: dest.exchange.clone(),
                }
            }
            SinkKind::File => bail!("the baseline runs against a broker, not the file sink"),
        })
    }

    async fn publish(&self, r: Routed, id: String, body: Bytes) -> anyhow::Result<()> {
        match self {
            Self::Nats(js) => nats::publish(js, r.topic, &id, &r.event_type, &r.key, body).await,
            Self::Kafka(p) => kafka::send(p, &r.topic, &id, &r.event_type, &r.key, &body).await,
            Self::Rabbit { ch, exchange, .. } => {
                rabbitmq::publish(ch, exchange, &r.topic, &id, &r.event_type, &r.key, &body).await
            }
        }
    }

    async fn close(self) {
        if let Self::Rabbit { conn, .. } = self {
            let _ = conn.close(200, "bye".into()).await;
        }
    }
}

/// What the job measured.
struct Done {
    /// When the last confirm arrived.
    finished: Instant,
    /// Frame received → broker confirm, of each confirmed event.
    receive_to_confirm: Latencies,
    /// Publish → confirm, of each confirmed event.
    publish: Latencies,
    errors: u64,
}

pub async fn run(
    c: &Ctx,
    kind: SinkKind,
    payload: usize,
    n: u64,
    group: &str,
) -> anyhow::Result<Row> {
    let a = &c.args;
    let tmp = tmp_dir("baseline")?;
    let dest = Dest::prepare(a, kind, &tmp).await?;
    let client = Client::connect(c, &dest).await?;
    let sim = SimThread::spawn(Some(ws::stream(a.objects, payload, n)), c.load_cpus())?;
    let req = sim.client_request()?;
    reset_peak_rss();
    let (socket, _) = tokio_tungstenite::connect_async(req).await?;
    // Spawned, so the job runs on a runtime worker as the bridge's source and sink tasks do.
    let (prefix, window) = (dest.prefix.clone(), a.window);
    let job = tokio::spawn(async move {
        let done = job(socket, &client, &prefix, n, window).await;
        client.close().await;
        done
    });
    // Time from the first event the simulator sent, as `bridge-ws` does.
    sim.first_event_sent().await?;
    let cpu = CpuMeter::start(c.tck, sim.tid.clone());
    let t0 = Instant::now();
    let limit = Duration::from_secs(60 + n / 500);
    let done = tokio::time::timeout(limit, job).await;
    let cpu_s = cpu.read();
    let rss = peak_rss_mb();
    sim.stop().await;
    let done = done.map_err(|_| anyhow!("fewer than {n} confirms in {limit:?}"))???;
    let count = dest.count_and_clean(a, n).await;
    let _ = std::fs::remove_dir_all(&tmp);
    let setup = Setup {
        scenario: "baseline",
        sink: kind.name(),
        group,
        payload_bytes: payload,
        avg_body_bytes: avg_len(&pool(a.objects, payload, 2000)),
        routes: 1,
        window: a.window,
        events: n,
    };
    let outcome = Outcome {
        confirmed: done.receive_to_confirm.count(),
        errors: done.errors,
        elapsed_s: done.finished.saturating_duration_since(t0).as_secs_f64(),
        cpu_s,
        peak_rss_mb: rss,
    };
    let mut row = Row::measured(&setup, &outcome);
    row.set_latency("receive→confirm (each event)", &done.receive_to_confirm);
    row.set_publish_latency(&done.publish);
    row.note =
        "bridge-ws's stream by hand: parse, topic from eventType, raw client and window".into();
    row.verify(count);
    Ok(row)
}

/// Reads the stream until `n` events were published, with at most `window` awaiting their
/// confirm, and waits for those confirms.
async fn job<S>(
    mut socket: S,
    client: &Client,
    prefix: &str,
    n: u64,
    window: usize,
) -> anyhow::Result<Done>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut receive_to_confirm = Latencies::new();
    let mut publish = Latencies::new();
    let mut errors = 0u64;
    let mut inflight = FuturesUnordered::new();
    let mut read = 0u64;
    loop {
        tokio::select! {
            biased;
            Some((received, took, r)) = inflight.next(), if !inflight.is_empty() => match r {
                Ok(()) => {
                    receive_to_confirm.record(Instant::elapsed(&received));
                    publish.record(took);
                }
                Err(e) => {
                    if errors < 5 {
                        eprintln!("  publish error: {e:#}");
                    }
                    errors += 1;
                }
            },
            frame = socket.next(), if read < n && inflight.len() < window.max(1) => {
                let received = Instant::now();
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => bail!("after {read} events: {e}"),
                    None => bail!("the stream ended after {read} of {n} events"),
                };
                let Some(routed) = route(prefix, text.as_bytes()) else {
                    continue;
                };
                read += 1;
                let id = format!("base-{read}");
                let body = Bytes::from(text);
                inflight.push(async move {
                    let t = Instant::now();
                    let r = client.publish(routed, id, body).await;
                    (received, t.elapsed(), r)
                });
            },
            else => break,
        }
    }
    Ok(Done {
        finished: Instant::now(),
        receive_to_confirm,
        publish,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::CLIENT_ID;
    use fondo_bridge::simulator::generator::{Generator, heartbeat};

    #[test]
    fn the_topic_is_the_entity_of_the_event_type_as_the_ws_route_renders_it() {
        let r = route(
            "b1",
            br#"{"eventType":"order.update","current":{"ref":"ord_1","state":"x"},"previous":{"ref":"ord_0"}}"#,
        );
        assert_eq!(
            r,
            Some(Routed {
                topic: "b1.order".into(),
                key: "ord_1".into(),
                event_type: "order.update".into(),
            })
        );
        // A delete has only `previous`; a numeric id is a key too.
        let r = route(
            "p",
            br#"{"eventType":"cashTransaction.delete","current":null,"previous":{"id":42}}"#,
        )
        .unwrap();
        assert_eq!(
            (r.topic.as_str(), r.key.as_str()),
            ("p.cashTransaction", "42")
        );
        // Unknown types are published by entity as well; no dot: the whole type.
        assert_eq!(
            route("p", br#"{"eventType":"gizmo"}"#).unwrap().topic,
            "p.gizmo"
        );
        // Not published: heartbeats, bodies without a type, not JSON.
        assert_eq!(route("p", &heartbeat()), None);
        assert_eq!(route("p", br#"{"current":{}}"#), None);
        assert_eq!(route("p", b"not json"), None);
    }

    #[test]
    fn every_generated_event_goes_to_its_entitys_topic_with_its_object_as_key() {
        let mut g = Generator::new(3, CLIENT_ID, 50, 256);
        for _ in 0..500 {
            let e = g.next_detailed();
            let r = route("x", &e.body).expect("a generated event is published");
            let entity = e.event_type.split('.').next().unwrap();
            assert!(crate::payload::ENTITIES.contains(&entity), "{entity}");
            assert_eq!(r.topic, format!("x.{entity}"));
            assert_eq!(r.event_type, e.event_type);
            assert_eq!(r.key, e.object_id);
        }
    }
}
