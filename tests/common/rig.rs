//! The in-process rig most black-box tests start from: a dispatcher over test sinks, wired the
//! way the bridge wires one, with fast retries and dead letters to a file.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fondo_bridge::config::{Config, DestinationConfig, RouteConfig, Unmatched};
use fondo_bridge::dispatch::{Dispatcher, DispatcherParts, IdentityConfig, RetryPolicy};
use fondo_bridge::dlq::DeadLetterWriter;
use fondo_bridge::metrics::Metrics;
use fondo_bridge::router::Router;
use fondo_bridge::sinks::DynSink;

/// What to build: routes, sinks, the dead-letter file and the delivery limits.
pub struct DispatcherRig {
    routes: Vec<RouteConfig>,
    sinks: Vec<(String, DynSink)>,
    dl_file: PathBuf,
    max_attempts: u32,
    max_in_flight: usize,
}

impl DispatcherRig {
    /// Dead letters go to `dl_file` only (one attempt). Deliveries retry after 1 ms up to 5 ms, as
    /// often as `delivery.max_attempts` says by default; 1 000 events may be in flight.
    pub fn new(dl_file: impl Into<PathBuf>) -> Self {
        Self {
            routes: Vec::new(),
            sinks: Vec::new(),
            dl_file: dl_file.into(),
            max_attempts: Config::default().delivery.max_attempts,
            max_in_flight: 1000,
        }
    }

    pub fn sink(mut self, name: &str, sink: DynSink) -> Self {
        self.sinks.push((name.to_owned(), sink));
        self
    }

    /// A route `all` that sends every event (but heartbeats) to `sink` under `topic`.
    pub fn route_all(self, sink: &str, topic: &str) -> Self {
        self.routes(vec![RouteConfig {
            name: "all".into(),
            matches: vec!["*".into()],
            filter: BTreeMap::new(),
            redact: vec![],
            to: vec![DestinationConfig {
                sink: sink.into(),
                topic: topic.into(),
                key: None,
                headers: BTreeMap::new(),
                ..Default::default()
            }],
        }])
    }

    pub fn routes(mut self, routes: Vec<RouteConfig>) -> Self {
        self.routes.extend(routes);
        self
    }

    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Compiles the routes (panics on a mistake in the test) and starts the dispatcher.
    pub fn start(self, metrics: &Arc<Metrics>) -> Dispatcher {
        let names: Vec<&str> = self.sinks.iter().map(|(n, _)| n.as_str()).collect();
        let router =
            Router::compile_routes(&self.routes, Unmatched::DeadLetter, |s| names.contains(&s))
                .expect("the test's routes compile");
        let dead_letters = Arc::new(DeadLetterWriter::new(
            None,
            "fondo.dead-letter".into(),
            1,
            self.dl_file,
            Arc::clone(metrics),
        ));
        Dispatcher::start(DispatcherParts {
            router,
            sinks: self.sinks.into_iter().collect::<HashMap<_, _>>(),
            dead_letters,
            policy: RetryPolicy {
                max_attempts: self.max_attempts.max(1),
                initial: Duration::from_millis(1),
                max: Duration::from_millis(5),
                max_elapsed: None,
            },
            max_in_flight: self.max_in_flight,
            identity: IdentityConfig::default(),
            metrics: Arc::clone(metrics),
        })
    }
}
