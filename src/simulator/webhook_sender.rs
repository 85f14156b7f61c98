//! The simulated webhook sender: Fondo's side of webhooks, for demos, tests and benchmarks.
//!
//! It POSTs JSON events (from the [`Generator`], or bodies it is given) to a URL, signed the
//! Standard Webhooks way or with a plain HMAC, and retries the way a webhook provider does: any
//! non-2xx answer or transport error is retried with [`crate::backoff`], up to a number
//! of attempts, always with the same message id (and a fresh timestamp and signature). A bounded
//! number of requests is in flight at once, optionally paced to a rate. Every delivery is recorded:
//! its attempts, the status of each, whether it was acknowledged (2xx), and its latency.
//!
//! Use it from the CLI ([`WebhookSendArgs`] + [`run`]) or from code ([`WebhookSender`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt as _;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use sha2::{Sha256, Sha512};

use crate::simulator::generator::Generator;

/// Signs `body` the Standard Webhooks way and returns the `webhook-signature` value `v1,<base64>`.
///
/// `secret` is `whsec_<base64>` (the prefix is optional); a secret that is not base64 after the
/// prefix is used as its raw UTF-8 bytes (so a misconfigured secret yields a wrong signature, never
/// a panic).
pub fn sign_standard(secret: &str, id: &str, ts: i64, body: &[u8]) -> String {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap_or_else(|_| secret.as_bytes().to_vec());
    let tag = hmac_tag::<Hmac<Sha256>>(
        &key,
        &[id.as_bytes(), b".", ts.to_string().as_bytes(), b".", body],
    );
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

fn hmac_tag<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    match <M as KeyInit>::new_from_slice(key) {
        Ok(mut m) => {
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Which signature scheme the sender uses (CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SignScheme {
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`.
    #[default]
    StandardWebhooks,
    /// A plain HMAC in one header.
    Hmac,
    /// Unsigned.
    None,
}

/// HMAC hash function (CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HmacHash {
    /// HMAC-SHA256.
    #[default]
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

/// How an HMAC tag is written (CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TagEncoding {
    /// Lowercase hex.
    #[default]
    Hex,
    /// Standard base64 with padding.
    Base64,
}

/// How requests are signed.
#[derive(Clone)]
pub enum Signer {
    /// Standard Webhooks with this (decoded) key.
    StandardWebhooks {
        /// The raw key (the base64 part of `whsec_…`, decoded).
        key: Vec<u8>,
    },
    /// A plain HMAC in `header`, over `{body}` or, with a timestamp header, `{timestamp}.{body}`.
    Hmac {
        /// The raw key (the secret's UTF-8 bytes).
        key: Vec<u8>,
        /// The header carrying the tag.
        header: HeaderName,
        /// SHA-256 or SHA-512.
        hash: HmacHash,
        /// Hex or base64.
        encoding: TagEncoding,
        /// Written before the tag, e.g. `sha256=`.
        prefix: String,
        /// When set, the timestamp goes in this header and is signed as `{timestamp}.{body}`.
        timestamp_header: Option<HeaderName>,
    },
    /// No signature.
    None,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::StandardWebhooks { .. } => "Signer::StandardWebhooks(***)",
            Self::Hmac { .. } => "Signer::Hmac(***)",
            Self::None => "Signer::None",
        })
    }
}

impl Signer {
    /// A Standard Webhooks signer for a `whsec_<base64>` secret.
    pub fn standard(secret: &str) -> Result<Self, SendError> {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| SendError::Secret)?;
        if key.is_empty() {
            return Err(SendError::Secret);
        }
        Ok(Self::StandardWebhooks { key })
    }

    /// The signature headers for one attempt.
    pub fn headers(&self, id: &str, ts: i64, body: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(3);
        match self {
            Self::StandardWebhooks { key } => {
                let tag = hmac_tag::<Hmac<Sha256>>(
                    key,
                    &[id.as_bytes(), b".", ts.to_string().as_bytes(), b".", body],
                );
                let sig = format!(
                    "v1,{}",
                    base64::engine::general_purpose::STANDARD.encode(tag)
                );
                push(&mut out, HeaderName::from_static("webhook-id"), id);
                push(
                    &mut out,
                    HeaderName::from_static("webhook-timestamp"),
                    &ts.to_string(),
                );
                push(&mut out, HeaderName::from_static("webhook-signature"), &sig);
            }
            Self::Hmac {
                key,
                header,
                hash,
                encoding,
                prefix,
                timestamp_header,
            } => {
                let ts_s = ts.to_string();
                let parts: Vec<&[u8]> = match timestamp_header {
                    Some(_) => vec![ts_s.as_bytes(), b".", body],
                    None => vec![body],
                };
                let tag = match hash {
                    HmacHash::Sha256 => hmac_tag::<Hmac<Sha256>>(key, &parts),
                    HmacHash::Sha512 => hmac_tag::<Hmac<Sha512>>(key, &parts),
                };
                let enc = match encoding {
                    TagEncoding::Hex => hex::encode(tag),
                    TagEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(tag),
                };
                push(&mut out, header.clone(), &format!("{prefix}{enc}"));
                if let Some(h) = timestamp_header {
                    push(&mut out, h.clone(), &ts_s);
                }
                // A provider id is useful for deduplication even without Standard Webhooks.
                push(&mut out, HeaderName::from_static("webhook-id"), id);
            }
            Self::None => push(&mut out, HeaderName::from_static("webhook-id"), id),
        }
        out
    }
}

fn push(out: &mut Vec<(HeaderName, HeaderValue)>, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        out.push((name, v));
    }
}

/// Why the sender could not start.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The secret is missing or not `whsec_<base64>`.
    #[error("the webhook secret is missing or not a Standard Webhooks secret (`whsec_<base64>`)")]
    Secret,
    /// The target URL is not a URL.
    #[error("invalid target URL: {0}")]
    Url(String),
    /// A header name given is invalid.
    #[error("invalid header name {0:?}")]
    Header(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
    /// A body file cannot be read, or the record file cannot be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// How the sender behaves.
#[derive(Debug, Clone)]
pub struct SenderOptions {
    /// Where to POST.
    pub url: String,
    /// How to sign.
    pub signer: Signer,
    /// Requests in flight at once (at least 1).
    pub concurrency: usize,
    /// Attempts per event, the first included (at least 1).
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles each retry, with jitter.
    pub backoff_initial: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
    /// Per-request timeout (a timeout counts as a failed attempt).
    pub request_timeout: Duration,
    /// Speak HTTP/2 without TLS from the first byte (h2c prior knowledge).
    pub http2_prior_knowledge: bool,
    /// Wait at least the answer's `Retry-After` (capped at `backoff_max`) before retrying.
    pub honor_retry_after: bool,
}

impl SenderOptions {
    /// Defaults close to a webhook provider's, for `url` and `signer`.
    pub fn new(url: impl Into<String>, signer: Signer) -> Self {
        Self {
            url: url.into(),
            signer,
            concurrency: 16,
            max_attempts: 8,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            http2_prior_knowledge: false,
            honor_retry_after: false,
        }
    }
}

/// One event to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The message id (`webhook-id`), the same on every attempt.
    pub id: String,
    /// The JSON body.
    pub body: Bytes,
    /// Extra headers (e.g. `traceparent`, an event type header).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Outgoing {
    /// An event with no extra headers.
    pub fn new(id: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self {
            id: id.into(),
            body: body.into(),
            headers: Vec::new(),
        }
    }
}

/// What became of one event.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Delivery {
    /// The message id.
    pub id: String,
    /// Attempts made.
    pub attempts: u32,
    /// The HTTP status of each attempt; 0 for a transport error or timeout.
    pub statuses: Vec<u16>,
    /// Whether an attempt got a 2xx.
    pub acknowledged: bool,
    /// The last transport error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// From the first attempt's start to the final answer, in seconds.
    pub latency_s: f64,
    /// The final attempt's latency alone, in seconds.
    pub last_attempt_s: f64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SendReport {
    /// Events sent.
    pub sent: usize,
    /// Events that got a 2xx.
    pub acknowledged: usize,
    /// Events that never did, after every attempt.
    pub failed: usize,
    /// HTTP attempts in all.
    pub attempts: u64,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
    /// Every delivery, in completion order.
    #[serde(skip)]
    pub deliveries: Vec<Delivery>,
}

impl SendReport {
    /// Acknowledged events per second over the run.
    pub fn rate(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.acknowledged as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    /// The `q` quantile (0..=1) of final-attempt latencies of acknowledged events, in seconds.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        let mut l: Vec<f64> = self
            .deliveries
            .iter()
            .filter(|d| d.acknowledged)
            .map(|d| d.last_attempt_s)
            .collect();
        if l.is_empty() {
            return None;
        }
        l.sort_by(f64::total_cmp);
        let idx = ((l.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        l.get(idx).copied()
    }

    /// One line for humans.
    pub fn summary(&self) -> String {
        format!(
            "sent {} acknowledged {} failed {} attempts {} in {:.2}s ({:.0}/s), latency p50 {:.2} ms p99 {:.2} ms",
            self.sent,
            self.acknowledged,
            self.failed,
            self.attempts,
            self.elapsed_s,
            self.rate(),
            self.latency_quantile(0.5).unwrap_or(0.0) * 1e3,
            self.latency_quantile(0.99).unwrap_or(0.0) * 1e3,
        )
    }
}

/// Sends signed webhooks with retries. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    url: reqwest::Url,
    opts: SenderOptions,
}

impl WebhookSender {
    /// Builds the HTTP client.
    pub fn new(opts: SenderOptions) -> Result<Self, SendError> {
        let url = reqwest::Url::parse(&opts.url).map_err(|e| SendError::Url(e.to_string()))?;
        let mut b = reqwest::Client::builder()
            .timeout(opts.request_timeout)
            .pool_max_idle_per_host(opts.concurrency.max(1))
            .no_proxy();
        if opts.http2_prior_knowledge {
            b = b.http2_prior_knowledge();
        }
        let client = b.build().map_err(|e| SendError::Client(e.to_string()))?;
        Ok(Self { client, url, opts })
    }

    /// The options in use.
    pub fn options(&self) -> &SenderOptions {
        &self.opts
    }

    /// Sends one event, retrying until a 2xx or `max_attempts`.
    pub async fn send(&self, out: &Outgoing) -> Delivery {
        let started = Instant::now();
        let mut statuses = Vec::new();
        let mut last_error = None;
        let mut backoff =
            crate::backoff::Backoff::new(self.opts.backoff_initial, self.opts.backoff_max);
        let max_attempts = self.opts.max_attempts.max(1);
        let mut last_attempt = Duration::ZERO;
        for attempt in 1..=max_attempts {
            let t0 = Instant::now();
            let ts = unix_now();
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            for (k, v) in self.opts.signer.headers(&out.id, ts, &out.body) {
                headers.insert(k, v);
            }
            for (k, v) in &out.headers {
                headers.append(k.clone(), v.clone());
            }
            let result = self
                .client
                .post(self.url.clone())
                .headers(headers)
                .body(out.body.clone())
                .send()
                .await;
            let mut retry_after = None;
            match result {
                Ok(resp) => {
                    let status = resp.status();
                    retry_after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    // Read the (short) body so the connection can be reused.
                    let _ = resp.bytes().await;
                    last_attempt = t0.elapsed();
                    statuses.push(status.as_u16());
                    if status.is_success() {
                        return Delivery {
                            id: out.id.clone(),
                            attempts: attempt,
                            statuses,
                            acknowledged: true,
                            last_error,
                            latency_s: started.elapsed().as_secs_f64(),
                            last_attempt_s: last_attempt.as_secs_f64(),
                        };
                    }
                }
                Err(e) => {
                    last_attempt = t0.elapsed();
                    statuses.push(0);
                    last_error = Some(e.to_string());
                }
            }
            if attempt < max_attempts {
                let mut wait = backoff.next_delay();
                if self.opts.honor_retry_after
                    && let Some(ra) = retry_after
                {
                    wait = wait.max(ra.min(self.opts.backoff_max));
                }
                tokio::time::sleep(wait).await;
            }
        }
        Delivery {
            id: out.id.clone(),
            attempts: max_attempts,
            statuses,
            acknowledged: false,
            last_error,
            latency_s: started.elapsed().as_secs_f64(),
            last_attempt_s: last_attempt.as_secs_f64(),
        }
    }

    /// Sends every event, `concurrency` at a time, paced to `rate` events/s when given.
    pub async fn send_all(
        &self,
        events: impl IntoIterator<Item = Outgoing>,
        rate: Option<f64>,
    ) -> SendReport {
        let started = Instant::now();
        let tick = rate
            .filter(|r| *r > 0.0 && r.is_finite())
            .map(|r| Duration::from_secs_f64(1.0 / r));
        let deliveries: Vec<Delivery> = futures::stream::iter(events.into_iter().enumerate())
            .then(|(i, out)| async move {
                if let Some(tick) = tick {
                    let at = started + tick.mul_f64(i as f64);
                    tokio::time::sleep_until(at.into()).await;
                }
                out
            })
            .map(|out| async move { self.send(&out).await })
            .buffer_unordered(self.opts.concurrency.max(1))
            .collect()
            .await;
        let acknowledged = deliveries.iter().filter(|d| d.acknowledged).count();
        SendReport {
            sent: deliveries.len(),
            acknowledged,
            failed: deliveries.len() - acknowledged,
            attempts: deliveries.iter().map(|d| u64::from(d.attempts)).sum(),
            elapsed_s: started.elapsed().as_secs_f64(),
            deliveries,
        }
    }
}

/// The current time in Unix seconds.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `fondo-bridge simulate webhooks`: POST signed events to a webhook endpoint.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookSendArgs {
    /// The endpoint to POST to.
    #[arg(long, default_value = "http://127.0.0.1:8080/fondo/webhooks/callback")]
    pub url: String,
    /// Signature scheme.
    #[arg(long, value_enum, default_value_t = SignScheme::StandardWebhooks)]
    pub scheme: SignScheme,
    /// The shared secret (`whsec_<base64>` for standard-webhooks; any string for hmac).
    #[arg(long, env = "FONDO_SIM_WEBHOOK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// HMAC: the signature header.
    #[arg(long, default_value = "x-fondo-signature")]
    pub hmac_header: String,
    /// HMAC: hash function.
    #[arg(long, value_enum, default_value_t = HmacHash::Sha256)]
    pub hmac_hash: HmacHash,
    /// HMAC: tag encoding.
    #[arg(long, value_enum, default_value_t = TagEncoding::Hex)]
    pub hmac_encoding: TagEncoding,
    /// HMAC: written before the tag, e.g. `sha256=`.
    #[arg(long, default_value = "")]
    pub hmac_prefix: String,
    /// HMAC: send the timestamp in this header and sign `{timestamp}.{body}`.
    #[arg(long)]
    pub hmac_timestamp_header: Option<String>,
    /// Events to generate (ignored with --body-file).
    #[arg(long, default_value_t = 1000)]
    pub events: u64,
    /// Send these files' contents (one event each) instead of generated events.
    #[arg(long)]
    pub body_file: Vec<PathBuf>,
    /// Events per second; 0 = as fast as the concurrency allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Attempts per event, the first included.
    #[arg(long, default_value_t = 8)]
    pub max_attempts: u32,
    /// First retry delay; doubles per retry, with jitter.
    #[arg(long, default_value_t = 500)]
    pub backoff_initial_ms: u64,
    /// Retry delay cap.
    #[arg(long, default_value_t = 60_000)]
    pub backoff_max_ms: u64,
    /// Per-request timeout.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Honour the answer's `Retry-After` (capped at the backoff cap).
    #[arg(long)]
    pub honor_retry_after: bool,
    /// Use HTTP/2 without TLS (prior knowledge).
    #[arg(long)]
    pub http2: bool,
    /// Generator seed (same seed, same events and message ids).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The client id events are generated for.
    #[arg(long, default_value = "49ad7378-121c-4a53-9894-dfd14a7b4877")]
    pub client_id: String,
    /// Objects alive at once in the generator.
    #[arg(long, default_value_t = 100)]
    pub objects: usize,
    /// Pad bodies to about this many bytes (0 = natural size).
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// Write every delivery as a JSON line to this file.
    #[arg(long)]
    pub record: Option<PathBuf>,
}

impl WebhookSendArgs {
    /// The signer these arguments describe.
    pub fn signer(&self) -> Result<Signer, SendError> {
        match self.scheme {
            SignScheme::None => Ok(Signer::None),
            SignScheme::StandardWebhooks => {
                Signer::standard(self.secret.as_deref().ok_or(SendError::Secret)?)
            }
            SignScheme::Hmac => {
                let key = self
                    .secret
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .ok_or(SendError::Secret)?
                    .as_bytes()
                    .to_vec();
                let name = |n: &str| {
                    HeaderName::from_bytes(n.trim().as_bytes())
                        .map_err(|_| SendError::Header(n.to_owned()))
                };
                Ok(Signer::Hmac {
                    key,
                    header: name(&self.hmac_header)?,
                    hash: self.hmac_hash,
                    encoding: self.hmac_encoding,
                    prefix: self.hmac_prefix.clone(),
                    timestamp_header: self
                        .hmac_timestamp_header
                        .as_deref()
                        .map(name)
                        .transpose()?,
                })
            }
        }
    }

    /// The sender options these arguments describe.
    pub fn options(&self) -> Result<SenderOptions, SendError> {
        Ok(SenderOptions {
            url: self.url.clone(),
            signer: self.signer()?,
            concurrency: self.concurrency.max(1),
            max_attempts: self.max_attempts.max(1),
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms.max(self.backoff_initial_ms)),
            request_timeout: Duration::from_millis(self.timeout_ms.max(1)),
            http2_prior_knowledge: self.http2,
            honor_retry_after: self.honor_retry_after,
        })
    }

    /// The events to send: the body files, or `events` generated ones with ids `msg_<seed>_<n>`.
    pub fn outgoing(&self) -> Result<Vec<Outgoing>, SendError> {
        if !self.body_file.is_empty() {
            return self
                .body_file
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    std::fs::read(p)
                        .map(|b| Outgoing::new(format!("msg_file_{}_{i}", self.seed), b))
                        .map_err(|source| SendError::Io {
                            path: p.clone(),
                            source,
                        })
                })
                .collect();
        }
        let mut g = Generator::new(self.seed, &self.client_id, self.objects, self.payload_bytes);
        Ok((0..self.events)
            .map(|n| Outgoing::new(format!("msg_{}_{n}", self.seed), g.next_event()))
            .collect())
    }
}

/// Runs the sender from CLI arguments: sends, writes `--record` if asked, logs and returns the
/// report (whose [`SendReport::summary`] the CLI prints).
pub async fn run(args: WebhookSendArgs) -> Result<SendReport, SendError> {
    let sender = WebhookSender::new(args.options()?)?;
    let events = args.outgoing()?;
    tracing::info!(
        url = %args.url,
        events = events.len(),
        concurrency = args.concurrency,
        "sending webhooks"
    );
    let rate = (args.rate > 0.0).then_some(args.rate);
    let report = sender.send_all(events, rate).await;
    if let Some(path) = &args.record {
        let mut out = Vec::new();
        for d in &report.deliveries {
            if let Ok(line) = serde_json::to_vec(d) {
                out.extend_from_slice(&line);
                out.push(b'\n');
            }
        }
        tokio::fs::write(path, out)
            .await
            .map_err(|source| SendError::Io {
                path: path.clone(),
                source,
            })?;
    }
    tracing::info!(
        sent = report.sent,
        acknowledged = report.acknowledged,
        failed = report.failed,
        attempts = report.attempts,
        "webhooks sent"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn standard_reference_vector() {
        assert_eq!(
            sign_standard(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let s = Signer::standard("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let h = s.headers(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(h[2].1, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(format!("{s:?}").contains("***"));
        assert!(Signer::standard("whsec_!!").is_err());
    }

    #[test]
    fn cli_args_build_generated_events() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: WebhookSendArgs,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--scheme",
            "hmac",
            "--secret",
            "s",
            "--hmac-prefix",
            "sha256=",
            "--events",
            "3",
        ])
        .unwrap();
        let out = cli.args.outgoing().unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].id, "msg_1_0");
        assert!(serde_json::from_slice::<serde_json::Value>(&out[0].body).is_ok());
        let h = cli.args.signer().unwrap().headers("m", 1, b"{}");
        assert_eq!(h[0].0, "x-fondo-signature");
        assert!(h[0].1.to_str().unwrap().starts_with("sha256="));
    }
}
