//! Webhook signature verification, with a type state so that only verified bodies can be routed.
//!
//! A request body starts as a [`Payload<Unverified>`], which exposes nothing of its content. Only
//! [`Verifier::verify`] turns it into a [`Payload<Verified>`], and only a verified payload hands its
//! bytes out ([`Payload::into_body`]). The webhook handler builds events from verified payloads
//! alone, so an unverified body cannot reach the router by mistake.
//!
//! Schemes:
//! - **Standard Webhooks** (<https://www.standardwebhooks.com/>): headers `webhook-id`,
//!   `webhook-timestamp` (Unix seconds) and `webhook-signature` (space-separated `v1,<base64>`
//!   entries, any one matching passes); secrets `whsec_<base64>` (the prefix is optional); signed
//!   content `{id}.{timestamp}.{body}`; HMAC-SHA256.
//! - **HMAC**: one configured header holding `<prefix><hex or base64 MAC>` (several may be given,
//!   separated by commas or spaces); SHA-256 or SHA-512 over `{body}` or `{timestamp}.{body}`, the
//!   timestamp coming from a configured header. Secrets are used as their UTF-8 bytes.
//! - **None**: accepts everything (configuration allows it only with `insecure: true`).
//!
//! Several secrets may be active at once (rotation): a signature made with any of them passes.
//! Tags are compared in constant time. A signature, timestamp or id header that appears more than
//! once is refused, so a proxy or attacker cannot smuggle a second value past the check. Errors
//! name what was wrong, never a secret, a signature or any part of the body.

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use axum::http::{HeaderMap, HeaderName};
use base64::Engine as _;
use bytes::Bytes;
use hmac::digest::{CtOutput, Output};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Sha256, Sha512};

use crate::config::{HmacAlgorithm, Secret, SignatureConfig, SignatureEncoding, read_secret};

/// `webhook-id`, the Standard Webhooks message id (stable across retries).
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// `webhook-timestamp`, Unix seconds, as a decimal integer.
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// `webhook-signature`, space-separated `v1,<base64>` entries.
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// The Standard Webhooks secret prefix.
pub const WHSEC_PREFIX: &str = "whsec_";

/// At most this many signature entries are considered in one header (bounds the work per request).
const MAX_SIGNATURES: usize = 32;
/// A message id longer than this is refused.
const MAX_ID_LEN: usize = 256;

/// The state of a payload whose signature has not been checked.
#[derive(Debug)]
pub enum Unverified {}

/// The state of a payload whose signature was checked and matched.
#[derive(Debug)]
pub enum Verified {}

/// A webhook body in a verification state. Only `Payload<Verified>` gives its bytes out.
pub struct Payload<S> {
    body: Bytes,
    webhook_id: Option<String>,
    timestamp: Option<i64>,
    _state: PhantomData<S>,
}

impl<S> fmt::Debug for Payload<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload")
            .field("len", &self.body.len())
            .field("webhook_id", &self.webhook_id)
            .field("timestamp", &self.timestamp)
            .finish()
    }
}

impl Payload<Unverified> {
    /// Wraps a received body; nothing can be read from it until it is verified.
    pub fn new(body: Bytes) -> Self {
        Self {
            body,
            webhook_id: None,
            timestamp: None,
            _state: PhantomData,
        }
    }

    /// The body's size in bytes (the only thing an unverified payload tells).
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }
}

impl Payload<Verified> {
    /// The verified body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The verified body, by value.
    pub fn into_body(self) -> Bytes {
        self.body
    }

    /// The signed message id (Standard Webhooks only).
    pub fn webhook_id(&self) -> Option<&str> {
        self.webhook_id.as_deref()
    }

    /// The signed timestamp, Unix seconds (Standard Webhooks, and HMAC with a timestamp header).
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }
}

/// Why a request's signature was refused. Says what was wrong, never a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A required header (`id`, `timestamp`, `signature`) is absent.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A header that must appear once appears more than once.
    #[error("{0} header appears more than once")]
    DuplicateHeader(&'static str),
    /// A header is present but cannot be read (not ASCII, not a number, empty, too long).
    #[error("malformed {0} header")]
    MalformedHeader(&'static str),
    /// The signed timestamp is further from now than the tolerance.
    #[error("timestamp outside the tolerance")]
    TimestampOutOfTolerance,
    /// No signature in the request matches any active secret.
    #[error("no signature matches")]
    Mismatch,
    /// No secret is active (the secrets were revoked): nothing can be verified.
    #[error("no webhook secret is active")]
    NoSecret,
}

impl SignatureError {
    /// A short stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "signature_missing",
            Self::DuplicateHeader(_) => "signature_duplicate_header",
            Self::MalformedHeader(_) => "signature_malformed",
            Self::TimestampOutOfTolerance => "signature_timestamp",
            Self::Mismatch => "signature_mismatch",
            Self::NoSecret => "signature_no_secret",
        }
    }
}

