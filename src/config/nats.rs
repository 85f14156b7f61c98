//! Configuration of a `type: nats` sink.
//!
//! ```yaml
//! sinks:
//!   nats:
//!     type: nats
//!     url: "nats://nats-1:4222,nats://nats-2:4222"
//!     mode: jetstream                 # default; `core` is at most once (see `NatsMode::Core`)
//!     user: bridge                    # credentials: at most one of user/password, token,
//!     password_file: /run/secrets/nats-password   # nkey seed and creds file
//!     tls: { ca_file: /etc/nats/ca.pem }
//!     max_in_flight: 1024             # publishes waiting for their PubAck at once
//!     confirm_timeout_ms: 5000
//!     streams:                        # optional: created at start when missing (off by default)
//!       - { name: FONDO, subjects: ["fondo.>"], storage: file, duplicate_window_ms: 120000 }
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

/// A `type: nats` sink: JetStream (publish and await the PubAck) by default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// `nats://host:4222`, several separated by commas (`tls://` requires TLS).
    pub url: String,
    /// `jetstream` (default, at least once) or `core` (at most once; needs `accept_at_most_once`).
    #[serde(default)]
    pub mode: NatsMode,
    /// The explicit acknowledgement that `mode: core` can lose messages (no broker confirmation).
    #[serde(default)]
    pub accept_at_most_once: bool,
    /// User name for user/password authentication (also possible in the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password for `user`; prefer `password_file` or the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// File holding the password for `user` (trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Token authentication; prefer `token_file` or the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// File holding the token (trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// NKey seed (`SU...`); prefer `nkey_seed_file` or the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_seed: Option<Secret>,
    /// File holding the NKey seed (trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and NKey seed), as issued by `nsc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<PathBuf>,
    /// TLS towards the server; present means TLS is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<NatsTlsConfig>>,
    /// How long the first connection may take before the sink fails to start.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long a publish waits for its PubAck before failing (retriable). Old name:
    /// `ack_timeout_ms`.
    #[serde(default = "default_confirm_timeout_ms")]
    pub confirm_timeout_ms: u64,
    /// Publishes waiting for their PubAck at once; further publishes wait for a free slot.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// While the connection is down, how long a new publish waits for it before failing (retriable).
    #[serde(default = "default_reconnect_wait_ms")]
    pub reconnect_wait_ms: u64,
    /// The longest pause between two reconnect attempts (attempts back off up to it, never
    /// stop). Old name: `reconnect_delay_max_ms`.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// How often the client pings the server to find dead connections.
    #[serde(default = "default_ping_interval_ms")]
    pub ping_interval_ms: u64,
    /// Streams to create at start when they do not exist yet (existing ones are left as they are).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<NatsStreamConfig>,
}

/// How messages are published.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NatsMode {
    /// JetStream: each publish waits for the stream's PubAck; `Nats-Msg-Id` deduplicates
    /// redeliveries. At least once.
    #[default]
    Jetstream,
    /// Core NATS: fire and forget, nothing confirms that a message was stored or received.
    /// **At most once**: messages are lost when no subscriber is listening or the connection
    /// drops. Only with `accept_at_most_once: true`; warned about at start.
    Core,
}

/// TLS towards the NATS server.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsTlsConfig {
    /// PEM file of the CA(s) that signed the server certificate; default: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS; needs `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Start TLS before the server's INFO (server option `handshake_first`).
    #[serde(default)]
    pub handshake_first: bool,
}

