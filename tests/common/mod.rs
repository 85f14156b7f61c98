//! Shared by the black-box tests: where the real brokers are, unique names, free ports, and
//! `eventually` (poll a condition until it holds or a deadline passes).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod containers;
pub mod messages;
pub mod rig;

/// The address of a real broker for tests (`KAFKA`, `AMQP`, `NATS`, `REDIS`): from
/// `FONDO_BRIDGE_TEST_<NAME>`; else, when a Docker engine answers, from a container started (or
/// reused) through testcontainers (see [`containers`]).
///
/// Neither: under `CI=true` this panics (CI must never be green without testing); elsewhere it
/// prints a loud message and returns `None`, and the test returns early.
pub fn broker(name: &str) -> Option<String> {
    let var = format!("FONDO_BRIDGE_TEST_{name}");
    let source = containers::decide(
        std::env::var(&var).ok().as_deref(),
        containers::Broker::from_name(name),
        containers::fallback_enabled(std::env::var(containers::SWITCH_VAR).ok().as_deref()),
        containers::engine_answers,
    );
    match source {
        containers::Source::Env(v) => Some(v),
        containers::Source::Container(b) => Some(containers::address(b)),
        containers::Source::Missing => {
            let ci = std::env::var("CI")
                .map(|v| v == "true" || v == "1")
                .unwrap_or(false);
            assert!(
                !ci,
                "{var} is not set and CI=true: the README's test command starts the brokers and sets it"
            );
            eprintln!(
                "\n!!! SKIPPING: {var} is not set and no Docker engine answers, so this test has no real broker to run against.\n!!! Run the tests with scripts/test.sh (see README) to start the brokers, or start Docker.\n"
            );
            None
        }
    }
}

/// A name unique to this test run, for topics, queues, streams.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    )
}

/// A loopback port nobody listens on at the moment of asking (for a server a test starts, or for
/// "nothing listens here").
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 20 ms until it holds; fails the test, naming `what`, after `within`.
pub async fn eventually(what: &str, within: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// [`eventually`] for a condition that must await (a broker or an HTTP round trip): polled every
/// 100 ms.
pub async fn eventually_async<F: std::future::Future<Output = bool>>(
    what: &str,
    within: std::time::Duration,
    mut check: impl FnMut() -> F,
) {
    let deadline = std::time::Instant::now() + within;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