/// Why a verifier could not be built from configuration. Never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Neither `secrets` nor `secrets_file` yields a secret.
    #[error("no webhook secret configured (set `secrets` from the environment or `secrets_file`)")]
    Empty,
    /// A Standard Webhooks secret is not base64 (after the optional `whsec_` prefix).
    #[error(
        "webhook secret #{index} is not a Standard Webhooks secret (`whsec_` followed by base64)"
    )]
    BadStandardSecret {
        /// 1-based position among all configured secrets (inline first, then file lines).
        index: usize,
    },
    /// The secrets file cannot be read.
    #[error("cannot read webhook secrets file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A configured header name is not a valid HTTP header name.
    #[error("invalid header name {0:?} in the webhook signature config")]
    HeaderName(String),
}

#[derive(Clone)]
enum HmacKeys {
    Sha256(Vec<Hmac<Sha256>>),
    Sha512(Vec<Hmac<Sha512>>),
}

#[derive(Clone)]
enum Scheme {
    Standard {
        keys: Vec<Hmac<Sha256>>,
    },
    Hmac {
        header: HeaderName,
        keys: HmacKeys,
        encoding: SignatureEncoding,
        prefix: String,
        timestamp_header: Option<HeaderName>,
        sign_timestamp: bool,
    },
    None,
}

/// Checks webhook signatures for one configured scheme and set of secrets. Cheap to clone; holds
/// the keyed MAC states (the secrets themselves are not kept).
#[derive(Clone)]
pub struct Verifier {
    scheme: Scheme,
    tolerance_s: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, secrets) = match &self.scheme {
            Scheme::Standard { keys } => ("standard-webhooks", keys.len()),
            Scheme::Hmac {
                keys: HmacKeys::Sha256(k),
                ..
            } => ("hmac-sha256", k.len()),
            Scheme::Hmac {
                keys: HmacKeys::Sha512(k),
                ..
            } => ("hmac-sha512", k.len()),
            Scheme::None => ("none", 0),
        };
        f.debug_struct("Verifier")
            .field("scheme", &scheme)
            .field("secrets", &secrets)
            .field("tolerance_s", &self.tolerance_s)
            .finish()
    }
}

/// The secrets of a scheme: inline ones first, then the lines of `secrets_file` (blank lines and
/// lines starting with `#` skipped).
pub fn load_secrets(inline: &[Secret], file: Option<&Path>) -> Result<Vec<Secret>, SecretError> {
    let mut out: Vec<Secret> = inline
        .iter()
        .filter(|s| !s.expose().trim().is_empty())
        .map(|s| Secret(s.expose().trim().to_owned()))
        .collect();
    if let Some(path) = file {
        let text = read_secret(None, Some(path)).map_err(|source| SecretError::File {
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(text) = text {
            out.extend(
                text.expose()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|l| Secret(l.to_owned())),
            );
        }
    }
    Ok(out)
}

/// Decodes a Standard Webhooks secret: `whsec_` (optional) followed by base64.
pub fn decode_standard_secret(secret: &str) -> Option<Vec<u8>> {
    let b64 = secret.strip_prefix(WHSEC_PREFIX).unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .or_else(|| {
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(b64)
                .ok()
        })?;
    (!key.is_empty()).then_some(key)
}

fn header_name(name: &str) -> Result<HeaderName, SecretError> {
    HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| SecretError::HeaderName(name.to_owned()))
}

/// What re-reading the secrets gives (see [`Verifier::reload`]).
#[derive(Debug)]
pub enum Reloaded {
    /// Secrets to check signatures with.
    Secrets(Verifier),
    /// No secret is left: a verifier that refuses every request.
    Revoked(Verifier),
}

