//! `fondo-bridge dlq`: list, show and replay dead letters from the command line.
//!
//! Dead letters are read from the configured dead-letter destination (a file sink's topic file, a
//! Kafka topic, a RabbitMQ queue bound to the dead-letter exchange, or a JetStream stream) and from
//! the JSON-lines fallback file, merged. Reading never consumes, acknowledges or deletes anything:
//! Kafka is read by assigned partitions up to the high watermark without a consumer group commit,
//! RabbitMQ messages are fetched unacknowledged and all requeued, JetStream through an ephemeral
//! consumer that acknowledges nothing.
//!
//! Replay sends the selected dead letters again, keeping their event id (so JetStream `Nats-Msg-Id`
//! and downstream deduplication still work) and adding a `fondo-replayed-at` header:
//! - by default through the routing table as it is now, via a [`crate::dispatch::Dispatcher`], so retries and
//!   dead-lettering apply exactly as in the running bridge;
//! - with `--original` straight to the sink, topic and key each dead letter failed on;
//! - with `--to-sink S --to-topic T` to an explicit destination (the only way for unparseable ones).
//!
//! A dead letter that fails again is dead-lettered again with the new reason. Nothing is ever deleted.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use crate::app;
use crate::config::{Config, SinkConfig};
use crate::dispatch::RetryPolicy;
use crate::dlq::{DeadLetter, DeadLetterWriter, Failures, ReasonKind};
use crate::event::{AckHandle, AckStatus, Envelope, Event, ParseContext, ParseOptions, SourceKind};
use crate::metrics::Metrics;
use crate::plan::Plan;
use crate::sinks::{DynSink, Message, Sink, SinkError, headers};

/// `fondo-bridge dlq …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters (table, or `--json` lines) from the dead-letter destination and the
    /// fallback file.
    List {
        #[command(flatten)]
        select: Select,
        /// One JSON object per line (bodies left out; use `show` for one dead letter in full).
        #[arg(long)]
        json: bool,
    },
    /// Show the dead letters of one event id (or one `dlq:` message id) in full, body included.
    Show {
        /// The event id (or the dead letter's message id `dlq:<event_id>:<route>:<sink>`).
        id: String,
        #[command(flatten)]
        from: ReadFrom,
        /// Print the dead letters as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send the selected dead letters again (through the routing table as it is now by default).
    Replay {
        #[command(flatten)]
        select: Select,
        /// Send each dead letter straight to the sink, topic and key it failed on.
        #[arg(long, conflicts_with_all = ["to_sink", "to_topic"])]
        original: bool,
        /// An explicit destination sink (with --to-topic); needed for unparseable dead letters.
        #[arg(long, requires = "to_topic")]
        to_sink: Option<String>,
        /// An explicit destination topic / routing key / subject (with --to-sink).
        #[arg(long, requires = "to_sink")]
        to_topic: Option<String>,
        /// Print what would be sent where, and send nothing.
        #[arg(long)]
        dry_run: bool,
        /// At most this many dead letters per second, e.g. `50/s` or `50`.
        #[arg(long, value_parser = parse_rate)]
        rate: Option<f64>,
        /// Replay at most this many dead letters (after filtering).
        #[arg(long)]
        limit: Option<usize>,
    },
}

/// Where to read dead letters from, beyond the config.
#[derive(Debug, Clone, clap::Args)]
pub struct ReadFrom {
    /// RabbitMQ dead-letter sink: the queue bound to the dead-letter exchange and routing key to read
    /// (messages are fetched unacknowledged and all requeued).
    #[arg(long)]
    pub queue: Option<String>,
    /// Give up reading the dead-letter destination after this long (e.g. `30s`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub read_timeout: Duration,
}

