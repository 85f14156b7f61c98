//! Test brokers in Docker, for a developer who has a Docker engine and none of the
//! `FONDO_BRIDGE_TEST_*` addresses set.
//!
//! [`super::broker`] asks, in this order:
//! 1. `FONDO_BRIDGE_TEST_<NAME>`: set, it is the address (this is what `scripts/test.sh` and CI do).
//! 2. A Docker engine that answers (and `FONDO_BRIDGE_TEST_CONTAINERS` not `off`): the broker runs
//!    in a container started through testcontainers, once per test process, and its address has the
//!    same form as the variable's.
//! 3. Neither: under `CI=true` the test fails, elsewhere it skips with a loud message.
//!
//! Which engine: the one testcontainers itself would use, found the same way: `DOCKER_HOST` when
//! set, else the first of `/var/run/docker.sock`, `$XDG_RUNTIME_DIR/.docker/run/docker.sock`,
//! `$HOME/.docker/run/docker.sock`, `$HOME/.docker/desktop/docker.sock` that exists. It "answers"
//! when a connection to it opens within [`PROBE_TIMEOUT`]; the probe runs on its own thread, so a
//! socket that never accepts cannot hold a test longer than that. A `DOCKER_HOST` scheme other than
//! `unix://` or `tcp://` is not probed: it was set on purpose and testcontainers reports its errors.
//!
//! Cleanup: the containers are not removed when the tests end; they are kept and shared. Each has a
//! fixed name made from its image (`fondo-bridge-test-nats-2.10.14`, ...), the label
//! `fondo-bridge.test-broker=true`, and testcontainers' `ReuseDirective::Always`: the first test
//! process to need a broker creates its container, every later test binary (and every later
//! `cargo test`) finds it by name and uses it, starting it again if it was stopped. So a run pays the
//! image pull and the broker's start once, not once per test binary, and nothing is left behind per
//! run: at most one container per broker and image. The tests need no clean broker (every test
//! names its topics, queues and streams with [`super::unique`]). To remove them:
//! `docker rm -f $(docker ps -aq --filter label=fondo-bridge.test-broker=true)`. Remove them also
//! after the Docker engine restarted, because a container started again gets new host ports and the
//! Kafka broker would still advertise the old one.
//!
//! Two test processes that start the same broker at the same moment (a parallel runner) race for
//! the name; the loser's create fails, and its one retry finds the winner's container.
//!
//! Docker must run on this machine: the addresses are always `127.0.0.1`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use testcontainers::core::WaitFor;
use testcontainers::runners::SyncRunner;
use testcontainers::{ContainerRequest, Image, ImageExt, ReuseDirective, TestcontainersError};
use testcontainers_modules::kafka::apache::{KAFKA_PORT, Kafka};
use testcontainers_modules::nats::{Nats, NatsServerCmd};
use testcontainers_modules::rabbitmq::RabbitMq;
use testcontainers_modules::redis::{REDIS_PORT, Redis};

/// How long the engine probe may take before the engine counts as absent.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The label every test-broker container carries, for `docker ps --filter label=...`.
pub const LABEL: &str = "fondo-bridge.test-broker";

/// Set to `off` (or `0`, `false`, `no`) to skip the Docker fallback even when an engine answers.
pub const SWITCH_VAR: &str = "FONDO_BRIDGE_TEST_CONTAINERS";

/// A broker the tests can ask for by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broker {
    Kafka,
    Amqp,
    Nats,
    Redis,
}

impl Broker {
    /// The broker behind `FONDO_BRIDGE_TEST_<name>`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "KAFKA" => Some(Self::Kafka),
            "AMQP" => Some(Self::Amqp),
            "NATS" => Some(Self::Nats),
            "REDIS" => Some(Self::Redis),
            _ => None,
        }
    }

    /// The address in the form `FONDO_BRIDGE_TEST_<NAME>` takes, for the broker published on
    /// `host_port` of this machine.
    pub fn address(self, host_port: u16) -> String {
        match self {
            Self::Kafka => format!("127.0.0.1:{host_port}"),
            Self::Amqp => format!("amqp://guest:guest@127.0.0.1:{host_port}/%2f"),
            Self::Nats => format!("nats://127.0.0.1:{host_port}"),
            Self::Redis => format!("redis://127.0.0.1:{host_port}/0"),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Where a test's broker comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// The `FONDO_BRIDGE_TEST_*` variable's value.
    Env(String),
    /// A container this process starts (or finds) through testcontainers.
    Container(Broker),
    /// Nowhere: the caller fails under CI and skips elsewhere.
    Missing,
}

/// The order of [`super::broker`], without touching the environment or Docker: the variable wins;
/// then a container, if the broker has one, the fallback is on and `engine_answers()` (asked only
/// then); else nothing.
pub fn decide(
    env_value: Option<&str>,
    broker: Option<Broker>,
    fallback_on: bool,
    engine_answers: impl FnOnce() -> bool,
) -> Source {
    if let Some(v) = env_value.filter(|v| !v.trim().is_empty()) {
        return Source::Env(v.to_owned());
    }
    match broker {
        Some(b) if fallback_on && engine_answers() => Source::Container(b),
        _ => Source::Missing,
    }
}

/// Whether [`SWITCH_VAR`]'s value leaves the Docker fallback on (unset: on).
pub fn fallback_enabled(value: Option<&str>) -> bool {
    !matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("off" | "0" | "false" | "no")
    )
}

/// A Docker engine's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
    /// A scheme the probe does not speak (`ssh://`, `npipe://`): taken as answering.
    Other(String),
}