impl Verifier {
    /// Builds a verifier from configuration, reading `secrets_file` if one is set. No secret at
    /// all is an error ([`SecretError::Empty`]).
    pub fn from_config(cfg: &SignatureConfig) -> Result<Self, SecretError> {
        let secrets = match cfg {
            SignatureConfig::StandardWebhooks {
                secrets,
                secrets_file,
                ..
            }
            | SignatureConfig::Hmac {
                secrets,
                secrets_file,
                ..
            } => load_secrets(secrets, secrets_file.as_deref())?,
            SignatureConfig::None { .. } => return Ok(Self::insecure_none()),
        };
        if secrets.is_empty() {
            return Err(SecretError::Empty);
        }
        Self::with_secrets(cfg, &secrets)
    }

    /// Reads the secrets again, after `secrets_file` changed. Revocation is not an error: a
    /// secrets file that holds no secret (empty, only comments) or is gone leaves the inline
    /// `secrets` alone, and with none of those either, a verifier that refuses every request
    /// ([`SignatureError::NoSecret`]). A file that cannot be read otherwise, or holds a malformed
    /// secret, is an error: the caller keeps the secrets in use.
    pub fn reload(cfg: &SignatureConfig) -> Result<Reloaded, SecretError> {
        let secrets = match cfg {
            SignatureConfig::StandardWebhooks {
                secrets,
                secrets_file,
                ..
            }
            | SignatureConfig::Hmac {
                secrets,
                secrets_file,
                ..
            } => match load_secrets(secrets, secrets_file.as_deref()) {
                Err(SecretError::File { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    load_secrets(secrets, None)?
                }
                other => other?,
            },
            SignatureConfig::None { .. } => return Ok(Reloaded::Secrets(Self::insecure_none())),
        };
        let v = Self::with_secrets(cfg, &secrets)?;
        Ok(if secrets.is_empty() {
            Reloaded::Revoked(v)
        } else {
            Reloaded::Secrets(v)
        })
    }

    /// The verifier of `cfg`'s scheme with these secrets (none: it refuses everything).
    fn with_secrets(cfg: &SignatureConfig, secrets: &[Secret]) -> Result<Self, SecretError> {
        match cfg {
            SignatureConfig::StandardWebhooks { tolerance_s, .. } => {
                Self::standard_keys(secrets, *tolerance_s)
            }
            SignatureConfig::Hmac {
                header,
                algorithm,
                encoding,
                prefix,
                signed_content,
                timestamp_header,
                tolerance_s,
                ..
            } => {
                let raw: Vec<&[u8]> = secrets.iter().map(|s| s.expose().as_bytes()).collect();
                let keys = match algorithm {
                    HmacAlgorithm::Sha256 => HmacKeys::Sha256(keyed(&raw)),
                    HmacAlgorithm::Sha512 => HmacKeys::Sha512(keyed(&raw)),
                };
                let timestamp_header = timestamp_header.as_deref().map(header_name).transpose()?;
                let sign_timestamp = signed_content.contains("{timestamp}");
                Ok(Self {
                    scheme: Scheme::Hmac {
                        header: header_name(header)?,
                        keys,
                        encoding: *encoding,
                        prefix: prefix.clone(),
                        timestamp_header,
                        sign_timestamp,
                    },
                    tolerance_s: *tolerance_s,
                })
            }
            SignatureConfig::None { .. } => Ok(Self::insecure_none()),
        }
    }

    /// A Standard Webhooks verifier for these secrets (`whsec_<base64>`).
    pub fn standard(secrets: &[Secret], tolerance_s: u64) -> Result<Self, SecretError> {
        if secrets.is_empty() {
            return Err(SecretError::Empty);
        }
        Self::standard_keys(secrets, tolerance_s)
    }

    fn standard_keys(secrets: &[Secret], tolerance_s: u64) -> Result<Self, SecretError> {
        let mut raw = Vec::with_capacity(secrets.len());
        for (i, s) in secrets.iter().enumerate() {
            raw.push(
                decode_standard_secret(s.expose())
                    .ok_or(SecretError::BadStandardSecret { index: i + 1 })?,
            );
        }
        let refs: Vec<&[u8]> = raw.iter().map(Vec::as_slice).collect();
        Ok(Self {
            scheme: Scheme::Standard { keys: keyed(&refs) },
            tolerance_s,
        })
    }

    /// A verifier that accepts everything. Only for `scheme: none` with `insecure: true`.
    pub fn insecure_none() -> Self {
        Self {
            scheme: Scheme::None,
            tolerance_s: 0,
        }
    }

    /// Whether this verifier checks nothing.
    pub fn is_insecure(&self) -> bool {
        matches!(self.scheme, Scheme::None)
    }

    /// The scheme's name, for logs.
    pub fn scheme_name(&self) -> &'static str {
        match self.scheme {
            Scheme::Standard { .. } => "standard-webhooks",
            Scheme::Hmac { .. } => "hmac",
            Scheme::None => "none",
        }
    }