impl Default for ReadFrom {
    fn default() -> Self {
        Self {
            queue: None,
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// Which dead letters.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Select {
    /// Only this reason kind (repeatable): unparseable, unmatched, render, fatal, exhausted, no_sink.
    #[arg(long = "reason", value_parser = parse_reason)]
    pub reasons: Vec<ReasonKind>,
    /// Only event types matching this glob (`order.*`, `*.delete`).
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Only dead letters of this route.
    #[arg(long)]
    pub route: Option<String>,
    /// Only dead letters meant for this sink.
    #[arg(long)]
    pub sink: Option<String>,
    /// Only these event ids (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// Dead-lettered at or after: RFC 3339 (`2026-01-02T03:04:05Z`) or an age (`1h`, `30m`).
    #[arg(long)]
    pub since: Option<String>,
    /// Dead-lettered before: RFC 3339 or an age.
    #[arg(long)]
    pub until: Option<String>,
    #[command(flatten)]
    pub from: ReadFrom,
}

/// What a `dlq` command came to: its exit code and what it saw or did.
#[derive(Debug, Clone, Default)]
pub struct DlqOutcome {
    /// 0 all good, 1 some replays failed (or were refused, or not finished), 2 usage/config problem.
    pub code: u8,
    /// The dead letters listed, shown or selected for replay.
    pub dead_letters: Vec<DeadLetter>,
    /// Lines of the fallback file or destination that are not dead letters.
    pub unreadable: usize,
    pub replay: Option<ReplaySummary>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Dead letters selected (after filters, deduplication and `--limit`).
    pub selected: usize,
    pub succeeded: usize,
    /// Failed again (and dead-lettered again with the new reason).
    pub failed: usize,
    /// Refused before sending (unparseable without an explicit destination).
    pub refused: usize,
    /// Not sent because the replay was interrupted.
    pub not_sent: usize,
    pub interrupted: bool,
    pub dry_run: bool,
}

impl ReplaySummary {
    /// Whether anything selected was not replayed: failed, refused, not sent, or interrupted.
    pub fn is_bad(&self) -> bool {
        self.failed + self.refused + self.not_sent > 0 || self.interrupted
    }

    pub fn line(&self) -> String {
        format!(
            "replay{}: {} selected, {} succeeded, {} failed (dead-lettered again), {} refused, {} not sent{}",
            if self.dry_run { " (dry run)" } else { "" },
            self.selected,
            self.succeeded,
            self.failed,
            self.refused,
            self.not_sent,
            if self.interrupted {
                "; interrupted"
            } else {
                ""
            }
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DlqCliError {
    #[error("{0}")]
    Usage(String),
    #[error("config: {0}")]
    Config(String),
    #[error("reading dead letters from {from}: {error}")]
    Read { from: String, error: String },
    #[error("{0}")]
    Start(String),
    #[error("no dead letter with id {0}")]
    NotFound(String),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

impl DlqCliError {
    /// The exit code: 2 for usage and config problems, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Config(_) => 2,
            _ => 1,
        }
    }
}

fn parse_reason(s: &str) -> Result<ReasonKind, String> {
    serde_json::from_value(serde_json::Value::String(s.trim().to_ascii_lowercase())).map_err(|_| {
        format!(
            "unknown reason kind {s:?}: unparseable, unmatched, render, fatal, exhausted, no_sink"
        )
    })
}

/// `50/s`, `50`, `0.5/s`.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches("/s").trim();
    match n.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("invalid rate {s:?}: use e.g. 50/s")),
    }
}

/// An RFC 3339 time or an age (`1h`) before now.
fn parse_time(s: &str) -> Result<SystemTime, DlqCliError> {
    let s = s.trim();
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return SystemTime::now()
            .checked_sub(d)
            .ok_or_else(|| DlqCliError::Usage(format!("{s}: too long ago")));
    }
    Err(DlqCliError::Usage(format!(
        "invalid time {s:?}: use RFC 3339 (2026-01-02T03:04:05Z) or an age (1h, 30m)"
    )))
}

fn parse_dl_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s).ok()
}

struct Filter {
    reasons: Vec<ReasonKind>,
    event_type: Option<String>,
    route: Option<String>,
    sink: Option<String>,
    ids: Vec<String>,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
}

impl Filter {
    fn new(s: &Select) -> Result<Self, DlqCliError> {
        Ok(Self {
            reasons: s.reasons.clone(),
            event_type: s.event_type.clone(),
            route: s.route.clone(),
            sink: s.sink.clone(),
            ids: s.ids.clone(),
            since: s.since.as_deref().map(parse_time).transpose()?,
            until: s.until.as_deref().map(parse_time).transpose()?,
        })
    }

    fn keep(&self, d: &DeadLetter) -> bool {
        if !self.reasons.is_empty() && !self.reasons.contains(&d.reason_kind) {
            return false;
        }
        if let Some(g) = &self.event_type {
            match &d.event_type {
                Some(t) if crate::router::wildcard_match(g, t) => {}
                _ => return false,
            }
        }
        if let Some(r) = &self.route
            && d.destination.route.as_deref() != Some(r.as_str())
        {
            return false;
        }
        if let Some(s) = &self.sink
            && d.destination.sink.as_deref() != Some(s.as_str())
        {
            return false;
        }
        if !self.ids.is_empty() && !self.ids.contains(&d.event_id) {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(at) = parse_dl_time(&d.dead_lettered_at) else {
                return false;
            };
            if self.since.is_some_and(|s| at < s) || self.until.is_some_and(|u| at >= u) {
                return false;
            }
        }
        true
    }
}

/// Runs one `dlq` command, printing to stdout; SIGTERM / Ctrl-C stop a replay cleanly.
pub async fn run(cmd: DlqCommand, plan: &Plan) -> Result<DlqOutcome, DlqCliError> {
    let stop = CancellationToken::new();
    spawn_signal_handler(stop.clone());
    let mut out = std::io::stdout();
    run_with(cmd, plan, stop, &mut out).await
}

/// Like [`run`], with the output and the stop signal given (tests, embedding).
pub async fn run_with(
    cmd: DlqCommand,
    plan: &Plan,
    stop: CancellationToken,
    out: &mut (dyn Write + Send),
) -> Result<DlqOutcome, DlqCliError> {
    match cmd {
        DlqCommand::List { select, json } => list(plan.config(), &select, json, out).await,
        DlqCommand::Show { id, from, json } => show(plan.config(), id, &from, json, out).await,
        DlqCommand::Replay {
            select,
            original,
            to_sink,
            to_topic,
            dry_run,
            rate,
            limit,
        } => {
            let filter = Filter::new(&select)?;
            let mode = Mode::from_flags(plan.config(), original, to_sink, to_topic)?;
            let (all, unreadable) = read_all(plan.config(), &select.from).await?;
            let dls = select_for_replay(all, &filter, &mode, limit);
            let opts = ReplayOpts {
                mode,
                dry_run,
                rate,
            };
            let summary = replay(plan, &dls, &opts, stop, out).await?;
            writeln!(out, "{}", summary.line())?;
            Ok(DlqOutcome {
                code: u8::from(summary.is_bad()),
                dead_letters: dls,
                unreadable,
                replay: Some(summary),
            })
        }
    }
}

