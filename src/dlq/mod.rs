//! Dead letters: events that could not be delivered, kept with everything needed to act on them.
//!
//! A dead letter goes to the configured dead-letter sink; if that fails, to a local JSON-lines file;
//! if that fails too, the write fails and the caller must leave the event unacknowledged (the
//! source keeps it and delivers it again). Dead-lettering is part of at-least-once.
//!
//! The fallback file holds one dead letter per line, each appended with one `write` and made
//! durable with `fdatasync` before the write counts (a file it creates has its directory fsynced
//! too). It always ends on a whole line, so every dead letter acknowledged is one line that
//! parses:
//! - an append that fails half-way (a full disk) is cut off again (`set_len` to the length before
//!   it) and the write fails;
//! - before each append, a last line without its newline (an append cut short by a crash) is
//!   copied aside and cut off ([`crate::private_fs::cut_torn_line`]);
//! - a dead letter that would take the file past `dead_letter.fallback_max_bytes` is not written
//!   (the write fails, the event stays unacknowledged), so the file cannot fill the volume it
//!   shares with the spool.
//!
//! One process appends at a time: the bridge serializes its own appends; `dlq` commands that
//! write the fallback file are meant for a stopped bridge (two processes appending to a file
//! being repaired could cut each other's lines).

pub mod commands;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::event::{Event, SourceKind, TraceContext};
use crate::metrics::{DestinationLabels, Metrics, ReasonLabels};
use crate::sinks::{DynSink, Message, headers};

/// Why an event was dead-lettered: a stable kind (for metrics and filters) plus a human message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonKind {
    /// The body could not be parsed into an event.
    Unparseable,
    /// No route matched the event and `unmatched: dead_letter`.
    Unmatched,
    /// A route's topic, key or header template could not be rendered for the event.
    Render,
    /// The sink refused the message permanently.
    Fatal,
    /// Attempts or time ran out while the sink kept failing retriably.
    Exhausted,
    /// The route names a sink that is not running.
    NoSink,
}

impl ReasonKind {
    /// Every kind.
    pub const ALL: [ReasonKind; 6] = [
        Self::Unparseable,
        Self::Unmatched,
        Self::Render,
        Self::Fatal,
        Self::Exhausted,
        Self::NoSink,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unparseable => "unparseable",
            Self::Unmatched => "unmatched",
            Self::Render => "render",
            Self::Fatal => "fatal",
            Self::Exhausted => "exhausted",
            Self::NoSink => "no_sink",
        }
    }
}

/// Where the event was meant to go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IntendedDestination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// One dead letter, as written to the dead-letter destination (one JSON object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub event_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub source: String,
    pub destination: IntendedDestination,
    pub reason_kind: ReasonKind,
    pub reason: String,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// RFC 3339.
    pub received_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_at: Option<String>,
    pub dead_lettered_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The original body when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The original body, base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn encode_body(raw: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(raw) {
        Ok(s) => (Some(s.to_owned()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(raw)),
        ),
    }
}

/// Failure history of one destination, carried into its dead letter.
#[derive(Debug, Clone, Default)]
pub struct Failures {
    pub attempts: u32,
    pub first_error: Option<String>,
    pub last_error: Option<String>,
    pub first_failed_at: Option<SystemTime>,
    pub last_failed_at: Option<SystemTime>,
}

impl Failures {
    pub fn record(&mut self, err: &str) {
        let now = SystemTime::now();
        if self.first_error.is_none() {
            self.first_error = Some(err.to_owned());
            self.first_failed_at = Some(now);
        }
        self.last_error = Some(err.to_owned());
        self.last_failed_at = Some(now);
    }
}