    /// How many secrets are active.
    pub fn secret_count(&self) -> usize {
        match &self.scheme {
            Scheme::Standard { keys } => keys.len(),
            Scheme::Hmac {
                keys: HmacKeys::Sha256(k),
                ..
            } => k.len(),
            Scheme::Hmac {
                keys: HmacKeys::Sha512(k),
                ..
            } => k.len(),
            Scheme::None => 0,
        }
    }

    /// The checks that need no body: the headers are there once each, readable, and the timestamp
    /// is within tolerance of `now` (Unix seconds). Lets a request be refused before its body is read.
    pub fn check_headers(&self, headers: &HeaderMap, now: i64) -> Result<(), SignatureError> {
        self.signed_headers(headers, now).map(|_| ())
    }

    /// Whether the secrets were revoked: a scheme that checks signatures, with no secret left.
    pub fn is_revoked(&self) -> bool {
        !self.is_insecure() && self.secret_count() == 0
    }

    /// Verifies `payload` against the request's `headers` at `now` (Unix seconds).
    pub fn verify(
        &self,
        headers: &HeaderMap,
        payload: Payload<Unverified>,
        now: i64,
    ) -> Result<Payload<Verified>, SignatureError> {
        let signed = self.signed_headers(headers, now)?;
        let body = payload.body;
        let ok = match (&self.scheme, &signed) {
            (Scheme::None, _) => true,
            (Scheme::Standard { keys }, Signed::Standard { id, ts, sigs, .. }) => {
                let candidates = decode_all(sigs.iter().copied(), SignatureEncoding::Base64);
                any_match(
                    keys,
                    &[id.as_bytes(), b".", ts.as_bytes(), b".", &body],
                    &candidates,
                )
            }
            (
                Scheme::Hmac {
                    keys,
                    encoding,
                    sign_timestamp,
                    ..
                },
                Signed::Hmac { ts, sigs, .. },
            ) => {
                let candidates = decode_all(sigs.iter().copied(), *encoding);
                let parts: Vec<&[u8]> = match (sign_timestamp, ts) {
                    (true, Some(ts)) => vec![ts.as_bytes(), b".", &body],
                    _ => vec![&body],
                };
                match keys {
                    HmacKeys::Sha256(k) => any_match(k, &parts, &candidates),
                    HmacKeys::Sha512(k) => any_match(k, &parts, &candidates),
                }
            }
            _ => false,
        };
        if !ok {
            return Err(SignatureError::Mismatch);
        }
        let (webhook_id, timestamp) = match signed {
            Signed::Standard { id, ts_value, .. } => (Some(id.to_owned()), Some(ts_value)),
            Signed::Hmac { ts_value, .. } => (None, ts_value),
            Signed::None => (None, None),
        };
        Ok(Payload {
            body,
            webhook_id,
            timestamp,
            _state: PhantomData,
        })
    }