/// `dlq list`: a table, or JSON lines without bodies.
async fn list(
    cfg: &Config,
    select: &Select,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<DlqOutcome, DlqCliError> {
    let filter = Filter::new(select)?;
    let (all, unreadable) = read_all(cfg, &select.from).await?;
    let dls: Vec<DeadLetter> = all.into_iter().filter(|d| filter.keep(d)).collect();
    if json {
        for d in &dls {
            let mut d = d.clone();
            d.body = None;
            d.body_base64 = None;
            writeln!(out, "{}", serde_json::to_string(&d).unwrap_or_default())?;
        }
    } else {
        print_table(out, &dls)?;
        writeln!(out, "{} dead letter(s)", dls.len())?;
    }
    if unreadable > 0 {
        eprintln!("warning: {unreadable} record(s) are not dead letters and were skipped");
    }
    Ok(DlqOutcome {
        code: 0,
        dead_letters: dls,
        unreadable,
        replay: None,
    })
}

/// `dlq show`: every dead letter of one event id (or one `dlq:` message id), in full.
async fn show(
    cfg: &Config,
    id: String,
    from: &ReadFrom,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<DlqOutcome, DlqCliError> {
    let (all, unreadable) = read_all(cfg, from).await?;
    let dls: Vec<DeadLetter> = all
        .into_iter()
        .filter(|d| d.event_id == id || d.message_id() == id)
        .collect();
    if dls.is_empty() {
        return Err(DlqCliError::NotFound(id));
    }
    for d in &dls {
        if json {
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(d).unwrap_or_default()
            )?;
        } else {
            print_full(out, d)?;
        }
    }
    Ok(DlqOutcome {
        code: 0,
        dead_letters: dls,
        unreadable,
        replay: None,
    })
}

/// The dead letters a replay takes: those the filter keeps, each once (see [`Mode::dedupe_key`]),
/// at most `limit`.
fn select_for_replay(
    all: Vec<DeadLetter>,
    filter: &Filter,
    mode: &Mode,
    limit: Option<usize>,
) -> Vec<DeadLetter> {
    let mut seen = HashSet::new();
    let mut dls: Vec<DeadLetter> = all
        .into_iter()
        .filter(|d| filter.keep(d))
        .filter(|d| seen.insert(mode.dedupe_key(d)))
        .collect();
    if let Some(n) = limit {
        dls.truncate(n);
    }
    dls
}

fn spawn_signal_handler(stop: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                let _ = tokio::signal::ctrl_c().await;
                stop.cancel();
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        eprintln!("stopping: no more dead letters are sent; waiting for those in flight");
        stop.cancel();
    });
}

// ---------------------------------------------------------------------------------------------
// Output

fn dest_label(d: &DeadLetter) -> String {
    match (&d.destination.sink, &d.destination.topic) {
        (Some(s), Some(t)) => format!("{s}/{t}"),
        (Some(s), None) => s.clone(),
        (None, Some(t)) => t.clone(),
        (None, None) => "-".into(),
    }
}

