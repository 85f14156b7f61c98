//! From configuration to what runs. A [`Plan`] is a config that passed every check, with its
//! routing table compiled once; `run`, `check`, `route`, a routing reload and `dlq replay` all
//! start from one, and build the dead-letter writer and the dispatcher through it.
//!
//! The config module checks each section on its own terms; the checks that need the routing
//! table (destinations, templates, the dead-letter topic) are made here, by compiling it. So the
//! config does not depend on the router, and every problem of a file is still reported at once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, ConfigError, Problem};
use crate::dispatch::{Dispatcher, DispatcherParts, IdentityConfig, RetryPolicy};
use crate::dlq::DeadLetterWriter;
use crate::event::ParseOptions;
use crate::metrics::Metrics;
use crate::router::{Router, Template};
use crate::sinks::DynSink;

/// A validated config and its compiled routing table.
#[derive(Debug, Clone)]
pub struct Plan {
    config: Config,
    router: Router,
}

impl Plan {
    /// Reads `path` (YAML or TOML) under the environment's `FONDO_BRIDGE__*` overrides and checks
    /// it whole.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Like [`Plan::load`], with the environment given (tests).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::checked(Config::read_with_env(path, env)?)
    }

    /// Config text of the given format (`yaml`, `yml` or `toml`), with environment overrides.
    pub fn from_str_with_env(
        text: &str,
        format: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::checked(Config::parse_with_env(text, format, env)?)
    }

    /// Compiles the routing table of a config whose sections already passed their checks
    /// ([`Config::load`]).
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        Self::checked(config)
    }

    /// Every problem at once: the routing table's first, then each section's.
    fn checked(config: Config) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let router = match Router::compile(&config) {
            Ok(r) => Some(r),
            Err(errs) => {
                problems.extend(errs.into_iter().map(|e| Problem {
                    path: e.path,
                    message: e.message,
                }));
                None
            }
        };
        if let Err(e) = Template::parse(&config.dead_letter.topic) {
            problems.push(Problem {
                path: "dead_letter.topic".into(),
                message: e.to_string(),
            });
        }
        problems.extend(config.problems());
        match router {
            Some(router) if problems.is_empty() => Ok(Self { config, router }),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn into_config(self) -> Config {
        self.config
    }

    /// How sources parse events under this config.
    pub fn parse_options(&self) -> ParseOptions {
        ParseOptions {
            max_bytes: self
                .config
                .sources
                .websocket
                .as_ref()
                .map_or(1024 * 1024, |w| w.max_frame_bytes),
            id_pointer: self.config.event.id_pointer.clone(),
            ..ParseOptions::default()
        }
    }

    /// The sink `dead_letter.sink` names, among `sinks`.
    pub fn dead_letter_sink(&self, sinks: &HashMap<String, DynSink>) -> Option<DynSink> {
        let name = self.config.dead_letter.sink.as_ref()?;
        sinks.get(name).cloned()
    }

    /// The dead-letter writer of `dead_letter`, writing to `sink` (or only its fallback file).
    pub fn dead_letter_writer(
        &self,
        sink: Option<DynSink>,
        metrics: &Arc<Metrics>,
    ) -> Arc<DeadLetterWriter> {
        let dl = &self.config.dead_letter;
        Arc::new(
            DeadLetterWriter::new(
                sink,
                dl.topic.clone(),
                dl.max_attempts,
                dl.fallback_file.clone(),
                Arc::clone(metrics),
            )
            .with_fallback_max_bytes(dl.fallback_max_bytes),
        )
    }

    /// Starts the dispatcher over `sinks`, with this plan's routes, retry policy, in-flight
    /// bound and identity rules.
    pub fn dispatcher(
        &self,
        sinks: HashMap<String, DynSink>,
        dead_letters: Arc<DeadLetterWriter>,
        metrics: &Arc<Metrics>,
    ) -> Dispatcher {
        let cfg = &self.config;
        Dispatcher::start(DispatcherParts {
            router: self.router.clone(),
            sinks,
            dead_letters,
            policy: RetryPolicy::from_config(cfg),
            max_in_flight: cfg.delivery.max_in_flight,
            identity: IdentityConfig::from_config(cfg),
            metrics: Arc::clone(metrics),
        })
    }
}

#[cfg(test)]
mod tests;