impl DeadLetter {
    /// A parsed event that failed for one destination (or for all, when unmatched). `body` is what
    /// the destination would have published: the original bytes, or a redacting route's redacted
    /// body, so the fields it removes do not reach the dead-letter topic or file either.
    #[allow(clippy::too_many_arguments)] // one per field group of the record; a builder adds nothing
    pub fn for_event_body(
        event: &Event,
        body: &[u8],
        source: SourceKind,
        received: SystemTime,
        trace: &TraceContext,
        destination: IntendedDestination,
        reason_kind: ReasonKind,
        reason: impl Into<String>,
        failures: &Failures,
    ) -> Self {
        let (body, body_base64) = encode_body(body);
        Self {
            event_id: event.event_id.to_string(),
            event_type: Some(event.event_type.to_string()),
            client_id: event.client_id.as_deref().map(str::to_owned),
            source: source.as_str().to_owned(),
            destination,
            reason_kind,
            reason: reason.into(),
            attempts: failures.attempts,
            first_error: failures.first_error.clone(),
            last_error: failures.last_error.clone(),
            received_at: rfc3339(received),
            first_failed_at: failures.first_failed_at.map(rfc3339),
            last_failed_at: failures.last_failed_at.map(rfc3339),
            dead_lettered_at: rfc3339(SystemTime::now()),
            traceparent: trace.traceparent.clone(),
            body,
            body_base64,
        }
    }

    /// Bytes that never became an event (malformed, no type): kept raw.
    pub fn unparseable(
        raw: &[u8],
        event_id: String,
        client_id: Option<&str>,
        source: SourceKind,
        received: SystemTime,
        trace: &TraceContext,
        reason: impl Into<String>,
    ) -> Self {
        let (body, body_base64) = encode_body(raw);
        Self {
            event_id,
            event_type: None,
            client_id: client_id.map(str::to_owned),
            source: source.as_str().to_owned(),
            destination: IntendedDestination::default(),
            reason_kind: ReasonKind::Unparseable,
            reason: reason.into(),
            attempts: 0,
            first_error: None,
            last_error: None,
            received_at: rfc3339(received),
            first_failed_at: None,
            last_failed_at: None,
            dead_lettered_at: rfc3339(SystemTime::now()),
            traceparent: trace.traceparent.clone(),
            body,
            body_base64,
        }
    }