fn print_table(out: &mut (dyn Write + Send), dls: &[DeadLetter]) -> std::io::Result<()> {
    let head = [
        "EVENT ID",
        "TYPE",
        "SOURCE",
        "DESTINATION",
        "REASON",
        "ATTEMPTS",
        "FIRST FAILED",
        "LAST FAILED",
    ];
    let rows: Vec<[String; 8]> = dls
        .iter()
        .map(|d| {
            [
                d.event_id.clone(),
                d.event_type.clone().unwrap_or_else(|| "-".into()),
                d.source.clone(),
                dest_label(d),
                d.reason_kind.as_str().to_owned(),
                d.attempts.to_string(),
                d.first_failed_at
                    .clone()
                    .unwrap_or_else(|| d.dead_lettered_at.clone()),
                d.last_failed_at
                    .clone()
                    .unwrap_or_else(|| d.dead_lettered_at.clone()),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(head.to_vec()))?;
    for r in &rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn print_full(out: &mut (dyn Write + Send), d: &DeadLetter) -> std::io::Result<()> {
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    writeln!(out, "event id:         {}", d.event_id)?;
    writeln!(out, "message id:       {}", d.message_id())?;
    writeln!(out, "event type:       {}", opt(&d.event_type))?;
    writeln!(out, "client id:        {}", opt(&d.client_id))?;
    writeln!(out, "source:           {}", d.source)?;
    writeln!(out, "route:            {}", opt(&d.destination.route))?;
    writeln!(out, "sink:             {}", opt(&d.destination.sink))?;
    writeln!(out, "topic:            {}", opt(&d.destination.topic))?;
    writeln!(out, "key:              {}", opt(&d.destination.key))?;
    writeln!(
        out,
        "reason:           {} ({})",
        d.reason_kind.as_str(),
        d.reason
    )?;
    writeln!(out, "attempts:         {}", d.attempts)?;
    writeln!(out, "first error:      {}", opt(&d.first_error))?;
    writeln!(out, "last error:       {}", opt(&d.last_error))?;
    writeln!(out, "received at:      {}", d.received_at)?;
    writeln!(out, "first failed at:  {}", opt(&d.first_failed_at))?;
    writeln!(out, "last failed at:   {}", opt(&d.last_failed_at))?;
    writeln!(out, "dead-lettered at: {}", d.dead_lettered_at)?;
    writeln!(out, "traceparent:      {}", opt(&d.traceparent))?;
    match (&d.body, &d.body_base64) {
        (Some(b), _) => writeln!(out, "body:\n{b}")?,
        (None, Some(b)) => writeln!(out, "body (base64, not UTF-8):\n{b}")?,
        (None, None) => writeln!(out, "body: (empty)")?,
    }
    writeln!(out)
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Every dead letter of the fallback file and the configured dead-letter destination, oldest
/// first, and how many records were not dead letters.
pub async fn read_all(
    cfg: &Config,
    from: &ReadFrom,
) -> Result<(Vec<DeadLetter>, usize), DlqCliError> {
    let mut all = Vec::new();
    let mut unreadable = 0;
    let path = &cfg.dead_letter.fallback_file;
    match crate::dlq::read_fallback_file(path) {
        Ok((ok, bad)) => {
            for (line, err) in &bad {
                eprintln!(
                    "warning: {}:{line}: not a dead letter: {err}",
                    path.display()
                );
            }
            unreadable += bad.len();
            all.extend(ok);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(DlqCliError::Read {
                from: path.display().to_string(),
                error: e.to_string(),
            });
        }
    }
    if let Some(sink) = &cfg.dead_letter.sink {
        let sc = cfg.sinks.get(sink).ok_or_else(|| {
            DlqCliError::Config(format!("dead_letter.sink: no sink named {sink}"))
        })?;
        let topic = cfg.dead_letter.topic.as_str();
        let (ok, bad) = read_sink(sink, sc, topic, from).await?;
        unreadable += bad;
        all.extend(ok);
    }
    // Oldest first; RFC 3339 UTC strings of one format sort by time. Stable: same-time keep order.
    all.sort_by(|a, b| a.dead_lettered_at.cmp(&b.dead_lettered_at));
    Ok((all, unreadable))
}

fn decode_payloads(payloads: Vec<Vec<u8>>, from: &str) -> (Vec<DeadLetter>, usize) {
    let mut ok = Vec::with_capacity(payloads.len());
    let mut bad = 0;
    for (i, p) in payloads.iter().enumerate() {
        match serde_json::from_slice::<DeadLetter>(p) {
            Ok(d) => ok.push(d),
            Err(e) => {
                eprintln!("warning: {from}: record {}: not a dead letter: {e}", i + 1);
                bad += 1;
            }
        }
    }
    (ok, bad)
}

// `from` is read by the broker arms only: a build without broker features has none.
#[cfg_attr(
    not(any(feature = "kafka", feature = "rabbitmq", feature = "nats")),
    allow(unused_variables)
)]
async fn read_sink(
    name: &str,
    sc: &SinkConfig,
    topic: &str,
    from: &ReadFrom,
) -> Result<(Vec<DeadLetter>, usize), DlqCliError> {
    let label = format!("sink {name} ({}) topic {topic}", sc.type_name());
    let read_err = |error: String| DlqCliError::Read {
        from: label.clone(),
        error,
    };
    // The payloads read, and how many records were not the sink's own (file sink only).
    let (payloads, unreadable): (Vec<Vec<u8>>, usize) = match sc {
        SinkConfig::File(f) => crate::sinks::file::reader::read(&f.dir, topic).map_err(read_err)?,
        #[cfg(feature = "kafka")]
        SinkConfig::Kafka(k) => (
            tokio::time::timeout(
                from.read_timeout,
                crate::sinks::kafka::reader::read(k, topic),
            )
            .await
            .map_err(|_| read_err(format!("timed out after {:?}", from.read_timeout)))?
            .map_err(read_err)?,
            0,
        ),
        #[cfg(feature = "rabbitmq")]
        SinkConfig::Rabbitmq(r) => {
            let Some(queue) = &from.queue else {
                return Err(DlqCliError::Usage(format!(
                    "the dead-letter sink {name} is RabbitMQ: name the queue bound to exchange {:?} \
                     with routing key {topic:?} to read with --queue",
                    r.exchange
                )));
            };
            (
                tokio::time::timeout(
                    from.read_timeout,
                    crate::sinks::rabbitmq::reader::read(r, queue),
                )
                .await
                .map_err(|_| read_err(format!("timed out after {:?}", from.read_timeout)))?
                .map_err(read_err)?,
                0,
            )
        }
        #[cfg(feature = "nats")]
        SinkConfig::Nats(n) => (
            tokio::time::timeout(
                from.read_timeout,
                crate::sinks::nats::reader::read(name, n, topic),
            )
            .await
            .map_err(|_| read_err(format!("timed out after {:?}", from.read_timeout)))?
            .map_err(read_err)?,
            0,
        ),
        #[allow(unreachable_patterns)]
        other => {
            return Err(DlqCliError::Config(format!(
                "this build cannot read a {} dead-letter sink",
                other.type_name()
            )));
        }
    };
    let (ok, bad) = decode_payloads(payloads, &label);
    Ok((ok, unreadable + bad))
}

// ---------------------------------------------------------------------------------------------
// Replay

#[derive(Debug, Clone)]
enum Mode {
    /// Through the routing table as it is now.
    Routed,
    /// To the sink, topic and key the dead letter failed on.
    Original,
    /// To this sink and topic.
    Explicit(String, String),
}

impl Mode {
    /// From `replay`'s flags: `--to-sink S --to-topic T` (a sink of the config), else
    /// `--original`, else through the routing table.
    fn from_flags(
        cfg: &Config,
        original: bool,
        to_sink: Option<String>,
        to_topic: Option<String>,
    ) -> Result<Self, DlqCliError> {
        match (to_sink, to_topic) {
            (Some(s), Some(t)) => {
                if !cfg.sinks.contains_key(&s) {
                    return Err(DlqCliError::Usage(format!(
                        "--to-sink {s}: no such sink in the config"
                    )));
                }
                Ok(Self::Explicit(s, t))
            }
            (None, None) if original => Ok(Self::Original),
            (None, None) => Ok(Self::Routed),
            _ => Err(DlqCliError::Usage(
                "--to-sink and --to-topic go together".into(),
            )),
        }
    }

    fn dedupe_key(&self, d: &DeadLetter) -> String {
        match self {
            Self::Routed | Self::Explicit(..) => d.event_id.clone(),
            Self::Original => format!(
                "{}\u{0}{}\u{0}{}\u{0}{}",
                d.event_id,
                d.destination.sink.as_deref().unwrap_or(""),
                d.destination.topic.as_deref().unwrap_or(""),
                d.destination.key.as_deref().unwrap_or("")
            ),
        }
    }
}

struct ReplayOpts {
    mode: Mode,
    dry_run: bool,
    rate: Option<f64>,
}

/// Records which (event id, sink, topic) publishes succeeded, and stamps `fondo-replayed-at`.
struct ReplaySink {
    inner: DynSink,
    replayed_at: String,
    ok: Arc<Mutex<HashSet<(String, String, String)>>>,
}

#[async_trait]
impl Sink for ReplaySink {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn system(&self) -> &'static str {
        self.inner.system()
    }

    async fn publish(&self, msg: &Message) -> Result<(), SinkError> {
        let mut msg = msg.clone();
        msg.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case(headers::REPLAYED_AT));
        msg.headers
            .push((headers::REPLAYED_AT.to_owned(), self.replayed_at.clone()));
        let key = (
            msg.event_id.to_string(),
            self.inner.name().to_owned(),
            msg.topic.clone(),
        );
        self.inner.publish(&msg).await?;
        if let Ok(mut ok) = self.ok.lock() {
            ok.insert(key);
        }
        Ok(())
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        self.inner.healthcheck().await
    }

    async fn close(&self, deadline: std::time::Instant) -> Result<(), SinkError> {
        self.inner.close(deadline).await
    }
}

