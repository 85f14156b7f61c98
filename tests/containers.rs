//! The test brokers' Docker fallback (`tests/common/containers.rs`), without Docker: which source
//! `broker()` takes, the addresses it hands out, where it looks for an engine, and that asking an
//! engine that is not there returns at once. Nothing here starts a container or pulls an image.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::containers::{
    Broker, Endpoint, PROBE_TIMEOUT, Source, answers, container_name, decide, docker_endpoint,
    engine_answers, fallback_enabled,
};

#[test]
fn the_variable_wins_and_docker_is_not_asked() {
    let source = decide(
        Some("nats://10.0.0.1:4222"),
        Some(Broker::Nats),
        true,
        || panic!("the engine must not be probed when the variable is set"),
    );
    assert_eq!(source, Source::Env("nats://10.0.0.1:4222".into()));
}

#[test]
fn a_blank_variable_counts_as_unset() {
    assert_eq!(
        decide(Some("  "), Some(Broker::Amqp), true, || true),
        Source::Container(Broker::Amqp)
    );
    assert_eq!(
        decide(Some(""), Some(Broker::Amqp), true, || false),
        Source::Missing
    );
}

#[test]
fn no_engine_means_the_skip_or_fail_path() {
    assert_eq!(
        decide(None, Some(Broker::Kafka), true, || false),
        Source::Missing
    );
}

#[test]
fn an_answering_engine_gives_a_container() {
    for b in [Broker::Kafka, Broker::Amqp, Broker::Nats, Broker::Redis] {
        assert_eq!(decide(None, Some(b), true, || true), Source::Container(b));
    }
}

#[test]
fn switched_off_or_unknown_broker_never_asks_docker() {
    let never = || panic!("the engine must not be probed");
    assert_eq!(
        decide(None, Some(Broker::Nats), false, never),
        Source::Missing
    );
    assert_eq!(decide(None, None, true, never), Source::Missing);
}

#[test]
fn the_switch_is_on_unless_said_off() {
    assert!(fallback_enabled(None));
    assert!(fallback_enabled(Some("")));
    assert!(fallback_enabled(Some("on")));
    for off in ["off", "OFF", "0", "false", " no "] {
        assert!(!fallback_enabled(Some(off)), "{off:?} switches it off");
    }
}

#[test]
fn names_map_to_brokers() {
    assert_eq!(Broker::from_name("KAFKA"), Some(Broker::Kafka));
    assert_eq!(Broker::from_name("AMQP"), Some(Broker::Amqp));
    assert_eq!(Broker::from_name("NATS"), Some(Broker::Nats));
    assert_eq!(Broker::from_name("REDIS"), Some(Broker::Redis));
    assert_eq!(Broker::from_name("nats"), None);
    assert_eq!(Broker::from_name("PULSAR"), None);
}

#[test]
fn addresses_have_the_variables_form() {
    assert_eq!(Broker::Kafka.address(32768), "127.0.0.1:32768");
    assert_eq!(
        Broker::Amqp.address(32769),
        "amqp://guest:guest@127.0.0.1:32769/%2f"
    );
    assert_eq!(Broker::Nats.address(32770), "nats://127.0.0.1:32770");
    assert_eq!(Broker::Redis.address(32771), "redis://127.0.0.1:32771/0");
}

#[test]
fn container_names_are_docker_safe_and_carry_the_image() {
    assert_eq!(
        container_name("rabbitmq:3.13-management"),
        "fondo-bridge-test-rabbitmq-3.13-management"
    );
    assert_eq!(
        container_name("apache/kafka-native:3.8.0"),
        "fondo-bridge-test-apache-kafka-native-3.8.0"
    );
}

#[test]
fn docker_host_comes_first() {
    let all = |_: &Path| true;
    assert_eq!(
        docker_endpoint(Some("unix:///run/user/1000/docker.sock"), None, None, all),
        Some(Endpoint::Unix("/run/user/1000/docker.sock".into()))
    );
    assert_eq!(
        docker_endpoint(Some("tcp://127.0.0.1:2375/"), None, None, all),
        Some(Endpoint::Tcp("127.0.0.1:2375".into()))
    );
    assert_eq!(
        docker_endpoint(Some("ssh://me@box"), None, None, all),
        Some(Endpoint::Other("ssh://me@box".into()))
    );
}

#[test]
fn without_docker_host_the_first_existing_socket_is_the_engine() {
    let home = PathBuf::from("/home/dev");
    let desktop = home.join(".docker/desktop/docker.sock");
    let only_desktop = |p: &Path| p == desktop;
    assert_eq!(
        docker_endpoint(Some(""), None, Some(&home), only_desktop),
        Some(Endpoint::Unix(desktop.clone()))
    );
    let all = |_: &Path| true;
    assert_eq!(
        docker_endpoint(None, Some(Path::new("/run/user/1")), Some(&home), all),
        Some(Endpoint::Unix("/var/run/docker.sock".into()))
    );
    assert_eq!(
        docker_endpoint(None, Some(Path::new("/run/user/1")), Some(&home), |_| false),
        None
    );
}

#[test]
fn a_listening_socket_answers_and_a_dead_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    assert!(answers(&Endpoint::Unix(live), PROBE_TIMEOUT));

    let missing = dir.path().join("missing.sock");
    assert!(!answers(&Endpoint::Unix(missing), PROBE_TIMEOUT));

    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    assert!(answers(
        &Endpoint::Tcp(format!("127.0.0.1:{port}")),
        PROBE_TIMEOUT
    ));
    drop(tcp);
    assert!(!answers(
        &Endpoint::Tcp(format!("127.0.0.1:{}", common::free_port())),
        PROBE_TIMEOUT
    ));
}

/// A listener whose backlog is full makes a blocking `connect` wait for ever (Linux); the probe
/// still returns, false, after its timeout.
#[tokio::test]
async fn a_socket_whose_backlog_is_full_cannot_hold_the_probe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.sock");
    let socket = tokio::net::UnixSocket::new_stream().unwrap();
    socket.bind(&path).unwrap();
    let _listener = socket.listen(1).unwrap();
    // Connects complete until the backlog is full; the first one that blocks marks it full.
    let mut held = Vec::new();
    loop {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(std::os::unix::net::UnixStream::connect(p));
        });
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(stream)) => held.push(stream),
            Ok(Err(e)) => panic!("connect failed before the backlog filled: {e}"),
            Err(_) => break,
        }
        assert!(held.len() < 64, "the backlog never filled");
    }
    let start = Instant::now();
    let answered = answers(&Endpoint::Unix(path), Duration::from_millis(200));
    let took = start.elapsed();
    assert!(!answered, "a connect that never completes is no answer");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

/// On a machine without a Docker engine (this project's CI and dev machines), the real check says
/// no well within its timeout; with an engine it may say yes, just as fast.
#[test]
fn the_real_engine_check_is_quick() {
    let start = Instant::now();
    let answered = engine_answers();
    let took = start.elapsed();
    assert!(
        took < PROBE_TIMEOUT + Duration::from_millis(500),
        "took {took:?}"
    );
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let endpoint = docker_endpoint(
        std::env::var("DOCKER_HOST").ok().as_deref(),
        xdg.as_deref(),
        home.as_deref(),
        |p| p.exists(),
    );
    if endpoint.is_none() {
        assert!(!answered, "no engine to ask, yet one answered");
    }
    eprintln!("engine {endpoint:?} answered: {answered}, in {took:?}");
}