    /// The original body bytes.
    pub fn body_bytes(&self) -> Vec<u8> {
        match (&self.body, &self.body_base64) {
            (Some(b), _) => b.as_bytes().to_vec(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }

    /// The id under which this dead letter is published: distinct from the event's own id (so a
    /// deduplicating broker keeps it apart from the event) and stable for the same failure.
    pub fn message_id(&self) -> String {
        format!(
            "dlq:{}:{}:{}",
            self.event_id,
            self.destination.route.as_deref().unwrap_or("-"),
            self.destination.sink.as_deref().unwrap_or("-")
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("dead letter could be written nowhere: sink: {sink}; fallback file {path}: {file}")]
    Nowhere {
        sink: String,
        path: PathBuf,
        file: String,
    },
}

/// Where a dead letter ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Sink,
    FallbackFile,
}

/// Writes dead letters: the sink first, then the fallback file.
pub struct DeadLetterWriter {
    sink: Option<DynSink>,
    topic: String,
    attempts: u32,
    fallback: PathBuf,
    fallback_max_bytes: u64,
    file_lock: Mutex<()>,
    metrics: Arc<Metrics>,
}

impl DeadLetterWriter {
    pub fn new(
        sink: Option<DynSink>,
        topic: String,
        attempts: u32,
        fallback: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            sink,
            topic,
            attempts: attempts.max(1),
            fallback,
            fallback_max_bytes: crate::config::default_fallback_max_bytes(),
            file_lock: Mutex::new(()),
            metrics,
        }
    }

    /// Caps the fallback file at `max` bytes (`dead_letter.fallback_max_bytes`; without this, its
    /// default).
    pub fn with_fallback_max_bytes(mut self, max: u64) -> Self {
        self.fallback_max_bytes = max.max(1);
        self
    }

    pub fn fallback_path(&self) -> &Path {
        &self.fallback
    }

    /// Writes one dead letter durably, or says it could not.
    pub async fn write(&self, dl: &DeadLetter) -> Result<Written, DlqError> {
        self.metrics
            .dead_lettered
            .get_or_create(&ReasonLabels {
                reason: dl.reason_kind.as_str().into(),
            })
            .inc();
        let line = match serde_json::to_vec(dl) {
            Ok(l) => l,
            Err(e) => {
                // Cannot happen for this type; never lose the event over it.
                return Err(DlqError::Nowhere {
                    sink: format!("cannot encode dead letter: {e}"),
                    path: self.fallback.clone(),
                    file: "not tried".into(),
                });
            }
        };
        let mut sink_err = String::from("no dead-letter sink configured");
        if let Some(sink) = &self.sink {
            let msg = Message {
                topic: self.topic.clone(),
                key: Some(dl.event_id.clone()),
                headers: dead_letter_headers(dl),
                payload: Bytes::from(line.clone()),
                event_id: Arc::from(dl.message_id()),
                message_id: Arc::from(dl.message_id()),
                payload_is_json: true,
                pace: crate::group_commit::Pace::Prompt,
                cloudevent: None,
            };
            for attempt in 0..self.attempts {
                match sink.publish(&msg).await {
                    Ok(()) => {
                        self.count(sink.name());
                        return Ok(Written::Sink);
                    }
                    Err(e) => {
                        sink_err = format!("{}: {e}", sink.name());
                        if !e.is_retriable() {
                            break;
                        }
                        if attempt + 1 < self.attempts {
                            tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
                        }
                    }
                }
            }
            tracing::warn!(
                event_id = %dl.event_id,
                error = %sink_err,
                fallback = %self.fallback.display(),
                "dead-letter sink failed; writing the dead letter to the fallback file"
            );
        }
        match self.append_fallback(line).await {
            Ok(()) => {
                self.count("fallback_file");
                Ok(Written::FallbackFile)
            }
            Err(e) => {
                self.metrics.dead_letter_failures.inc();
                tracing::error!(
                    event_id = %dl.event_id,
                    sink_error = %sink_err,
                    file_error = %e,
                    "dead letter could be written nowhere: the event stays unacknowledged"
                );
                Err(DlqError::Nowhere {
                    sink: sink_err,
                    path: self.fallback.clone(),
                    file: e.to_string(),
                })
            }
        }
    }

    fn count(&self, dest: &str) {
        self.metrics
            .dead_letter_writes
            .get_or_create(&DestinationLabels {
                destination: dest.into(),
            })
            .inc();
    }

    async fn append_fallback(&self, mut line: Vec<u8>) -> std::io::Result<()> {
        line.push(b'\n');
        let _guard = self.file_lock.lock().await;
        let path = self.fallback.clone();
        let max = self.fallback_max_bytes;
        tokio::task::spawn_blocking(move || append_line(&path, &line, max))
            .await
            .map_err(std::io::Error::other)?
    }
}

/// Appends one line (newline included) to the fallback file durably, or leaves the file as it
/// was and says why. See the module docs.
fn append_line(path: &Path, line: &[u8], max: u64) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::private_fs::create_dir_all(dir)?;
    }
    let mut f = crate::private_fs::open_append(path)?;
    let len = crate::private_fs::cut_torn_line(&f, path)?;
    let after = len.saturating_add(line.len() as u64);
    if after > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!(
                "the fallback file holds {len} bytes; a dead letter of {} bytes would take it past dead_letter.fallback_max_bytes ({max})",
                line.len()
            ),
        ));
    }
    let written = f.write_all(line).and_then(|()| f.sync_data());
    if let Err(e) = written {
        // Whatever part of the line reached the file is cut off again, so the next dead letter
        // starts on a line of its own; a cut that fails leaves it to the next append's repair.
        if let Err(cut) = f.set_len(len).and_then(|()| f.sync_data()) {
            tracing::warn!(path = %path.display(), error = %cut,
                "cannot cut a failed dead-letter append off the fallback file; the next append does");
        }
        return Err(e);
    }
    Ok(())
}