/// A JetStream stream the sink creates at start if it is missing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsStreamConfig {
    /// The stream name (no spaces, `.`, `*`, `>`, `/`, backslash).
    pub name: String,
    /// Subjects (wildcards allowed) the stream captures, e.g. `fondo.>`.
    pub subjects: Vec<String>,
    /// `file` (default, survives restarts) or `memory`.
    #[serde(default)]
    pub storage: NatsStorage,
    /// Copies in a JetStream cluster (1 to 5; a single server only takes 1).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How long messages are kept; 0 = unlimited.
    #[serde(default)]
    pub max_age_ms: u64,
    /// How long `Nats-Msg-Id` is remembered to drop duplicates.
    #[serde(default = "default_duplicate_window_ms")]
    pub duplicate_window_ms: u64,
}

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NatsStorage {
    /// On disk: survives a server restart.
    #[default]
    File,
    /// In memory: lost when the server stops.
    Memory,
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_confirm_timeout_ms() -> u64 {
    5_000
}
fn default_max_in_flight() -> usize {
    1_024
}
fn default_reconnect_wait_ms() -> u64 {
    5_000
}
fn default_reconnect_max_ms() -> u64 {
    2_000
}
fn default_ping_interval_ms() -> u64 {
    20_000
}
fn default_replicas() -> usize {
    1
}
fn default_duplicate_window_ms() -> u64 {
    120_000
}

impl NatsSinkConfig {
    /// A config with `url` and every default (JetStream, no credentials, no streams).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            mode: NatsMode::default(),
            accept_at_most_once: false,
            user: None,
            password: None,
            password_file: None,
            token: None,
            token_file: None,
            nkey_seed: None,
            nkey_seed_file: None,
            creds_file: None,
            tls: None,
            connect_timeout_ms: default_connect_timeout_ms(),
            confirm_timeout_ms: default_confirm_timeout_ms(),
            max_in_flight: default_max_in_flight(),
            reconnect_wait_ms: default_reconnect_wait_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
            ping_interval_ms: default_ping_interval_ms(),
            streams: Vec::new(),
        }
    }

    /// The server URLs, split on commas, trimmed, empty pieces dropped.
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Broker-specific checks, as `(path below this sink, message)`; empty when valid. One list of checks, a few lines each, in the order of the keys: longer than most
    /// functions on purpose, since splitting it would scatter the checks of one section.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = Vec::new();
        let mut add = |path: &str, msg: String| p.push((path.to_owned(), msg));

        // An empty `url` is reported by the common sink checks; here: only commas.
        if self.urls().is_empty() && !self.url.trim().is_empty() {
            add("url", "must list at least one server".into());
        }
        for (i, u) in self.urls().iter().enumerate() {
            if let Err(e) = check_server_url(u) {
                add("url", format!("server {} ({}): {e}", i + 1, redact_url(u)));
            }
        }

        if self.mode == NatsMode::Core && !self.accept_at_most_once {
            add(
                "mode",
                "`core` publishes without any confirmation and can lose messages (at most once): \
                 use `jetstream`, or set `accept_at_most_once: true` to accept that"
                    .into(),
            );
        }
        if self.mode == NatsMode::Core && !self.streams.is_empty() {
            add(
                "streams",
                "streams are only created in `mode: jetstream`".into(),
            );
        }

        if self.password.is_some() && self.password_file.is_some() {
            add(
                "password_file",
                "set `password` or `password_file`, not both".into(),
            );
        }
        if self.token.is_some() && self.token_file.is_some() {
            add("token_file", "set `token` or `token_file`, not both".into());
        }
        if self.nkey_seed.is_some() && self.nkey_seed_file.is_some() {
            add(
                "nkey_seed_file",
                "set `nkey_seed` or `nkey_seed_file`, not both".into(),
            );
        }
        let has_password = self.password.is_some() || self.password_file.is_some();
        if has_password && self.user.is_none() {
            add("user", "required with `password`/`password_file`".into());
        }
        if self.user.is_some() && !has_password {
            add(
                "password",
                "`user` needs `password` or `password_file`".into(),
            );
        }
        let methods = [
            self.user.is_some() || has_password,
            self.token.is_some() || self.token_file.is_some(),
            self.nkey_seed.is_some() || self.nkey_seed_file.is_some(),
            self.creds_file.is_some(),
        ]
        .iter()
        .filter(|m| **m)
        .count();
        if methods > 1 {
            add(
                "(credentials)",
                "use one authentication method: user/password, token, nkey seed or creds file"
                    .into(),
            );
        }
        if let Some(seed) = &self.nkey_seed
            && !seed.expose().trim().starts_with('S')
        {
            add(
                "nkey_seed",
                "an NKey seed starts with `S` (e.g. `SU...`)".into(),
            );
        }

        if let Some(tls) = self.tls.as_deref()
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            add("tls", "`cert_file` and `key_file` go together".into());
        }

        if self.connect_timeout_ms == 0 {
            add("connect_timeout_ms", "must be at least 1".into());
        }
        if self.confirm_timeout_ms == 0 {
            add("confirm_timeout_ms", "must be at least 1".into());
        }
        if self.max_in_flight == 0 {
            add("max_in_flight", "must be at least 1".into());
        }
        if self.ping_interval_ms == 0 {
            add("ping_interval_ms", "must be at least 1".into());
        }

        let mut names = std::collections::BTreeSet::new();
        for (i, s) in self.streams.iter().enumerate() {
            let at = format!("streams[{i}]");
            if s.name.is_empty()
                || s.name.contains(|c: char| {
                    c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
                })
            {
                add(
                    &format!("{at}.name"),
                    "a stream name has no spaces, `.`, `*`, `>`, `/` or `\\`".into(),
                );
            } else if !names.insert(s.name.as_str()) {
                add(
                    &format!("{at}.name"),
                    format!("stream {:?} is listed twice", s.name),
                );
            }
            if s.subjects.is_empty() {
                add(
                    &format!("{at}.subjects"),
                    "needs at least one subject".into(),
                );
            }
            for (j, subj) in s.subjects.iter().enumerate() {
                if let Err(e) = validate_filter_subject(subj) {
                    add(&format!("{at}.subjects[{j}]"), e);
                }
            }
            if s.replicas == 0 || s.replicas > 5 {
                add(&format!("{at}.replicas"), "must be between 1 and 5".into());
            }
            if s.max_age_ms > 0 && s.duplicate_window_ms > s.max_age_ms {
                add(
                    &format!("{at}.duplicate_window_ms"),
                    "must not exceed max_age_ms".into(),
                );
            }
        }
        p
    }
}

