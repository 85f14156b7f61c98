//! The checks of each section after parsing: every problem, each with its path. The routing
//! table is checked where it is compiled (`crate::plan`).

use super::{Config, Problem, SignatureConfig, SinkConfig};

/// Every section's checks. One list, a few lines per key in the order of the sections: longer
/// than most functions on purpose, since splitting it would scatter related checks.
pub(super) fn validate(cfg: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    let mut add = |path: &str, message: String| {
        p.push(Problem {
            path: path.to_owned(),
            message,
        })
    };

    for (name, sink) in &cfg.sinks {
        let at = format!("sinks.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            add(&at, "sink names use letters, digits, `-` and `_`".into());
        }
        match sink {
            SinkConfig::File(f) => {
                if f.dir.as_os_str().is_empty() {
                    add(&format!("{at}.dir"), "must not be empty".into());
                }
            }
            SinkConfig::Kafka(k) => {
                for (sub, msg) in k.validate() {
                    add(&format!("{at}.{sub}"), msg);
                }
                if !cfg!(feature = "kafka") {
                    add(
                        &at,
                        "this build has no Kafka support (cargo feature `kafka`)".into(),
                    );
                }
                if k.brokers.trim().is_empty() {
                    add(
                        &format!("{at}.brokers"),
                        "must list at least one host:port".into(),
                    );
                }
            }
            SinkConfig::Rabbitmq(r) => {
                for (sub, msg) in r.validate() {
                    add(&format!("{at}.{sub}"), msg);
                }
                if !cfg!(feature = "rabbitmq") {
                    add(
                        &at,
                        "this build has no RabbitMQ support (cargo feature `rabbitmq`)".into(),
                    );
                }
                if !(r.url.starts_with("amqp://") || r.url.starts_with("amqps://")) {
                    add(
                        &format!("{at}.url"),
                        "must start with amqp:// or amqps://".into(),
                    );
                }
            }
            SinkConfig::Nats(n) => {
                for (sub, msg) in n.validate() {
                    add(&format!("{at}.{sub}"), msg);
                }
                if !cfg!(feature = "nats") {
                    add(
                        &at,
                        "this build has no NATS support (cargo feature `nats`)".into(),
                    );
                }
                if n.url.trim().is_empty() {
                    add(&format!("{at}.url"), "must not be empty".into());
                }
            }
        }
    }

    // NATS subjects: every route destination (and the dead-letter topic) on a NATS sink.
    let is_nats = |name: &str| matches!(cfg.sinks.get(name), Some(SinkConfig::Nats(_)));
    for (i, r) in cfg.routes.iter().enumerate() {
        for (j, d) in r.to.iter().enumerate() {
            if is_nats(&d.sink)
                && let Err(e) = super::nats::validate_subject_template(&d.topic)
            {
                add(&format!("routes[{i}].to[{j}].topic"), e);
            }
        }
    }
    if cfg.dead_letter.sink.as_deref().is_some_and(is_nats)
        && let Err(e) = super::nats::validate_subject_template(&cfg.dead_letter.topic)
    {
        add("dead_letter.topic", e);
    }

    if let Some(sink) = &cfg.dead_letter.sink
        && !cfg.sinks.contains_key(sink)
    {
        add(
            "dead_letter.sink",
            format!("no sink named {sink:?} in `sinks`"),
        );
    }
    if cfg.dead_letter.fallback_file.as_os_str().is_empty() {
        add("dead_letter.fallback_file", "must not be empty".into());
    }
    if cfg.dead_letter.fallback_max_bytes == 0 {
        add(
            "dead_letter.fallback_max_bytes",
            "must be at least 1 (0 would refuse every dead letter)".into(),
        );
    }

    if cfg.admin.stuck_after_ms < 1000 {
        add(
            "admin.stuck_after_ms",
            "must be at least 1000 (a busy but healthy bridge must not look stuck)".into(),
        );
    }

    let d = &cfg.delivery;
    if d.max_attempts == 0 {
        add("delivery.max_attempts", "must be at least 1".into());
    }
    if d.backoff_initial_ms == 0 {
        add("delivery.backoff_initial_ms", "must be at least 1".into());
    }
    if d.backoff_max_ms < d.backoff_initial_ms {
        add(
            "delivery.backoff_max_ms",
            "must not be below backoff_initial_ms".into(),
        );
    }
    if d.max_in_flight == 0 {
        add("delivery.max_in_flight", "must be at least 1".into());
    }

    if let Some(ws) = &cfg.sources.websocket {
        let ok_scheme = ["ws://", "wss://", "http://", "https://"]
            .iter()
            .any(|s| ws.url.starts_with(s));
        if !ok_scheme {
            add(
                "sources.websocket.url",
                "must start with wss://, ws://, https:// or http://".into(),
            );
        }
        if ws.client_ids.is_empty() {
            add(
                "sources.websocket.client_ids",
                "needs at least one client id".into(),
            );
        }
        for (i, c) in ws.client_ids.iter().enumerate() {
            if c.is_empty() || c.contains(['/', '?', '#', ' ']) {
                add(
                    &format!("sources.websocket.client_ids[{i}]"),
                    "not a valid client id".into(),
                );
            }
        }
        if ws.heartbeat_timeout_ms < 1000 {
            add(
                "sources.websocket.heartbeat_timeout_ms",
                "must be at least 1000".into(),
            );
        }
        if cfg.spool.enabled && cfg.spool.max_bytes < cfg.spool.segment_bytes {
            add(
                "spool.max_bytes",
                "must be at least spool.segment_bytes".into(),
            );
        }
    }
    if let Some(wh) = &cfg.sources.webhook {
        if !wh.path.starts_with('/') {
            add("sources.webhook.path", "must start with `/`".into());
        }
        if wh.header_read_timeout_ms == 0 {
            add(
                "sources.webhook.header_read_timeout_ms",
                "must be at least 1 (slow clients would hold connections forever)".into(),
            );
        }
        for (key, message) in wh.limit_problems() {
            add(&format!("sources.webhook.{key}"), message);
        }
        match &wh.signature {
            SignatureConfig::None { insecure } => {
                if !insecure {
                    add(
                        "sources.webhook.signature",
                        "scheme `none` accepts unsigned webhooks from anyone: set `insecure: true` to allow it".into(),
                    );
                }
            }
            SignatureConfig::StandardWebhooks {
                secrets,
                secrets_file,
                ..
            }
            | SignatureConfig::Hmac {
                secrets,
                secrets_file,
                ..
            } => {
                if secrets.is_empty() && secrets_file.is_none() {
                    add(
                        "sources.webhook.signature",
                        "needs `secrets` (from the environment) or `secrets_file`".into(),
                    );
                }
            }
        }
        if let SignatureConfig::Hmac {
            signed_content,
            timestamp_header,
            ..
        } = &wh.signature
        {
            match signed_content.as_str() {
                "{body}" => {}
                "{timestamp}.{body}" => {
                    if timestamp_header.is_none() {
                        add(
                            "sources.webhook.signature.timestamp_header",
                            "required when signed_content has {timestamp}".into(),
                        );
                    }
                }
                other => add(
                    "sources.webhook.signature.signed_content",
                    format!("{other:?}: use \"{{body}}\" or \"{{timestamp}}.{{body}}\""),
                ),
            }
        }
    }
    if cfg.sources.websocket.is_none() && cfg.sources.webhook.is_none() {
        add(
            "sources",
            "configure at least one of `websocket` and `webhook`".into(),
        );
    }
    if let (Some(h), Some(wh)) = (&cfg.event.id_header, &cfg.sources.webhook) {
        match &wh.signature {
            SignatureConfig::StandardWebhooks { .. } if !h.eq_ignore_ascii_case("webhook-id") => {
                add(
                    "event.id_header",
                    format!(
                        "{h:?}: under standard-webhooks the delivery id is the signed `webhook-id`; name that header or none"
                    ),
                )
            }
            SignatureConfig::Hmac { .. } => add(
                "event.id_header",
                format!(
                    "{h:?}: the hmac signature does not cover headers, so a delivery id from a header could be altered and make a real change look like a retry; remove it (retries are then published again, never dropped)"
                ),
            ),
            _ => {}
        }
    }
    if cfg.dedupe.pair_window_ms == 0 {
        add(
            "dedupe.pair_window_ms",
            "must be at least 1 (copies from the two sources could never pair)".into(),
        );
    }
    if cfg.dedupe.store == crate::config::DedupeStore::Redis {
        let r = &cfg.dedupe.redis;
        match r.url.as_deref() {
            None | Some("") => add(
                "dedupe.redis.url",
                "is required with `store: redis` (e.g. redis://redis:6379/0)".into(),
            ),
            Some(url) => {
                #[cfg(feature = "redis")]
                if let Err(why) = crate::dispatch::redis_store::check_url(url) {
                    add("dedupe.redis.url", why);
                }
                #[cfg(not(feature = "redis"))]
                add("dedupe.store", {
                    let _ = url;
                    "redis needs a build with the `redis` feature".to_owned()
                });
            }
        }
        if r.timeout_ms == 0 {
            add("dedupe.redis.timeout_ms", "must be at least 1".into());
        }
        if r.connections == 0 || r.connections > 64 {
            add(
                "dedupe.redis.connections",
                "must be between 1 and 64".into(),
            );
        }
        if r.prefix.is_empty() || r.prefix.contains(char::is_whitespace) {
            add(
                "dedupe.redis.prefix",
                "must be non-empty and hold no whitespace".into(),
            );
        }
    }
    if let Some(ptr) = &cfg.event.id_pointer
        && !ptr.starts_with('/')
    {
        add(
            "event.id_pointer",
            "must be a JSON pointer starting with `/`".into(),
        );
    }
    p
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::Config;

    fn with_limits(limits: &str) -> Result<Config, super::super::ConfigError> {
        let yaml = format!(
            r#"
sources:
  webhook:
    signature: {{ scheme: none, insecure: true }}
    limits: {limits}
sinks: {{ files: {{ type: file, dir: /tmp/x }} }}
routes: [{{ name: all, match: ["*"], to: [{{ sink: files, topic: t }}] }}]
"#
        );
        Config::from_str_with_env(&yaml, "yaml", Vec::new())
    }

    #[test]
    fn webhook_limits_have_safe_defaults_and_are_checked() {
        let c = with_limits("{}").unwrap();
        let limits = c.sources.webhook.unwrap().limits;
        assert_eq!(limits.max_connections, 1024);
        assert_eq!(limits.body_budget_bytes, 64 * 1024 * 1024);
        assert_eq!(limits.http2_max_concurrent_streams, 32);
        let e = with_limits(
            "{ max_connections: 0, body_budget_bytes: 1048576, idle_timeout_ms: 0, \
             http2_max_concurrent_streams: 0, http2_stream_window_bytes: 10, \
             http2_connection_window_bytes: 1000, listen_backlog: 0 }",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "max_connections",
            "body_budget_bytes",
            "idle_timeout_ms",
            "http2_max_concurrent_streams",
            "http2_stream_window_bytes",
            "http2_connection_window_bytes",
            "listen_backlog",
        ] {
            assert!(
                e.contains(&format!("sources.webhook.limits.{key}")),
                "{key}: {e}"
            );
        }
        // A budget that just holds one request of the largest size is enough.
        assert!(with_limits("{ body_budget_bytes: 1064960 }").is_ok());
        assert!(with_limits("{ body_budget_bytes: 1064959 }").is_err());
    }
}