/// The engine testcontainers would talk to: `DOCKER_HOST`, else the first existing socket of the
/// usual places (see the module doc). `None` when there is none.
pub fn docker_endpoint(
    docker_host: Option<&str>,
    xdg_runtime_dir: Option<&Path>,
    home: Option<&Path>,
    exists: impl Fn(&Path) -> bool,
) -> Option<Endpoint> {
    if let Some(host) = docker_host.map(str::trim).filter(|h| !h.is_empty()) {
        return Some(if let Some(path) = host.strip_prefix("unix://") {
            Endpoint::Unix(PathBuf::from(path))
        } else if let Some(addr) = host.strip_prefix("tcp://") {
            Endpoint::Tcp(addr.trim_end_matches('/').to_owned())
        } else {
            Endpoint::Other(host.to_owned())
        });
    }
    let mut candidates = vec![PathBuf::from("/var/run/docker.sock")];
    if let Some(dir) = xdg_runtime_dir {
        candidates.push(dir.join(".docker/run/docker.sock"));
    }
    if let Some(dir) = home {
        candidates.push(dir.join(".docker/run/docker.sock"));
        candidates.push(dir.join(".docker/desktop/docker.sock"));
    }
    candidates
        .into_iter()
        .find(|p| exists(p))
        .map(Endpoint::Unix)
}

/// Whether a connection to `endpoint` opens within `within`. The connection is tried on its own
/// thread, so this returns after `within` at the latest whatever the socket does.
pub fn answers(endpoint: &Endpoint, within: Duration) -> bool {
    let endpoint = endpoint.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ok = match &endpoint {
            Endpoint::Unix(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
            Endpoint::Tcp(addr) => std::net::ToSocketAddrs::to_socket_addrs(addr.as_str())
                .map(|mut addrs| {
                    addrs.any(|a| std::net::TcpStream::connect_timeout(&a, within).is_ok())
                })
                .unwrap_or(false),
            Endpoint::Other(_) => true,
        };
        // The receiver may have given up already; nothing to do then.
        let _ = tx.send(ok);
    });
    rx.recv_timeout(within).unwrap_or(false)
}

/// Whether the Docker engine testcontainers would use answers, asked once per process.
pub fn engine_answers() -> bool {
    static ANSWERS: OnceLock<bool> = OnceLock::new();
    *ANSWERS.get_or_init(|| {
        let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let docker_host = std::env::var("DOCKER_HOST").ok();
        docker_endpoint(
            docker_host.as_deref(),
            xdg.as_deref(),
            home.as_deref(),
            |p| p.exists(),
        )
        .is_some_and(|e| answers(&e, PROBE_TIMEOUT))
    })
}

/// The name of the shared container for an image `descriptor` (`name:tag`).
pub fn container_name(descriptor: &str) -> String {
    let safe: String = descriptor
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("fondo-bridge-test-{safe}")
}

/// The address of `broker` in its container, started (or found running) the first time a test of
/// this process asks. Panics when Docker answered but the container could not be had: a developer
/// who has Docker wants to hear why, not a skip.
pub fn address(broker: Broker) -> String {
    static STARTED: [OnceLock<Result<String, String>>; 4] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let started = STARTED[broker.index()].get_or_init(|| {
        eprintln!("fondo-bridge tests: starting (or reusing) the {broker:?} test container");
        // Off the tests' tokio runtime: testcontainers' blocking runner has its own.
        std::thread::spawn(move || host_port(broker).or_else(|_| host_port(broker)))
            .join()
            .map_err(|_| "the thread starting the container panicked".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map(|port| broker.address(port))
    });
    match started {
        Ok(address) => address.clone(),
        Err(e) => panic!(
            "a Docker engine answers, but the {broker:?} test container could not be started: {e}\n\
             (set {SWITCH_VAR}=off to skip instead, or FONDO_BRIDGE_TEST_* to use your own broker)"
        ),
    }
}

/// Starts or finds `broker`'s container and returns the host port its broker listens on.
fn host_port(broker: Broker) -> Result<u16, TestcontainersError> {
    match broker {
        Broker::Amqp => shared(
            // A recent RabbitMQ (the module's default is older than the quorum-queue features the
            // sink declares); its start-up line, without the plugin count that changes by version.
            RabbitMq::default()
                .with_tag("3.13-management")
                .with_ready_conditions(vec![WaitFor::message_on_stdout("Server startup complete")]),
            5672,
        ),
        Broker::Nats => shared(
            Nats::default().with_cmd(&NatsServerCmd::default().with_jetstream()),
            4222,
        ),
        Broker::Kafka => shared(Kafka::default(), KAFKA_PORT.as_u16()),
        // `SET ... NX GET` needs Redis 7; the module's default is 5.
        Broker::Redis => shared(Redis::default().with_tag("7.2"), REDIS_PORT),
    }
}

/// Starts `request` as the shared, reused container of its image and returns the host port of
/// `port`. The handle is dropped at once: a container marked for reuse is not removed on drop.
fn shared<I: Image>(
    request: impl Into<ContainerRequest<I>>,
    port: u16,
) -> Result<u16, TestcontainersError> {
    let request: ContainerRequest<I> = request.into();
    let name = container_name(&request.descriptor());
    let container = request
        .with_container_name(name)
        .with_label(LABEL, "true")
        .with_reuse(ReuseDirective::Always)
        .with_startup_timeout(Duration::from_secs(300))
        .start()?;
    container.get_host_port_ipv4(port)
}