fn check_server_url(u: &str) -> Result<(), String> {
    let (scheme, rest) = match u.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("nats", u),
    };
    if !matches!(scheme, "nats" | "tls" | "ws" | "wss") {
        return Err(format!(
            "scheme {scheme:?}: use nats://, tls://, ws:// or wss://"
        ));
    }
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') || host.contains(char::is_whitespace) {
        return Err("needs a host, e.g. nats://nats:4222".into());
    }
    Ok(())
}

/// A server URL without its user and password, for logs and messages.
pub fn redact_url(u: &str) -> String {
    match u.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => u.to_owned(),
        },
        None => match u.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => u.to_owned(),
        },
    }
}

/// Checks that a route's topic template is a valid NATS subject to publish to, with each
/// `{placeholder}` standing for (part of) a token: not empty, no whitespace or control characters,
/// no empty tokens (`a..b`, a leading or trailing `.`), no `*` or `>` (wildcards cannot be published
/// to). Placeholder names themselves are checked by the router.
pub fn validate_subject_template(topic_template: &str) -> Result<(), String> {
    if topic_template.is_empty() {
        return Err("a NATS subject must not be empty".into());
    }
    // Replace each `{...}` by a neutral token character; an unclosed `{` is an error.
    let mut flat = String::with_capacity(topic_template.len());
    let mut rest = topic_template;
    while let Some(i) = rest.find('{') {
        flat.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed `{{` in subject {topic_template:?}"));
        };
        if after[..end].is_empty() {
            return Err(format!(
                "empty placeholder `{{}}` in subject {topic_template:?}"
            ));
        }
        flat.push('x');
        rest = &after[end + 1..];
    }
    flat.push_str(rest);
    check_publish_subject(&flat).map_err(|e| format!("{e} in NATS subject {topic_template:?}"))
}

/// Checks a rendered subject before publishing: the same rules as [`validate_subject_template`].
pub fn check_publish_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("empty subject".into());
    }
    // Checked on every publish: one pass over the bytes for the usual all-ASCII subject.
    if subject.is_ascii() {
        let b = subject.as_bytes();
        let mut last = b'.';
        for &c in b {
            if c.is_ascii_whitespace() || c.is_ascii_control() {
                return Err(format!("whitespace or control character {:?}", c as char));
            }
            if c == b'*' || c == b'>' {
                return Err("wildcard `*` or `>` (not allowed when publishing)".into());
            }
            if c == b'.' && last == b'.' {
                return Err("empty token (leading, trailing or double `.`)".into());
            }
            last = c;
        }
        if last == b'.' {
            return Err("empty token (leading, trailing or double `.`)".into());
        }
        return Ok(());
    }
    check_subject_chars(subject)
}

/// [`check_publish_subject`] for any UTF-8 subject, character by character.
fn check_subject_chars(subject: &str) -> Result<(), String> {
    if let Some(c) = subject
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("whitespace or control character {c:?}"));
    }
    if subject.contains(['*', '>']) {
        return Err("wildcard `*` or `>` (not allowed when publishing)".into());
    }
    if subject.split('.').any(str::is_empty) {
        return Err("empty token (leading, trailing or double `.`)".into());
    }
    Ok(())
}