/// The dead-letter sink during a replay: message ids `dlq:…:replay:<time>`.
struct DeadLetterSink {
    inner: DynSink,
    suffix: String,
}

#[async_trait]
impl Sink for DeadLetterSink {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn system(&self) -> &'static str {
        self.inner.system()
    }

    async fn publish(&self, msg: &Message) -> Result<(), SinkError> {
        let mut msg = msg.clone();
        msg.event_id = Arc::from(format!("{}{}", msg.event_id, self.suffix));
        msg.message_id = Arc::from(format!("{}{}", msg.message_id, self.suffix));
        self.inner.publish(&msg).await
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        self.inner.healthcheck().await
    }

    async fn close(&self, deadline: std::time::Instant) -> Result<(), SinkError> {
        self.inner.close(deadline).await
    }
}

/// Paces sends at `rate` per second.
struct Pacer {
    every: Option<Duration>,
    next: tokio::time::Instant,
}

impl Pacer {
    fn new(rate: Option<f64>) -> Self {
        Self {
            every: rate.map(|r| Duration::from_secs_f64(1.0 / r)),
            next: tokio::time::Instant::now(),
        }
    }

    /// Waits for the next slot; false when stopped meanwhile.
    async fn wait(&mut self, stop: &CancellationToken) -> bool {
        if stop.is_cancelled() {
            return false;
        }
        let Some(every) = self.every else { return true };
        let at = self.next;
        self.next = at.max(tokio::time::Instant::now()) + every;
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep_until(at) => true,
        }
    }
}

struct Progress {
    total: usize,
    last: Instant,
}

impl Progress {
    fn tick(&mut self, s: &ReplaySummary, force: bool) {
        if force || self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            eprintln!(
                "replay progress: {}/{} done ({} ok, {} failed, {} refused)",
                s.succeeded + s.failed + s.refused,
                self.total,
                s.succeeded,
                s.failed,
                s.refused
            );
        }
    }
}

fn parse_event(cfg: &Config, d: &DeadLetter) -> Result<Event, String> {
    if d.reason_kind == ReasonKind::Unparseable {
        return Err("it was never parsed as an event (reason_kind unparseable)".into());
    }
    let opts = ParseOptions {
        max_bytes: usize::MAX,
        id_pointer: cfg.event.id_pointer.clone(),
        ..ParseOptions::default()
    };
    let ctx = ParseContext {
        client_id: d.client_id.as_deref(),
        type_hint: d.event_type.as_deref(),
        id_hint: Some(d.event_id.as_str()),
    };
    Event::parse(Bytes::from(d.body_bytes()), &opts, &ctx).map_err(|e| e.to_string())
}