fn dead_letter_headers(dl: &DeadLetter) -> Vec<(String, String)> {
    let mut h = vec![
        (headers::EVENT_ID.to_owned(), dl.event_id.clone()),
        (headers::SOURCE.to_owned(), dl.source.clone()),
        (
            headers::DEAD_LETTER_REASON.to_owned(),
            dl.reason_kind.as_str().to_owned(),
        ),
    ];
    if let Some(t) = &dl.event_type {
        h.push((headers::EVENT_TYPE.to_owned(), t.clone()));
    }
    if let Some(c) = &dl.client_id {
        h.push((headers::CLIENT_ID.to_owned(), c.clone()));
    }
    if let Some(tp) = &dl.traceparent {
        h.push((headers::TRACEPARENT.to_owned(), tp.clone()));
    }
    h
}

/// A line of a dead-letter file that is not a dead letter: its number and the parse error.
pub type BadLine = (usize, String);

/// Reads the dead letters of a JSON-lines fallback file. Lines that are not dead letters are
/// reported by line number, not skipped silently.
pub fn read_fallback_file(path: &Path) -> std::io::Result<(Vec<DeadLetter>, Vec<BadLine>)> {
    let text = std::fs::read_to_string(path)?;
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<DeadLetter>(line) {
            Ok(d) => ok.push(d),
            Err(e) => bad.push((i + 1, e.to_string())),
        }
    }
    Ok((ok, bad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::testing::{Faults, TestSink};

    fn sample() -> DeadLetter {
        DeadLetter::unparseable(
            b"{oops \xff",
            "id-1".into(),
            None,
            SourceKind::Webhook,
            SystemTime::now(),
            &TraceContext::default(),
            "malformed",
        )
    }

    #[tokio::test]
    async fn sink_first_then_file_then_error() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let ok = Arc::new(TestSink::new("dl", Faults::default()));
        let w = DeadLetterWriter::new(
            Some(ok.clone()),
            "fondo.dead-letter".into(),
            2,
            dir.path().join("dl.jsonl"),
            metrics.clone(),
        );
        assert_eq!(w.write(&sample()).await.unwrap(), Written::Sink);
        let got = ok.delivered();
        assert_eq!(got.len(), 1);
        let back: DeadLetter = serde_json::from_slice(&got[0].payload).unwrap();
        assert_eq!(
            back.body_bytes(),
            b"{oops \xff".to_vec(),
            "raw bytes survive"
        );

        let down = Arc::new(TestSink::new(
            "dl",
            Faults {
                down: true,
                ..Faults::default()
            },
        ));
        let w = DeadLetterWriter::new(
            Some(down),
            "t".into(),
            2,
            dir.path().join("sub/dl.jsonl"),
            metrics.clone(),
        );
        assert_eq!(w.write(&sample()).await.unwrap(), Written::FallbackFile);
        let (read, bad) = read_fallback_file(&dir.path().join("sub/dl.jsonl")).unwrap();
        assert_eq!(read.len(), 1);
        assert!(bad.is_empty());

        // A fallback path under a regular file cannot be created: nowhere to write.
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let down = Arc::new(TestSink::new(
            "dl",
            Faults {
                down: true,
                ..Faults::default()
            },
        ));
        let w = DeadLetterWriter::new(
            Some(down),
            "t".into(),
            1,
            blocker.join("dl.jsonl"),
            metrics.clone(),
        );
        assert!(matches!(
            w.write(&sample()).await,
            Err(DlqError::Nowhere { .. })
        ));
        assert_eq!(metrics.dead_letter_failures.get(), 1);
    }
}
