//! The file sink's disk: its lines written and fdatasynced by hand, and the lines counted.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use fondo_bridge::sinks::Message;
use fondo_bridge::sinks::file::{encode_line, topic_file};

use crate::latency::Latencies;
use crate::payload::{CLIENT_ID, Ev};
use crate::window::Published;

/// The bare-disk counterpart of the file sink: the sink's own lines (`encode_line`: topic,
/// key, event id, the four `fondo-*` headers, the payload embedded as JSON), appended to one
/// file per topic, `window` messages per group commit, and every file written in a batch
/// fdatasynced, in parallel as the sink's helper threads do, before the next batch starts.
/// No parse, no dispatcher, no spool: what the disk and the kernel cost on their own.
/// Latency is each message's batch, write to the last fdatasync (exact).
pub fn raw(
    dir: &Path,
    prefix: &str,
    pool: &[Ev],
    n: u64,
    window: usize,
) -> anyhow::Result<Published> {
    let mut files: HashMap<String, std::fs::File> = HashMap::new();
    let mut lines: HashMap<String, Vec<u8>> = HashMap::new();
    let mut latencies = Latencies::new();
    let t0 = Instant::now();
    let mut i = 0u64;
    while i < n {
        let end = (i + window.max(1) as u64).min(n);
        let started = Instant::now();
        for j in i..end {
            let (topic, line) = encode(prefix, &pool[(j as usize) % pool.len()], j)?;
            lines.entry(topic).or_default().extend_from_slice(&line);
        }
        let dirty = append(dir, &mut files, &mut lines)?;
        sync(&files, &dirty)?;
        latencies.record_us(duration_us(started.elapsed()), end - i);
        i = end;
    }
    Ok(Published {
        elapsed_s: t0.elapsed().as_secs_f64(),
        latencies,
        errors: 0,
    })
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The file sink's line for the `j`-th message, and its topic.
fn encode(prefix: &str, ev: &Ev, j: u64) -> anyhow::Result<(String, Vec<u8>)> {
    let id = format!("{j:032x}");
    let msg = Message {
        topic: format!("{prefix}.{}", ev.entity),
        key: Some(ev.key.clone()),
        headers: vec![
            ("fondo-event-id".into(), id.clone()),
            ("fondo-event-type".into(), ev.etype.into()),
            ("fondo-client-id".into(), CLIENT_ID.into()),
            ("fondo-source".into(), "websocket".into()),
        ],
        payload: ev.body.clone(),
        message_id: id.clone().into(),
        event_id: id.into(),
        payload_is_json: true,
        pace: fondo_bridge::group_commit::Pace::Patient,
        cloudevent: None,
    };
    let line = encode_line(&msg).map_err(|e| anyhow!("encode: {e}"))?;
    Ok((msg.topic, line))
}

/// Appends each topic's pending lines to its file (opened on first use); returns the topics
/// written.
fn append(
    dir: &Path,
    files: &mut HashMap<String, std::fs::File>,
    lines: &mut HashMap<String, Vec<u8>>,
) -> anyhow::Result<Vec<String>> {
    let mut dirty = Vec::new();
    for (topic, buf) in lines.iter_mut().filter(|(_, b)| !b.is_empty()) {
        if !files.contains_key(topic) {
            let path = topic_file(dir, topic);
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("open {}", path.display()))?;
            files.insert(topic.clone(), f);
        }
        if let Some(f) = files.get_mut(topic) {
            f.write_all(buf)?;
            dirty.push(topic.clone());
        }
        buf.clear();
    }
    Ok(dirty)
}

/// fdatasyncs the `dirty` topics' files, in parallel.
fn sync(files: &HashMap<String, std::fs::File>, dirty: &[String]) -> anyhow::Result<()> {
    std::thread::scope(|sc| -> anyhow::Result<()> {
        let syncs: Vec<_> = dirty
            .iter()
            .filter_map(|t| files.get(t))
            .map(|f| sc.spawn(move || f.sync_data()))
            .collect();
        for h in syncs {
            h.join()
                .map_err(|_| anyhow!("fdatasync thread panicked"))??;
        }
        Ok(())
    })
}

/// Lines in the files under `dir`: the messages the file sink (or [`raw`]) wrote.
pub fn count_lines(dir: &Path) -> u64 {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            n += count_lines(&p);
        } else if let Ok(b) = std::fs::read(&p) {
            n += b.iter().filter(|c| **c == b'\n').count() as u64;
        }
    }
    n
}