async fn replay(
    plan: &Plan,
    dls: &[DeadLetter],
    opts: &ReplayOpts,
    stop: CancellationToken,
    out: &mut (dyn Write + Send),
) -> Result<ReplaySummary, DlqCliError> {
    let mut summary = ReplaySummary {
        selected: dls.len(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    if dls.is_empty() {
        return Ok(summary);
    }
    if opts.dry_run {
        dry_run(plan, dls, opts, &mut summary, out)?;
        return Ok(summary);
    }
    let rig = Replayer::start(plan, dls, opts).await?;
    let mut progress = Progress {
        total: dls.len(),
        last: Instant::now(),
    };
    match &opts.mode {
        Mode::Routed => {
            rig.routed(plan, dls, opts, &stop, &mut summary, &mut progress)
                .await
        }
        Mode::Original | Mode::Explicit(..) => {
            rig.direct(plan, dls, opts, &stop, &mut summary, &mut progress)
                .await;
        }
    }
    progress.tick(&summary, true);
    Ok(summary)
}

/// Says where each dead letter would go, sending nothing.
fn dry_run(
    plan: &Plan,
    dls: &[DeadLetter],
    opts: &ReplayOpts,
    summary: &mut ReplaySummary,
    out: &mut (dyn Write + Send),
) -> Result<(), DlqCliError> {
    let (cfg, router) = (plan.config(), plan.router());
    for d in dls {
        match &opts.mode {
            Mode::Routed => match parse_event(cfg, d) {
                Err(e) => {
                    summary.refused += 1;
                    writeln!(
                        out,
                        "{}: refused: {e}; give an explicit destination with --to-sink/--to-topic",
                        d.event_id
                    )?;
                }
                Ok(ev) => {
                    let routed = router.route(&ev);
                    if routed.is_unmatched() {
                        writeln!(
                            out,
                            "{}: no route matches now: would be dead-lettered again",
                            d.event_id
                        )?;
                    }
                    for dest in &routed.destinations {
                        writeln!(
                            out,
                            "{}: would send to {}/{} key {} (route {})",
                            d.event_id,
                            dest.sink,
                            dest.topic,
                            dest.key.as_deref().unwrap_or("-"),
                            dest.route
                        )?;
                    }
                    for f in &routed.failures {
                        writeln!(
                            out,
                            "{}: route {} cannot render for it now ({}): would be dead-lettered again",
                            d.event_id, f.route, f.reason
                        )?;
                    }
                }
            },
            Mode::Original => match original_target(d) {
                Some((s, t, k)) => writeln!(
                    out,
                    "{}: would send to {s}/{t} key {} (as it failed: {})",
                    d.event_id,
                    k.unwrap_or("-"),
                    d.reason_kind.as_str()
                )?,
                None => {
                    summary.refused += 1;
                    writeln!(
                        out,
                        "{}: refused: the dead letter names no sink and topic; use --to-sink/--to-topic",
                        d.event_id
                    )?;
                }
            },
            Mode::Explicit(s, t) => {
                writeln!(out, "{}: would send to {s}/{t}", d.event_id)?;
            }
        }
    }
    summary.succeeded = 0;
    Ok(())
}

/// What a replay sends with: the sinks it needs (each wrapped to mark what it replays), and a
/// dead-letter writer for what fails again.
struct Replayer {
    raw_sinks: HashMap<String, DynSink>,
    sinks: HashMap<String, DynSink>,
    writer: Arc<DeadLetterWriter>,
    metrics: Arc<Metrics>,
    ok: Arc<Mutex<HashSet<(String, String, String)>>>,
    drain: Duration,
}

impl Replayer {
    async fn start(
        plan: &Plan,
        dls: &[DeadLetter],
        opts: &ReplayOpts,
    ) -> Result<Self, DlqCliError> {
        let cfg = plan.config();
        let replayed_at = crate::dlq::rfc3339(SystemTime::now());
        let ok = Arc::new(Mutex::new(HashSet::new()));
        // Only the sinks this replay needs are started.
        let mut sub = cfg.clone();
        let needed: Option<HashSet<String>> = match &opts.mode {
            Mode::Routed => None,
            Mode::Original => Some(
                dls.iter()
                    .filter_map(|d| d.destination.sink.clone())
                    .collect(),
            ),
            Mode::Explicit(s, _) => Some(HashSet::from([s.clone()])),
        };
        if let Some(mut needed) = needed {
            if let Some(dl) = &cfg.dead_letter.sink {
                needed.insert(dl.clone());
            }
            sub.sinks.retain(|n, _| needed.contains(n));
        }
        let raw_sinks = app::build_sinks(&sub)
            .await
            .map_err(|e| DlqCliError::Start(e.to_string()))?;
        let metrics = Arc::new(Metrics::new());
        // A dead letter written by this replay gets its own message id, or a deduplicating
        // dead-letter destination (JetStream) would drop it as a copy of the one being replayed.
        let dl_sink = cfg
            .dead_letter
            .sink
            .as_ref()
            .and_then(|n| raw_sinks.get(n).cloned())
            .map(|inner| -> DynSink {
                Arc::new(DeadLetterSink {
                    inner,
                    suffix: format!(":replay:{replayed_at}"),
                })
            });
        let writer = plan.dead_letter_writer(dl_sink, &metrics);
        let sinks: HashMap<String, DynSink> = raw_sinks
            .iter()
            .map(|(n, s)| {
                let w: DynSink = Arc::new(ReplaySink {
                    inner: Arc::clone(s),
                    replayed_at: replayed_at.clone(),
                    ok: Arc::clone(&ok),
                });
                (n.clone(), w)
            })
            .collect();
        Ok(Self {
            raw_sinks,
            sinks,
            writer,
            metrics,
            ok,
            drain: Duration::from_millis(cfg.delivery.drain_timeout_ms.max(1000)),
        })
    }

    /// Through the routing table as it is now, by a dispatcher as the bridge would.
    async fn routed(
        self,
        plan: &Plan,
        dls: &[DeadLetter],
        opts: &ReplayOpts,
        stop: &CancellationToken,
        summary: &mut ReplaySummary,
        progress: &mut Progress,
    ) {
        let Self {
            sinks,
            writer,
            metrics,
            ok,
            drain,
            ..
        } = self;
        let cfg = plan.config();
        let mut pacer = Pacer::new(opts.rate);
        let dispatcher = plan.dispatcher(sinks, Arc::clone(&writer), &metrics);
        let router = dispatcher.router();
        let mut pending = FuturesUnordered::new();
        let mut sent = 0;
        for d in dls {
            if !pacer.wait(stop).await {
                summary.interrupted = true;
                break;
            }
            sent += 1;
            let ev = match parse_event(cfg, d) {
                Ok(ev) => ev,
                Err(e) => {
                    summary.refused += 1;
                    eprintln!(
                        "{}: refused: {e}; give an explicit destination with --to-sink S --to-topic T",
                        d.event_id
                    );
                    continue;
                }
            };
            let (clean, expected) = expectations(&router.route(&ev), &ev, d);
            let (ack, rx) = AckHandle::new();
            let mut env = Envelope::new(ev, ack, SourceKind::Replay);
            env.trace.traceparent = d.traceparent.clone();
            if dispatcher.submit(env).await.is_err() {
                summary.failed += 1;
                continue;
            }
            pending.push(async move { (rx.await, clean, expected) });
            // Collect what finished meanwhile.
            while let Some(Some(r)) = futures::FutureExt::now_or_never(pending.next()) {
                count(summary, &ok, r);
            }
            progress.tick(summary, false);
        }
        summary.not_sent = dls.len() - sent;
        await_pending(&mut pending, &ok, stop, drain, summary, progress).await;
        let end = Instant::now() + drain;
        dispatcher.drain(end).await;
        dispatcher.shutdown(end).await;
    }

    /// Straight to a sink and topic: where each failed (`--original`) or one given.
    async fn direct(
        self,
        plan: &Plan,
        dls: &[DeadLetter],
        opts: &ReplayOpts,
        stop: &CancellationToken,
        summary: &mut ReplaySummary,
        progress: &mut Progress,
    ) {
        let cfg = plan.config();
        let mut pacer = Pacer::new(opts.rate);
        let (sinks, writer, drain) = (&self.sinks, &self.writer, self.drain);
        let policy = RetryPolicy::from_config(cfg);
        let mut sent = 0;
        for d in dls {
            if !pacer.wait(stop).await {
                summary.interrupted = true;
                break;
            }
            sent += 1;
            let target = match &opts.mode {
                Mode::Explicit(s, t) => {
                    Some((s.as_str(), t.as_str(), d.destination.key.as_deref()))
                }
                _ => {
                    if d.reason_kind == ReasonKind::Unparseable {
                        None
                    } else {
                        original_target(d)
                    }
                }
            };
            let Some((sink_name, topic, key)) = target else {
                summary.refused += 1;
                eprintln!(
                    "{}: refused: it names no destination to replay to (reason {}); give one with --to-sink S --to-topic T",
                    d.event_id,
                    d.reason_kind.as_str()
                );
                continue;
            };
            let done = send_direct(
                d,
                sinks.get(sink_name),
                sink_name,
                topic,
                key,
                &policy,
                writer,
                stop,
            )
            .await;
            match done {
                Direct::Ok => summary.succeeded += 1,
                Direct::Failed => summary.failed += 1,
                Direct::Interrupted => {
                    summary.interrupted = true;
                    summary.failed += 1;
                    break;
                }
            }
            progress.tick(summary, false);
        }
        summary.not_sent = dls.len() - sent;
        let end = Instant::now() + drain;
        for s in self.raw_sinks.values() {
            let _ = s.close(end).await;
        }
    }
}

type Outcome = (AckStatus, bool, Vec<(String, String, String)>);

/// What a routed replay of `d` must come to to count as a success: whether its routing is clean
/// (no route failed to render, and some route matched unless it is a heartbeat), and the
/// (event id, sink, topic) publishes that must all succeed.
fn expectations(
    routed: &crate::router::Routed,
    ev: &Event,
    d: &DeadLetter,
) -> (bool, Vec<(String, String, String)>) {
    let clean =
        routed.failures.is_empty() && (!routed.is_unmatched() || ev.event_type.is_heartbeat());
    let expected = routed
        .destinations
        .iter()
        .map(|x| (d.event_id.clone(), x.sink.to_string(), x.topic.clone()))
        .collect();
    (clean, expected)
}

/// Waits for the replays still in flight and counts each. Once `stop` fires, waits `drain` more;
/// what has not finished by then is counted as failed (it stays a dead letter).
async fn await_pending<F: Future<Output = Outcome>>(
    pending: &mut FuturesUnordered<F>,
    ok: &Mutex<HashSet<(String, String, String)>>,
    stop: &CancellationToken,
    drain: Duration,
    summary: &mut ReplaySummary,
    progress: &mut Progress,
) {
    let mut deadline: Option<tokio::time::Instant> = None;
    while !pending.is_empty() {
        let until = deadline
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600 * 24 * 365));
        tokio::select! {
            r = pending.next() => {
                if let Some(r) = r {
                    count(summary, ok, r);
                }
                progress.tick(summary, false);
            }
            _ = stop.cancelled(), if deadline.is_none() => {
                summary.interrupted = true;
                deadline = Some(tokio::time::Instant::now() + drain);
            }
            _ = tokio::time::sleep_until(until) => {
                // Not finished: still dead letters, counted as failed.
                summary.failed += pending.len();
                break;
            }
        }
    }
}

