//! The `file` sink: JSON lines, one file per topic under a directory. The embedded default, so the
//! bridge runs with no broker at all.
//!
//! One writer thread owns the files. Publishes queue to it; it writes everything queued, then makes
//! the batch durable with one `fsync` per touched file (group commit), then confirms each publish.
//! With `fsync: batch`, a batch waits for more publishes while they keep arriving, up to
//! `group_commit_ms` after the previous commit started ([`crate::group_commit::CommitPacer`]); a
//! batch of [`Pace::Patient`] messages (from the WebSocket source) waits for that whole interval.
//! A line is `{"topic","key","event_id","headers":{..},"payload_json":<original JSON>}`. Every
//! line holds the original bytes exactly, in one of three fields:
//! - `payload_json`: the payload itself, embedded as JSON, when it is known to be one JSON
//!   object or array ([`Message::payload_is_json`]) with no line break and no whitespace around
//!   it. This is the usual case (every event the bridge parsed), and the cheapest to write and to read
//!   (`jq .payload_json.current`); read as a raw value it gives back the bytes unchanged.
//! - `payload`: the payload as a JSON string, when it is UTF-8 but not embeddable (pretty-printed
//!   JSON with line breaks, a bare JSON string or number, or not JSON);
//! - `payload_base64`: when it is not UTF-8.
//!
//! [`FileRecord::payload_bytes`] returns the original bytes whichever field holds them.
//!
//! A topic file always ends on a whole line. When a batch cannot be written, flushed or synced
//! for a file (a full disk), its unconfirmed bytes are dropped and the file is cut back
//! (`set_len`) to where the last confirmed batch ended; every publish of that batch to the file
//! fails (retriably), and the file is opened again for the next one. When a file is opened, a last
//! line without its newline (a write cut short by a crash, never confirmed) is copied aside and
//! cut off ([`crate::private_fs::cut_torn_line`]). A topic file the sink creates has its
//! directory fsynced.

pub mod reader;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::{Message, Sink, SinkError, SinkStatus};
use crate::cloudevents::Mode;
use crate::config::{FileSinkConfig, FsyncPolicy};
use crate::group_commit::{CommitPacer, Gathered, Pace};