    fn signed_headers<'h>(
        &self,
        headers: &'h HeaderMap,
        now: i64,
    ) -> Result<Signed<'h>, SignatureError> {
        if self.is_revoked() {
            return Err(SignatureError::NoSecret);
        }
        match &self.scheme {
            Scheme::None => Ok(Signed::None),
            Scheme::Standard { .. } => {
                let id = single(headers, &WEBHOOK_ID, "id")?;
                if id.is_empty() || id.len() > MAX_ID_LEN {
                    return Err(SignatureError::MalformedHeader("id"));
                }
                let ts = single(headers, &WEBHOOK_TIMESTAMP, "timestamp")?;
                let ts_value = parse_timestamp(ts)?;
                self.check_tolerance(ts_value, now)?;
                let sig = single(headers, &WEBHOOK_SIGNATURE, "signature")?;
                let sigs: Vec<&str> = sig
                    .split(' ')
                    .filter_map(|e| e.strip_prefix("v1,"))
                    .take(MAX_SIGNATURES)
                    .collect();
                if sigs.is_empty() {
                    return Err(SignatureError::MalformedHeader("signature"));
                }
                Ok(Signed::Standard {
                    id,
                    ts,
                    ts_value,
                    sigs,
                })
            }
            Scheme::Hmac {
                header,
                prefix,
                timestamp_header,
                sign_timestamp,
                ..
            } => {
                let (ts, ts_value) = match timestamp_header {
                    Some(h) => {
                        let ts = single(headers, h, "timestamp")?;
                        let v = parse_timestamp(ts)?;
                        self.check_tolerance(v, now)?;
                        (Some(ts), Some(v))
                    }
                    None if *sign_timestamp => {
                        return Err(SignatureError::MissingHeader("timestamp"));
                    }
                    None => (None, None),
                };
                let sig = single(headers, header, "signature")?;
                let sigs: Vec<&str> = sig
                    .split([',', ' '])
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| s.strip_prefix(prefix.as_str()))
                    .take(MAX_SIGNATURES)
                    .collect();
                if sigs.is_empty() {
                    return Err(SignatureError::MalformedHeader("signature"));
                }
                Ok(Signed::Hmac { ts, ts_value, sigs })
            }
        }
    }

    fn check_tolerance(&self, ts: i64, now: i64) -> Result<(), SignatureError> {
        let tolerance = i64::try_from(self.tolerance_s).unwrap_or(i64::MAX);
        if now.abs_diff(ts) > tolerance.unsigned_abs() {
            return Err(SignatureError::TimestampOutOfTolerance);
        }
        Ok(())
    }
}

/// What a request's headers say, borrowed from them.
enum Signed<'h> {
    Standard {
        id: &'h str,
        ts: &'h str,
        ts_value: i64,
        sigs: Vec<&'h str>,
    },
    Hmac {
        ts: Option<&'h str>,
        ts_value: Option<i64>,
        sigs: Vec<&'h str>,
    },
    None,
}

fn keyed<M: Mac + KeyInit>(secrets: &[&[u8]]) -> Vec<M> {
    secrets
        .iter()
        // HMAC accepts keys of any length, so this never fails; a failure would drop the key.
        .filter_map(|k| <M as KeyInit>::new_from_slice(k).ok())
        .collect()
}

/// Whether any candidate tag equals the MAC of `parts` under any key. Each comparison is constant
/// time; which key or candidate matched is not secret.
fn any_match<M: Mac + Clone>(keys: &[M], parts: &[&[u8]], candidates: &[Vec<u8>]) -> bool {
    if candidates.is_empty() {
        return false;
    }
    for key in keys {
        let mut mac = key.clone();
        for p in parts {
            mac.update(p);
        }
        let tag: CtOutput<M> = mac.finalize();
        for c in candidates {
            if let Ok(expected) = Output::<M>::try_from(c.as_slice())
                && tag == CtOutput::new(expected)
            {
                return true;
            }
        }
    }
    false
}

fn decode_all<'a>(
    sigs: impl Iterator<Item = &'a str>,
    encoding: SignatureEncoding,
) -> Vec<Vec<u8>> {
    sigs.filter_map(|s| match encoding {
        SignatureEncoding::Hex => hex::decode(s).ok(),
        SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(s)
            .ok()
            .or_else(|| base64::engine::general_purpose::URL_SAFE.decode(s).ok()),
    })
    .collect()
}

fn single<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
    label: &'static str,
) -> Result<&'h str, SignatureError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next().ok_or(SignatureError::MissingHeader(label))?;
    if values.next().is_some() {
        return Err(SignatureError::DuplicateHeader(label));
    }
    let s = first
        .to_str()
        .map_err(|_| SignatureError::MalformedHeader(label))?
        .trim();
    if s.is_empty() {
        return Err(SignatureError::MalformedHeader(label));
    }
    Ok(s)
}

fn parse_timestamp(ts: &str) -> Result<i64, SignatureError> {
    if ts.is_empty() || ts.len() > 18 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::MalformedHeader("timestamp"));
    }
    ts.parse()
        .map_err(|_| SignatureError::MalformedHeader("timestamp"))
}