/// Checks a stream's subject filter: like a publish subject, but `*` may be a whole token and `>` the
/// whole last token.
fn validate_filter_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("empty subject".into());
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{subject:?}: no whitespace in a subject"));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len() - 1;
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err(format!(
                "{subject:?}: empty token (leading, trailing or double `.`)"
            ));
        }
        if t.contains(['*', '>']) && *t != "*" && !(*t == ">" && i == last) {
            return Err(format!(
                "{subject:?}: `*` must be a whole token and `>` the whole last token"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_templates() {
        assert!(validate_subject_template("fondo.order.{action}").is_ok());
        assert!(validate_subject_template("fondo.{entity}-x.{/current/ref}").is_ok());
        assert!(validate_subject_template("{event_type}").is_ok());
        assert!(validate_subject_template("").is_err());
        assert!(validate_subject_template("fondo order").is_err());
        assert!(validate_subject_template("fondo..order").is_err());
        assert!(validate_subject_template(".fondo").is_err());
        assert!(validate_subject_template("fondo.").is_err());
        assert!(validate_subject_template("fondo.*").is_err());
        assert!(validate_subject_template("fondo.>").is_err());
        assert!(validate_subject_template("fondo.{action").is_err());
        assert!(validate_subject_template("fondo.{}").is_err());
        assert!(validate_subject_template("fondo.\t").is_err());
    }

    #[test]
    fn the_ascii_fast_path_agrees_with_the_general_check() {
        let alphabet = [
            'a', '.', '*', '>', ' ', '\t', '\u{7f}', '\u{b}', '-', '\u{e9}',
        ];
        let mut subjects = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = subjects
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            subjects.extend(longer);
        }
        subjects.sort();
        subjects.dedup();
        let (mut ok, mut bad) = (0, 0);
        for s in subjects.iter().filter(|s| !s.is_empty() && s.is_ascii()) {
            let fast = check_publish_subject(s).is_ok();
            assert_eq!(fast, check_subject_chars(s).is_ok(), "{s:?}");
            if fast { ok += 1 } else { bad += 1 }
        }
        // Both answers must be exercised: valid subjects (`a.a-`) and every kind of invalid one.
        assert!(ok >= 40 && bad >= 1000, "{ok} valid, {bad} invalid");
    }

    #[test]
    fn filter_subjects() {
        assert!(validate_filter_subject("fondo.>").is_ok());
        assert!(validate_filter_subject("fondo.*.x").is_ok());
        assert!(validate_filter_subject("fondo.>.x").is_err());
        assert!(validate_filter_subject("fondo.a*").is_err());
        assert!(validate_filter_subject("fondo..x").is_err());
    }

    #[test]
    fn validation() {
        let ok = NatsSinkConfig::new("nats://127.0.0.1:4222, tls://user:pw@nats:4222");
        assert_eq!(ok.validate(), vec![]);

        let mut bad = NatsSinkConfig::new("http://x");
        bad.mode = NatsMode::Core;
        bad.user = Some("u".into());
        bad.token = Some(Secret("t".into()));
        bad.streams.push(NatsStreamConfig {
            name: "a.b".into(),
            subjects: vec!["x..y".into()],
            storage: NatsStorage::File,
            replicas: 0,
            max_age_ms: 0,
            duplicate_window_ms: 1,
        });
        let paths: Vec<String> = bad.validate().into_iter().map(|(p, _)| p).collect();
        for want in [
            "url",
            "mode",
            "streams",
            "password",
            "(credentials)",
            "streams[0].name",
            "streams[0].subjects[0]",
            "streams[0].replicas",
        ] {
            assert!(
                paths.iter().any(|p| p == want),
                "{want} missing from {paths:?}"
            );
        }
    }

    #[test]
    fn stays_small() {
        // `SinkConfig` holds this inline: keep it near the other sink configs (large_enum_variant).
        assert!(
            std::mem::size_of::<NatsSinkConfig>() <= 304,
            "{}",
            std::mem::size_of::<NatsSinkConfig>()
        );
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("nats://u:p@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
        assert_eq!(redact_url("u:p@h"), "***@h");
    }

    #[test]
    fn yaml_shape() {
        let y = r#"
url: nats://127.0.0.1:4222
mode: core
accept_at_most_once: true
streams:
  - { name: S, subjects: ["a.>"], storage: memory, max_age_ms: 60000 }
"#;
        let c: NatsSinkConfig = serde_yaml_like(y);
        assert_eq!(c.mode, NatsMode::Core);
        assert_eq!(c.streams[0].storage, NatsStorage::Memory);
        assert_eq!(c.streams[0].duplicate_window_ms, 120_000);
        assert_eq!(c.max_in_flight, 1024);
    }

    fn serde_yaml_like(y: &str) -> NatsSinkConfig {
        use figment::Figment;
        use figment::providers::{Format, Yaml};
        Figment::from(Yaml::string(y))
            .extract()
            .unwrap_or_else(|e| panic!("{e}"))
    }
}