/// One line of a file sink's output (see the module docs for which payload field is used).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRecord {
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub event_id: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The payload embedded as JSON, exactly as it was received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_json: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl FileRecord {
    /// The original payload bytes.
    pub fn payload_bytes(&self) -> Vec<u8> {
        match (&self.payload_json, &self.payload, &self.payload_base64) {
            (Some(j), _, _) => j.get().as_bytes().to_vec(),
            (None, Some(p), _) => p.as_bytes().to_vec(),
            (None, None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_default(),
            (None, None, None) => Vec::new(),
        }
    }
}

/// The file a topic is written to: characters outside `[A-Za-z0-9._-]` become `_`.
pub fn topic_file(dir: &Path, topic: &str) -> PathBuf {
    let safe: String = topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = if safe.starts_with('.') || safe.is_empty() {
        format!("_{safe}")
    } else {
        safe
    };
    dir.join(format!("{safe}.jsonl"))
}

/// A record encoded by the publishing task (topic, the JSON line with its newline), so the writer
/// thread only writes and syncs, and no message is copied to cross threads.
type Request = (
    String,
    Vec<u8>,
    Pace,
    oneshot::Sender<Result<(), SinkError>>,
);

pub struct FileSink {
    name: String,
    dir: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl FileSink {
    pub fn new(name: &str, cfg: &FileSinkConfig) -> Result<Self, SinkError> {
        crate::private_fs::create_dir_all(&cfg.dir).map_err(|e| {
            SinkError::Fatal(format!(
                "cannot create directory {}: {e}",
                cfg.dir.display()
            ))
        })?;
        let (tx, rx) = mpsc::channel::<Request>(4096);
        let dir = cfg.dir.clone();
        let policy = cfg.fsync;
        let interval = Duration::from_millis(cfg.fsync_interval_ms.max(1));
        let group_commit = Duration::from_millis(cfg.group_commit_ms);
        let writer = std::thread::Builder::new()
            .name(format!("file-sink-{name}"))
            .spawn({
                let name = name.to_owned();
                move || writer_loop(rx, dir, policy, interval, group_commit, &name)
            })
            .map_err(|e| SinkError::Fatal(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            name: name.to_owned(),
            dir: cfg.dir.clone(),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sender(&self) -> Option<mpsc::Sender<Request>> {
        self.tx.lock().ok().and_then(|g| g.clone())
    }
}

struct Writer {
    file: BufWriter<File>,
    /// The same file (a duplicated descriptor), for the fsync pool.
    sync: Arc<File>,
    dirty: bool,
    /// The file's length after the last confirmed batch: where a failed batch is cut back to.
    confirmed_len: u64,
    /// Bytes written (or buffered) since then.
    pending: u64,
}

impl Writer {
    /// Drops what is buffered and cuts the file back to its confirmed length.
    fn discard(self, path: &Path) {
        let (file, _unwritten) = self.file.into_parts();
        if let Err(e) = file
            .set_len(self.confirmed_len)
            .and_then(|()| file.sync_data())
        {
            tracing::warn!(path = %path.display(), error = %e,
                "cannot cut a failed batch off a file-sink file; it is cut when the file is opened next");
        }
    }
}

/// How many files one batch fsyncs at once: the writer thread plus this many helpers.
const SYNC_HELPERS: usize = 3;

type SyncJob = (
    usize,
    Arc<File>,
    std::sync::mpsc::Sender<(usize, Result<(), String>)>,
);

/// Long-lived threads that fsync files side by side, so a batch that touched several files waits
/// for the slowest fsync rather than their sum, without starting a thread per batch.
struct SyncPool {
    jobs: Option<std::sync::mpsc::Sender<SyncJob>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl SyncPool {
    fn start(name: &str) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<SyncJob>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..SYNC_HELPERS)
            .filter_map(|i| {
                let rx = Arc::clone(&rx);
                std::thread::Builder::new()
                    .name(format!("file-sync-{name}-{i}"))
                    .spawn(move || {
                        loop {
                            // A poisoned lock only means another helper panicked mid-`recv`.
                            let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                            let Ok((idx, file, done)) = job else { break };
                            let _ = done.send((idx, file.sync_data().map_err(|e| e.to_string())));
                        }
                    })
                    .ok()
            })
            .collect();
        Self {
            jobs: Some(tx),
            threads,
        }
    }

    /// fsyncs every `Some` file (`None` is skipped as `Ok`), results in the same order.
    fn sync_all(&self, files: &[Option<&Arc<File>>]) -> Vec<Result<(), String>> {
        let mut out: Vec<Result<(), String>> = vec![Ok(()); files.len()];
        let mut todo = files
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.map(|f| (i, f)));
        // The writer thread takes the first file itself; helpers take the rest.
        let Some((first, first_file)) = todo.next() else {
            return out;
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let mut sent = 0usize;
        for (i, f) in todo {
            let queued = self
                .jobs
                .as_ref()
                .filter(|_| !self.threads.is_empty())
                .is_some_and(|jobs| jobs.send((i, Arc::clone(f), done_tx.clone())).is_ok());
            if queued {
                // Until its helper answers: a helper that died mid-job leaves the file unconfirmed.
                out[i] = Err("fsync helper stopped before answering".to_owned());
                sent += 1;
            } else {
                out[i] = f.sync_data().map_err(|e| e.to_string());
            }
        }
        drop(done_tx);
        out[first] = first_file.sync_data().map_err(|e| e.to_string());
        for _ in 0..sent {
            match done_rx.recv() {
                Ok((i, r)) => out[i] = r,
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for SyncPool {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The most writes one batch takes.
const MAX_BATCH: usize = 4096;

/// The writer thread: takes batches of lines, writes them, flushes and fsyncs as the policy says,
/// then answers each line.
fn writer_loop(
    mut rx: mpsc::Receiver<Request>,
    dir: PathBuf,
    policy: FsyncPolicy,
    interval: Duration,
    group_commit: Duration,
    name: &str,
) {
    let mut files = Files {
        open: HashMap::new(),
        pool: SyncPool::start(name),
        dir,
        policy,
        interval,
        last_sync: Instant::now(),
    };
    let mut pacer = CommitPacer::new(group_commit);
    while let Some(first) = rx.blocking_recv() {
        let batch = gather_batch(&mut rx, first, policy, &mut pacer);
        let (results, mut failed) = files.write_batch(&batch);
        files.commit(&mut failed);
        answer(batch, results, &failed);
    }
    files.close();
}

/// Takes what is waiting after `first`, up to [`MAX_BATCH`] writes.
fn gather_batch(
    rx: &mut mpsc::Receiver<Request>,
    first: Request,
    policy: FsyncPolicy,
    pacer: &mut CommitPacer,
) -> Vec<Request> {
    let mut patient = first.2 == Pace::Patient;
    let mut batch = vec![first];
    let mut drain = || {
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => {
                    patient &= r.2 == Pace::Patient;
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        Gathered {
            size: batch.len(),
            full: batch.len() >= MAX_BATCH,
            patient,
        }
    };
    if policy == FsyncPolicy::Batch {
        // Under load the batch takes what keeps arriving: fewer, larger fsyncs.
        pacer.gather(drain);
    } else {
        drain();
    }
    batch
}

/// What the writer thread keeps between batches: the open files, one per topic, and the fsync
/// policy with its helpers.
struct Files {
    open: HashMap<String, Writer>,
    pool: SyncPool,
    dir: PathBuf,
    policy: FsyncPolicy,
    interval: Duration,
    last_sync: Instant,
}

impl Files {
    /// Writes the batch's lines; returns each write's result and the failed topics with why.
    fn write_batch(
        &mut self,
        batch: &[Request],
    ) -> (Vec<Result<(), SinkError>>, HashMap<String, String>) {
        let mut results: Vec<Result<(), SinkError>> = Vec::with_capacity(batch.len());
        let mut failed: HashMap<String, String> = HashMap::new();
        for (topic, line, _, _) in batch {
            // After a failed write the file's tail is unknown: nothing more goes into it in this
            // batch (it is cut back in `commit`).
            let r = match failed.get(topic) {
                Some(e) => Err(SinkError::Retriable(format!("write failed: {e}"))),
                None => write_line(&mut self.open, &self.dir, topic, line),
            };
            if let Err(e) = &r {
                failed.entry(topic.clone()).or_insert_with(|| e.to_string());
            }
            results.push(r);
        }
        (results, failed)
    }

    /// Flushes every touched file, and fsyncs as the policy says; a failure fails the whole batch
    /// of that file (added to `failed`), so nothing is confirmed that may not be on disk.
    fn commit(&mut self, failed: &mut HashMap<String, String>) {
        let sync_now = match self.policy {
            FsyncPolicy::Batch => true,
            FsyncPolicy::Interval => self.last_sync.elapsed() >= self.interval,
            FsyncPolicy::Never => false,
        };
        let mut dirty: Vec<(&String, &mut Writer)> = self
            .open
            .iter_mut()
            .filter(|(t, w)| w.dirty && !failed.contains_key(*t))
            .collect();
        let mut flushed = Vec::with_capacity(dirty.len());
        for (_, w) in dirty.iter_mut() {
            flushed.push(w.file.flush().map_err(|e| e.to_string()));
        }
        // The files' fsyncs run side by side on the pool: one batch waits for the slowest of its
        // files, not for their sum.
        let synced: Vec<Result<(), String>> = if sync_now {
            let targets: Vec<Option<&Arc<File>>> = dirty
                .iter()
                .zip(&flushed)
                .map(|((_, w), f)| f.is_ok().then_some(&w.sync))
                .collect();
            self.pool.sync_all(&targets)
        } else {
            vec![Ok(()); dirty.len()]
        };
        for (((topic, w), f), s) in dirty.into_iter().zip(flushed).zip(synced) {
            match f.and(s) {
                Ok(()) => {
                    w.dirty = false;
                    w.confirmed_len += w.pending;
                    w.pending = 0;
                }
                Err(e) => {
                    failed.insert(topic.clone(), e);
                }
            }
        }
        if sync_now {
            self.last_sync = Instant::now();
        }
        for topic in failed.keys() {
            // Cut back to the last confirmed batch and reopen on the next write: the buffered
            // state is unknown.
            if let Some(w) = self.open.remove(topic) {
                w.discard(&topic_file(&self.dir, topic));
            }
        }
    }

    /// Flushes every file, and fsyncs it unless the policy is `never`.
    fn close(mut self) {
        for w in self.open.values_mut() {
            let _ = w.file.flush();
            if self.policy != FsyncPolicy::Never {
                let _ = w.file.get_ref().sync_data();
            }
        }
    }
}

/// Answers each write: its own result, or the failure of its file's flush or fsync.
fn answer(
    batch: Vec<Request>,
    results: Vec<Result<(), SinkError>>,
    failed: &HashMap<String, String>,
) {
    for ((topic, _, _, reply), mut result) in batch.into_iter().zip(results) {
        if let Some(e) = failed.get(&topic)
            && result.is_ok()
        {
            result = Err(SinkError::Retriable(format!("flush failed: {e}")));
        }
        let _ = reply.send(result);
    }
}

/// Appends one encoded line to its topic's file, opening the file on first use.
fn write_line(
    files: &mut HashMap<String, Writer>,
    dir: &Path,
    topic: &str,
    line: &[u8],
) -> Result<(), SinkError> {
    let w = match files.get_mut(topic) {
        Some(w) => w,
        None => {
            let path = topic_file(dir, topic);
            let cannot_open = |e: std::io::Error| {
                SinkError::Retriable(format!("cannot open {}: {e}", path.display()))
            };
            let f = crate::private_fs::open_append(&path).map_err(cannot_open)?;
            let confirmed_len = crate::private_fs::cut_torn_line(&f, &path).map_err(cannot_open)?;
            let sync = f.try_clone().map(Arc::new).map_err(cannot_open)?;
            files.entry(topic.to_owned()).or_insert(Writer {
                sync,
                file: BufWriter::with_capacity(256 * 1024, f),
                dirty: false,
                confirmed_len,
                pending: 0,
            })
        }
    };
    // Dirty before the write: a write that fails half-way still has bytes to cut back.
    w.dirty = true;
    w.pending += line.len() as u64;
    w.file
        .write_all(line)
        .map_err(|e| SinkError::Retriable(format!("write failed: {e}")))?;
    Ok(())
}

/// One message as its JSON line (newline included): the same JSON as [`FileRecord`]. Public so
/// the benchmark's bare file writer writes exactly the sink's lines.
pub fn encode_line(msg: &Message) -> Result<Vec<u8>, SinkError> {
    // Borrowed view of the record, without copying the payload.
    #[derive(Serialize)]
    struct Line<'a> {
        topic: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
        event_id: &'a str,
        headers: BTreeMap<&'a str, &'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload_base64: Option<String>,
    }
    let body = msg.body();
    let body: &[u8] = body.as_ref();
    let embed = msg.payload_is_json && embeddable_json(body);
    let (payload, payload_base64) = if embed {
        (None, None)
    } else {
        match std::str::from_utf8(body) {
            Ok(s) => (Some(s), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(body)),
            ),
        }
    };
    let mut headers: BTreeMap<&str, &str> = msg
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // A CloudEvent with the HTTP binding's names: `ce-x` per attribute in binary mode, and
    // `content-type`.
    let ce_names: Vec<(String, &str)> = match msg.cloudevent.as_deref() {
        Some(ce) if ce.mode == Mode::Binary => ce
            .attributes()
            .map(|(name, v)| (format!("ce-{name}"), v))
            .collect(),
        _ => Vec::new(),
    };
    headers.extend(ce_names.iter().map(|(k, v)| (k.as_str(), *v)));
    if let Some(ce) = msg.cloudevent.as_deref() {
        headers.insert("content-type", ce.content_type());
    }
    let rec = Line {
        topic: &msg.topic,
        key: msg.key.as_deref(),
        event_id: &msg.event_id,
        headers,
        payload,
        payload_base64,
    };
    let mut line = Vec::with_capacity(body.len() + 512);
    serde_json::to_writer(&mut line, &rec)
        .map_err(|e| SinkError::Fatal(format!("cannot encode record: {e}")))?;
    if embed {
        // `{..}` becomes `{..,"payload_json":<payload>}`: the payload is copied, not escaped.
        line.pop();
        line.extend_from_slice(b",\"payload_json\":");
        line.extend_from_slice(body);
        line.push(b'}');
    }
    line.push(b'\n');
    Ok(line)
}

/// Whether a payload known to be one JSON document can be embedded in a line as it is: an object
/// or an array (every event and dead-letter envelope is one; a top-level `null` would read back as
/// a missing field), with no line break (it would split the line; in valid JSON a line break can
/// only be whitespace, never inside a string) and no whitespace after it (a reader's raw value
/// would not give that back, so the bytes would not round-trip exactly).
fn embeddable_json(payload: &[u8]) -> bool {
    matches!(payload.first(), Some(b'{' | b'['))
        && payload.last().is_some_and(|b| !b.is_ascii_whitespace())
        && memchr::memchr2(b'\n', b'\r', payload).is_none()
}

#[async_trait]
impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn system(&self) -> &'static str {
        "file"
    }

    async fn publish(&self, msg: &Message) -> Result<(), SinkError> {
        let tx = self
            .sender()
            .ok_or_else(|| SinkError::Retriable("file sink is closed".into()))?;
        let line = encode_line(msg)?;
        let (reply, rx) = oneshot::channel();
        tx.send((msg.topic.clone(), line, msg.pace, reply))
            .await
            .map_err(|_| SinkError::Retriable("file sink writer stopped".into()))?;
        rx.await
            .map_err(|_| SinkError::Retriable("file sink writer stopped".into()))?
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        if self.sender().is_none() {
            return Err(SinkError::Retriable("file sink is closed".into()));
        }
        let meta = tokio::fs::metadata(&self.dir)
            .await
            .map_err(|e| SinkError::Retriable(format!("{}: {e}", self.dir.display())))?;
        if meta.permissions().readonly() {
            return Err(SinkError::Retriable(format!(
                "{} is read-only",
                self.dir.display()
            )));
        }
        Ok(())
    }

    fn status(&self) -> SinkStatus {
        if self.sender().is_some() {
            SinkStatus::Connected
        } else {
            SinkStatus::Closed
        }
    }

    async fn close(&self, deadline: Instant) -> Result<(), SinkError> {
        // Dropping the sender ends the writer loop once the queue is drained.
        if let Ok(mut g) = self.tx.lock() {
            g.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut g| g.take());
        if let Some(h) = handle {
            let wait = tokio::task::spawn_blocking(move || h.join());
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, wait).await {
                Ok(_) => {}
                Err(_) => {
                    return Err(SinkError::Retriable(
                        "file sink did not finish writing before the deadline".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn msg(topic: &str, id: &str, payload: &[u8]) -> Message {
        Message {
            topic: topic.into(),
            key: Some("k1".into()),
            headers: vec![("fondo-event-id".into(), id.into())],
            payload: bytes::Bytes::copy_from_slice(payload),
            event_id: Arc::from(id),
            message_id: Arc::from(id),
            // What the dispatcher promises: the parser accepted it.
            payload_is_json: serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok(),
            pace: Pace::Prompt,
            cloudevent: None,
        }
    }

    #[tokio::test]
    async fn writes_one_file_per_topic_with_exact_payload() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(
            "files",
            &FileSinkConfig {
                dir: dir.path().to_path_buf(),
                fsync: FsyncPolicy::Batch,
                fsync_interval_ms: 100,
                group_commit_ms: 2,
            },
        )
        .unwrap();
        let pretty = b"{\n  \"eventType\": \"order.create\"\n}";
        sink.publish(&msg("fondo.order", "e1", pretty))
            .await
            .unwrap();
        sink.publish(&msg("fondo.order", "e2", b"{}"))
            .await
            .unwrap();
        sink.publish(&msg("fondo/acc ount", "e3", b"\xff\x00"))
            .await
            .unwrap();
        sink.close(Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();

        let text = std::fs::read_to_string(dir.path().join("fondo.order.jsonl")).unwrap();
        let recs: Vec<FileRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].payload_bytes(), pretty.to_vec());
        assert_eq!(recs[0].key.as_deref(), Some("k1"));
        assert_eq!(recs[1].event_id, "e2");
        let odd = std::fs::read_to_string(dir.path().join("fondo_acc_ount.jsonl")).unwrap();
        let rec: FileRecord = serde_json::from_str(odd.trim()).unwrap();
        assert_eq!(rec.payload_bytes(), b"\xff\x00".to_vec());
        assert!(
            sink.publish(&msg("x", "e4", b"{}")).await.is_err(),
            "closed sink refuses"
        );
    }

    /// Each payload lands in the field its kind calls for, and comes back byte for byte.
    #[test]
    fn json_payloads_are_embedded_and_everything_round_trips() {
        let compact = r#"{"type":"order.update","current":{"id":7,"note":"r\u00e4ntan \"h\u00f6g\"\t","n":[1.50,-0e3,null]}}"#;
        let cases: [(&[u8], bool, &str); 9] = [
            (compact.as_bytes(), true, "payload_json"),
            (b"[1,2,3]", true, "payload_json"),
            // Objects and arrays only: `null` would read back as a missing field.
            (b"\"just a string\"", true, "payload"),
            (b"null", true, "payload"),
            // Known JSON, but not embeddable as it is.
            (b" {\"a\":1}", true, "payload"),
            (b"{\"a\":1}\t", true, "payload"),
            (b"{\r\n\"a\": 1\r\n}", true, "payload"),
            // Not promised to be JSON: never embedded, even when it is.
            (b"{\"a\":1}", false, "payload"),
            // Not UTF-8.
            (b"{\"a\":\"\xff\"}", false, "payload_base64"),
        ];
        for (payload, is_json, field) in cases {
            let mut m = msg("t", "e", payload);
            m.payload_is_json = is_json;
            let line = encode_line(&m).unwrap();
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(
                line.iter().filter(|&&b| b == b'\n').count(),
                1,
                "one line: {}",
                String::from_utf8_lossy(&line)
            );
            let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
            let keys: Vec<&str> = ["payload_json", "payload", "payload_base64"]
                .into_iter()
                .filter(|k| v.get(*k).is_some())
                .collect();
            assert_eq!(keys, [field], "{}", String::from_utf8_lossy(payload));
            let rec: FileRecord = serde_json::from_slice(&line).unwrap();
            assert_eq!(rec.payload_bytes(), payload, "{field}");
            assert_eq!(rec.event_id, "e");
        }
        // The embedded payload is the parsed document, readable without a second parse.
        let line = encode_line(&msg("t", "e", compact.as_bytes())).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["payload_json"]["current"]["id"], 7);
    }

    /// A CloudEvent in a line: binary mode with the HTTP binding's `ce-` headers and the body
    /// embedded as it is; structured mode with the event format embedded.
    #[test]
    fn cloudevents_lines_carry_the_attributes() {
        use crate::cloudevents::{CloudEvent, Mode};
        let body = br#"{"eventType":"order.create","current":{"id":"o1"}}"#;
        let ce = |mode| {
            Arc::new(CloudEvent {
                mode,
                id: Arc::from("e"),
                source: "fondo:client/c1".into(),
                event_type: "se.fondo.order.create".into(),
                subject: Some("o1".into()),
                time: "2026-12-07T09:00:00.000Z".into(),
                partition_key: Some("k1".into()),
                traceparent: None,
                tracestate: None,
            })
        };
        let mut m = msg("t", "e", body);
        m.cloudevent = Some(ce(Mode::Binary));
        let v: serde_json::Value = serde_json::from_slice(&encode_line(&m).unwrap()).unwrap();
        assert_eq!(v["headers"]["ce-specversion"], "1.0");
        assert_eq!(v["headers"]["ce-type"], "se.fondo.order.create");
        assert_eq!(v["headers"]["ce-subject"], "o1");
        assert_eq!(v["headers"]["content-type"], "application/json");
        assert_eq!(v["payload_json"]["current"]["id"], "o1");

        m.cloudevent = Some(ce(Mode::Structured));
        let line = encode_line(&m).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert!(
            v["headers"].get("ce-id").is_none(),
            "structured: no attribute headers"
        );
        assert_eq!(
            v["headers"]["content-type"],
            crate::cloudevents::STRUCTURED_CONTENT_TYPE
        );
        assert_eq!(v["payload_json"]["id"], "e");
        assert_eq!(v["payload_json"]["data"]["current"]["id"], "o1");
        let rec: FileRecord = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            rec.payload_bytes(),
            m.body().to_vec(),
            "the envelope, byte for byte"
        );
    }

    #[tokio::test]
    async fn unwritable_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = FileSink::new(
            "files",
            &FileSinkConfig {
                dir: file.join("sub"),
                fsync: FsyncPolicy::Never,
                fsync_interval_ms: 100,
                group_commit_ms: 2,
            },
        )
        .err()
        .unwrap();
        assert!(err.reason().contains("cannot create directory"), "{err}");
    }

    #[tokio::test]
    async fn concurrent_publishes_over_many_topics_are_all_confirmed_and_on_disk() {
        // Prompt writes (webhooks), patient ones (the WebSocket source) and the two mixed.
        publish_many_and_check(|_| Pace::Prompt).await;
        publish_many_and_check(|_| Pace::Patient).await;
        publish_many_and_check(|i| {
            if i % 3 == 0 {
                Pace::Prompt
            } else {
                Pace::Patient
            }
        })
        .await;
    }

    async fn publish_many_and_check(pace_of: fn(usize) -> Pace) {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(
            FileSink::new(
                "files",
                &FileSinkConfig {
                    dir: dir.path().to_path_buf(),
                    fsync: FsyncPolicy::Batch,
                    fsync_interval_ms: 100,
                    group_commit_ms: 2,
                },
            )
            .unwrap(),
        );
        // More topics than fsync helpers, published at once, so batches span many files.
        let topics: Vec<String> = (0..(SYNC_HELPERS * 3)).map(|t| format!("t{t}")).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..600usize {
            let sink = Arc::clone(&sink);
            let mut m = msg(&topics[i % topics.len()], &format!("e{i}"), b"{}");
            m.pace = pace_of(i);
            tasks.spawn(async move { sink.publish(&m).await });
        }
        let mut confirmed = 0;
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
            confirmed += 1;
        }
        assert_eq!(confirmed, 600);
        let mut ids = std::collections::BTreeSet::new();
        for t in &topics {
            let text = std::fs::read_to_string(dir.path().join(format!("{t}.jsonl"))).unwrap();
            for l in text.lines() {
                let r: FileRecord = serde_json::from_str(l).unwrap();
                assert_eq!(&r.topic, t);
                ids.insert(r.event_id);
            }
        }
        assert_eq!(
            ids.len(),
            600,
            "every confirmed message is in its file once"
        );
        sink.close(Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
    }

    fn temp_files(dir: &Path, n: usize) -> Vec<Arc<File>> {
        (0..n)
            .map(|i| Arc::new(File::create(dir.join(format!("f{i}"))).unwrap()))
            .collect()
    }

    #[test]
    fn sync_pool_answers_in_order_and_without_helpers_syncs_inline() {
        let dir = tempfile::tempdir().unwrap();
        let files = temp_files(dir.path(), 5);
        let targets: Vec<Option<&Arc<File>>> = files
            .iter()
            .enumerate()
            .map(|(i, f)| (i != 2).then_some(f))
            .collect();
        let pool = SyncPool::start("t");
        assert_eq!(pool.threads.len(), SYNC_HELPERS);
        assert_eq!(pool.sync_all(&targets), vec![Ok(()); 5]);
        assert!(pool.sync_all(&[]).is_empty());
        // With its helpers gone every file is still synced, on the calling thread.
        let mut gone = pool;
        gone.jobs = None;
        for t in gone.threads.drain(..) {
            t.join().unwrap();
        }
        assert_eq!(gone.sync_all(&targets), vec![Ok(()); 5]);
    }

    #[test]
    fn an_fsync_no_helper_answered_is_a_failure_not_a_confirmation() {
        let dir = tempfile::tempdir().unwrap();
        let files = temp_files(dir.path(), 2);
        // A helper that takes the job and drops it without syncing or answering.
        let (tx, rx) = std::sync::mpsc::channel::<SyncJob>();
        let helper = std::thread::spawn(move || drop(rx.recv()));
        let pool = SyncPool {
            jobs: Some(tx),
            threads: vec![helper],
        };
        let out = pool.sync_all(&[Some(&files[0]), Some(&files[1])]);
        assert_eq!(out[0], Ok(()), "the writer's own file is synced inline");
        let err = out[1].clone().unwrap_err();
        assert!(err.contains("fsync helper stopped"), "{err}");
    }
}