fn count(s: &mut ReplaySummary, ok: &Mutex<HashSet<(String, String, String)>>, r: Outcome) {
    let (status, clean, expected) = r;
    let all_ok = ok
        .lock()
        .map(|set| expected.iter().all(|e| set.contains(e)))
        .unwrap_or(false);
    if status == AckStatus::Delivered && clean && all_ok {
        s.succeeded += 1;
    } else {
        s.failed += 1;
    }
}

fn original_target(d: &DeadLetter) -> Option<(&str, &str, Option<&str>)> {
    match (&d.destination.sink, &d.destination.topic) {
        (Some(s), Some(t)) => Some((s.as_str(), t.as_str(), d.destination.key.as_deref())),
        _ => None,
    }
}

enum Direct {
    Ok,
    Failed,
    Interrupted,
}

#[allow(clippy::too_many_arguments)]
async fn send_direct(
    d: &DeadLetter,
    sink: Option<&DynSink>,
    sink_name: &str,
    topic: &str,
    key: Option<&str>,
    policy: &RetryPolicy,
    writer: &DeadLetterWriter,
    stop: &CancellationToken,
) -> Direct {
    let mut failures = Failures::default();
    let (kind, reason) = match sink {
        None => (
            ReasonKind::NoSink,
            format!("replay: sink {sink_name} is not configured"),
        ),
        Some(sink) => {
            let msg = direct_message(d, topic, key);
            match publish_with_retries(sink, &msg, policy, stop, &mut failures).await {
                Published::Ok => return Direct::Ok,
                Published::Interrupted => return Direct::Interrupted,
                Published::GaveUp(kind, reason) => (kind, reason),
            }
        }
    };
    let dest = crate::dlq::IntendedDestination {
        route: d.destination.route.clone(),
        sink: Some(sink_name.to_owned()),
        topic: Some(topic.to_owned()),
        key: key.map(str::to_owned),
    };
    dead_letter_again(d, dest, kind, reason, &failures, writer).await;
    Direct::Failed
}