/// Signs `body` the Standard Webhooks way: returns the `webhook-signature` value `v1,<base64>`.
/// `None` when the secret is not `whsec_<base64>`.
pub fn standard_signature(secret: &str, id: &str, ts: i64, body: &[u8]) -> Option<String> {
    let key = decode_standard_secret(secret)?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    Some(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    ))
}

/// The current time in Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use axum::http::HeaderValue;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const PAYLOAD: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(WEBHOOK_ID, HeaderValue::from_str(id).unwrap());
        h.insert(WEBHOOK_TIMESTAMP, HeaderValue::from_str(ts).unwrap());
        h.insert(WEBHOOK_SIGNATURE, HeaderValue::from_str(sig).unwrap());
        h
    }

    fn std_verifier(secrets: &[&str]) -> Verifier {
        let s: Vec<Secret> = secrets.iter().map(|s| Secret((*s).into())).collect();
        Verifier::standard(&s, 300).unwrap()
    }

    fn check(v: &Verifier, h: &HeaderMap, body: &[u8], now: i64) -> Result<Bytes, SignatureError> {
        v.verify(h, Payload::new(Bytes::copy_from_slice(body)), now)
            .map(Payload::into_body)
    }

    #[test]
    fn reference_vector_signs_and_verifies() {
        assert_eq!(
            standard_signature(SECRET, MSG_ID, TS, PAYLOAD).unwrap(),
            SIG
        );
        let v = std_verifier(&[SECRET]);
        let h = headers(MSG_ID, &TS.to_string(), SIG);
        assert_eq!(check(&v, &h, PAYLOAD, TS).unwrap(), PAYLOAD);
        // Without the `whsec_` prefix too.
        let v = std_verifier(&["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);
        assert!(check(&v, &h, PAYLOAD, TS + 300).is_ok());
    }

    #[test]
    fn reference_invalid_signature_and_multi_signature() {
        let v = std_verifier(&[SECRET]);
        let bad = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
        let h = headers(MSG_ID, &TS.to_string(), bad);
        assert_eq!(check(&v, &h, PAYLOAD, TS), Err(SignatureError::Mismatch));
        let multi = format!(
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {SIG} v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
        );
        let h = headers(MSG_ID, &TS.to_string(), &multi);
        assert!(check(&v, &h, PAYLOAD, TS).is_ok());
    }

    #[test]
    fn tolerance_both_ways() {
        let v = std_verifier(&[SECRET]);
        let h = headers(MSG_ID, &TS.to_string(), SIG);
        assert!(check(&v, &h, PAYLOAD, TS + 300).is_ok());
        assert!(check(&v, &h, PAYLOAD, TS - 300).is_ok());
        assert_eq!(
            check(&v, &h, PAYLOAD, TS + 301),
            Err(SignatureError::TimestampOutOfTolerance)
        );
        assert_eq!(
            check(&v, &h, PAYLOAD, TS - 301),
            Err(SignatureError::TimestampOutOfTolerance)
        );
    }

    #[test]
    fn missing_malformed_and_duplicate_headers() {
        let v = std_verifier(&[SECRET]);
        for name in [WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE] {
            let mut h = headers(MSG_ID, &TS.to_string(), SIG);
            h.remove(&name);
            assert!(matches!(
                check(&v, &h, PAYLOAD, TS),
                Err(SignatureError::MissingHeader(_))
            ));
            let mut h = headers(MSG_ID, &TS.to_string(), SIG);
            let value = h.get(&name).unwrap().clone();
            h.append(name.clone(), value);
            assert!(matches!(
                check(&v, &h, PAYLOAD, TS),
                Err(SignatureError::DuplicateHeader(_))
            ));
        }
        let h = headers(MSG_ID, "hello", SIG);
        assert_eq!(
            check(&v, &h, PAYLOAD, TS),
            Err(SignatureError::MalformedHeader("timestamp"))
        );
        let h = headers(MSG_ID, "-1614265330", SIG);
        assert!(check(&v, &h, PAYLOAD, TS).is_err());
        let h = headers(MSG_ID, &TS.to_string(), "v2,abc");
        assert_eq!(
            check(&v, &h, PAYLOAD, TS),
            Err(SignatureError::MalformedHeader("signature"))
        );
        let h = headers(MSG_ID, &TS.to_string(), "v1,!!!not-base64");
        assert_eq!(check(&v, &h, PAYLOAD, TS), Err(SignatureError::Mismatch));
    }

    #[test]
    fn signature_for_another_id_or_body_fails() {
        let v = std_verifier(&[SECRET]);
        let h = headers("msg_other", &TS.to_string(), SIG);
        assert_eq!(check(&v, &h, PAYLOAD, TS), Err(SignatureError::Mismatch));
        let h = headers(MSG_ID, &TS.to_string(), SIG);
        assert_eq!(
            check(&v, &h, br#"{"test": 2432232315}"#, TS),
            Err(SignatureError::Mismatch)
        );
        let h = headers(MSG_ID, &(TS + 1).to_string(), SIG);
        assert_eq!(check(&v, &h, PAYLOAD, TS), Err(SignatureError::Mismatch));
    }

    #[test]
    fn rotation_any_secret_passes() {
        let other = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=";
        let v = std_verifier(&[other, SECRET]);
        let h = headers(MSG_ID, &TS.to_string(), SIG);
        assert!(check(&v, &h, PAYLOAD, TS).is_ok());
        let v = std_verifier(&[other]);
        assert_eq!(check(&v, &h, PAYLOAD, TS), Err(SignatureError::Mismatch));
    }

    #[test]
    fn bad_secret_is_a_config_error_without_the_secret() {
        let err = Verifier::standard(&[Secret("whsec_***not base64***".into())], 300).unwrap_err();
        assert!(!err.to_string().contains("not base64***"));
        assert!(matches!(
            Verifier::standard(&[], 300),
            Err(SecretError::Empty)
        ));
    }

    fn hmac_cfg(
        alg: HmacAlgorithm,
        enc: SignatureEncoding,
        prefix: &str,
        ts: bool,
    ) -> SignatureConfig {
        SignatureConfig::Hmac {
            header: "X-Fondo-Signature".into(),
            algorithm: alg,
            encoding: enc,
            prefix: prefix.into(),
            signed_content: if ts { "{timestamp}.{body}" } else { "{body}" }.into(),
            timestamp_header: ts.then(|| "x-fondo-timestamp".into()),
            secrets: vec![Secret("old".into()), Secret("s3cret".into())],
            secrets_file: None,
            tolerance_s: 300,
        }
    }

    #[test]
    fn hmac_scheme_variants() {
        let body = br#"{"eventType":"order.create"}"#;
        for (alg, enc, prefix, ts) in [
            (
                HmacAlgorithm::Sha256,
                SignatureEncoding::Hex,
                "sha256=",
                false,
            ),
            (HmacAlgorithm::Sha256, SignatureEncoding::Base64, "", true),
            (HmacAlgorithm::Sha512, SignatureEncoding::Hex, "", true),
            (
                HmacAlgorithm::Sha512,
                SignatureEncoding::Base64,
                "sha512=",
                false,
            ),
        ] {
            let v = Verifier::from_config(&hmac_cfg(alg, enc, prefix, ts)).unwrap();
            let now = 1_700_000_000;
            let mut content = Vec::new();
            if ts {
                content.extend_from_slice(format!("{now}.").as_bytes());
            }
            content.extend_from_slice(body);
            let tag = match alg {
                HmacAlgorithm::Sha256 => {
                    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(b"s3cret").unwrap();
                    m.update(&content);
                    m.finalize().into_bytes().to_vec()
                }
                HmacAlgorithm::Sha512 => {
                    let mut m = <Hmac<Sha512> as KeyInit>::new_from_slice(b"s3cret").unwrap();
                    m.update(&content);
                    m.finalize().into_bytes().to_vec()
                }
            };
            let enc_tag = match enc {
                SignatureEncoding::Hex => hex::encode(&tag),
                SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(&tag),
            };
            let mut h = HeaderMap::new();
            h.insert(
                "x-fondo-signature",
                HeaderValue::from_str(&format!("{prefix}{enc_tag}")).unwrap(),
            );
            if ts {
                h.insert(
                    "x-fondo-timestamp",
                    HeaderValue::from_str(&now.to_string()).unwrap(),
                );
            }
            assert!(
                check(&v, &h, body, now).is_ok(),
                "{alg:?} {enc:?} {prefix} {ts}"
            );
            assert_eq!(
                check(&v, &h, b"{}", now),
                Err(SignatureError::Mismatch),
                "tampered body"
            );
            if ts {
                assert_eq!(
                    check(&v, &h, body, now + 301),
                    Err(SignatureError::TimestampOutOfTolerance)
                );
                h.remove("x-fondo-timestamp");
                assert_eq!(
                    check(&v, &h, body, now),
                    Err(SignatureError::MissingHeader("timestamp"))
                );
            } else if !prefix.is_empty() {
                // The prefix is required when configured.
                h.insert(
                    "x-fondo-signature",
                    HeaderValue::from_str(&enc_tag).unwrap(),
                );
                assert!(check(&v, &h, body, now).is_err());
            }
        }
    }

    #[test]
    fn none_scheme_accepts_everything() {
        let v = Verifier::from_config(&SignatureConfig::None { insecure: true }).unwrap();
        assert!(v.is_insecure());
        assert!(check(&v, &HeaderMap::new(), b"x", 0).is_ok());
    }

    #[test]
    fn secrets_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secrets");
        std::fs::write(
            &f,
            format!("# rotated 2024\n\n  {SECRET}  \nwhsec_c2Vjb25k\n"),
        )
        .unwrap();
        let s = load_secrets(&[Secret("whsec_aW5saW5l".into())], Some(&f)).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].expose(), SECRET);
        let v = Verifier::standard(&s, 300).unwrap();
        assert_eq!(v.secret_count(), 3);
        assert!(format!("{v:?}").contains("secrets: 3"));
        assert!(matches!(
            load_secrets(&[], Some(&dir.path().join("missing"))),
            Err(SecretError::File { .. })
        ));
    }

    #[test]
    fn reload_revokes_when_the_file_holds_no_secret_and_restores_when_refilled() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secrets");
        std::fs::write(&f, format!("{SECRET}\n")).unwrap();
        let cfg: SignatureConfig = serde_json::from_value(serde_json::json!({
            "scheme": "standard-webhooks", "secrets_file": f
        }))
        .unwrap();
        let h = headers(MSG_ID, &TS.to_string(), SIG);
        let reload = || Verifier::reload(&cfg);
        let Ok(Reloaded::Secrets(v)) = reload() else {
            panic!("a secret in the file")
        };
        assert!(check(&v, &h, PAYLOAD, TS).is_ok());

        // Emptied, only comments, or gone: revoked; the good signature no longer passes, and the
        // request is refused on its headers already.
        for content in [Some(""), Some("# rotated away\n\n"), None] {
            match content {
                Some(c) => std::fs::write(&f, c).unwrap(),
                None => std::fs::remove_file(&f).unwrap(),
            }
            let Ok(Reloaded::Revoked(v)) = reload() else {
                panic!("{content:?} revokes")
            };
            assert!(v.is_revoked());
            assert_eq!(v.check_headers(&h, TS), Err(SignatureError::NoSecret));
            assert_eq!(check(&v, &h, PAYLOAD, TS), Err(SignatureError::NoSecret));
        }
        // A malformed secret is an error (the caller keeps what it has), not a revocation.
        std::fs::write(&f, "whsec_!!! not base64\n").unwrap();
        assert!(matches!(
            reload(),
            Err(SecretError::BadStandardSecret { .. })
        ));
        // Refilled: accepted again.
        std::fs::write(&f, format!("{SECRET}\n")).unwrap();
        let Ok(Reloaded::Secrets(v)) = reload() else {
            panic!("refilled")
        };
        assert!(!v.is_revoked());
        assert!(check(&v, &h, PAYLOAD, TS).is_ok());

        // Inline secrets are not in the file, so emptying the file leaves them.
        let inline: SignatureConfig = serde_json::from_value(serde_json::json!({
            "scheme": "standard-webhooks", "secrets": [SECRET], "secrets_file": f
        }))
        .unwrap();
        std::fs::write(&f, "").unwrap();
        assert!(matches!(
            Verifier::reload(&inline),
            Ok(Reloaded::Secrets(_))
        ));

        // The hmac scheme revokes alike.
        let hmac: SignatureConfig = serde_json::from_value(serde_json::json!({
            "scheme": "hmac", "header": "x-signature", "secrets_file": f
        }))
        .unwrap();
        let Ok(Reloaded::Revoked(v)) = Verifier::reload(&hmac) else {
            panic!("hmac revokes")
        };
        let mut hh = HeaderMap::new();
        hh.insert("x-signature", HeaderValue::from_static("abcd"));
        assert_eq!(v.check_headers(&hh, TS), Err(SignatureError::NoSecret));
    }
}