/// The message a direct replay sends: the dead letter's body and the bridge's headers, under the
/// message id of the route it failed on.
fn direct_message(d: &DeadLetter, topic: &str, key: Option<&str>) -> Message {
    let mut h = vec![(headers::EVENT_ID.to_owned(), d.event_id.clone())];
    if let Some(t) = &d.event_type {
        h.push((headers::EVENT_TYPE.to_owned(), t.clone()));
    }
    if let Some(c) = &d.client_id {
        h.push((headers::CLIENT_ID.to_owned(), c.clone()));
    }
    h.push((
        headers::SOURCE.to_owned(),
        SourceKind::Replay.as_str().to_owned(),
    ));
    if let Some(tp) = &d.traceparent {
        h.push((headers::TRACEPARENT.to_owned(), tp.clone()));
    }
    Message {
        topic: topic.to_owned(),
        key: key.map(str::to_owned),
        headers: h,
        payload: Bytes::from(d.body_bytes()),
        event_id: Arc::from(d.event_id.as_str()),
        message_id: Arc::from(crate::event::message_id(
            &d.event_id,
            d.destination.route.as_deref().unwrap_or("-"),
            topic,
        )),
        // A dead letter's body may be the malformed input that made it one.
        payload_is_json: false,
        pace: crate::group_commit::Pace::Prompt,
        cloudevent: None,
    }
}

/// How [`publish_with_retries`] ended.
enum Published {
    Ok,
    /// A fatal error, or retries used up: the reason to dead-letter it with.
    GaveUp(ReasonKind, String),
    /// Stopped while waiting to retry.
    Interrupted,
}

/// Publishes `msg`, retrying retriable errors with `policy`'s backoff; every failure is recorded
/// in `failures`.
async fn publish_with_retries(
    sink: &DynSink,
    msg: &Message,
    policy: &RetryPolicy,
    stop: &CancellationToken,
    failures: &mut Failures,
) -> Published {
    let started = Instant::now();
    let mut delay = policy.initial;
    loop {
        failures.attempts += 1;
        // The ReplaySink adds fondo-replayed-at.
        let e = match sink.publish(msg).await {
            Ok(()) => return Published::Ok,
            Err(e) => e,
        };
        failures.record(&e.to_string());
        let out_of_time = policy.max_elapsed.is_some_and(|m| started.elapsed() >= m);
        if !e.is_retriable() {
            return Published::GaveUp(ReasonKind::Fatal, format!("replay: {e}"));
        }
        if failures.attempts >= policy.max_attempts || out_of_time {
            return Published::GaveUp(
                ReasonKind::Exhausted,
                format!("replay: gave up after {} attempts: {e}", failures.attempts),
            );
        }
        tokio::select! {
            _ = stop.cancelled() => return Published::Interrupted,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(policy.max);
    }
}

/// Writes `d` again as a dead letter of this replay, with the new destination, reason and
/// failures. When that fails too, says so: the old dead letter is still there.
async fn dead_letter_again(
    d: &DeadLetter,
    dest: crate::dlq::IntendedDestination,
    kind: ReasonKind,
    reason: String,
    failures: &Failures,
    writer: &DeadLetterWriter,
) {
    let mut again = d.clone();
    again.source = SourceKind::Replay.as_str().to_owned();
    again.destination = dest;
    again.reason_kind = kind;
    again.reason = reason;
    again.attempts = failures.attempts;
    again.first_error = failures.first_error.clone();
    again.last_error = failures.last_error.clone();
    again.first_failed_at = failures.first_failed_at.map(crate::dlq::rfc3339);
    again.last_failed_at = failures.last_failed_at.map(crate::dlq::rfc3339);
    again.dead_lettered_at = crate::dlq::rfc3339(SystemTime::now());
    if let Err(e) = writer.write(&again).await {
        eprintln!(
            "{}: failed again and the new dead letter could be written nowhere ({e}); the old one is still there",
            d.event_id
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_rates() {
        assert!(crate::router::wildcard_match("order.*", "order.update"));
        assert!(crate::router::wildcard_match("*.delete", "account.delete"));
        assert!(!crate::router::wildcard_match("order.*", "account.update"));
        assert!(crate::router::wildcard_match("*", "x"));
        assert!(crate::router::wildcard_match("o?der.*e", "order.update"));
        assert_eq!(parse_rate("50/s"), Ok(50.0));
        assert_eq!(parse_rate("2"), Ok(2.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_reason("no_sink"), Ok(ReasonKind::NoSink));
        assert!(parse_reason("nope").is_err());
        assert!(parse_time("1h").is_ok());
        assert!(parse_time("2026-01-02T03:04:05Z").is_ok());
        assert!(parse_time("yesterday").is_err());
    }
}
