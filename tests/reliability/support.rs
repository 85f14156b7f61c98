//! Shared by the reliability scenarios (`tests/reliability.rs`): private brokers on free ports, the
//! real `fondo-bridge` binary as a child process, a metrics/RSS/fd sampler, independent consumers
//! (async-nats, lapin, rdkafka: never the bridge's own sink code) and the checker that compares what
//! arrived with what the simulator sent.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fondo_bridge::simulator::generator::{event_seq, object_key};
use futures::StreamExt as _;
use serde_json::Value;

pub const CID: &str = "49ad7378-121c-4a53-9894-dfd14a7b4877";

// ---------------------------------------------------------------------------------------------
// environment

pub fn ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// A tool a scenario needs. Missing: under `CI=true` the test fails; elsewhere it is skipped loudly.
pub fn tool(name: &str, candidates: &[PathBuf]) -> Option<PathBuf> {
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Some(p.clone());
    }
    assert!(
        !ci(),
        "{name} is not installed and CI=true: scripts/setup.sh installs it (tried {candidates:?})"
    );
    eprintln!(
        "\n!!! SKIPPING: {name} not found (tried {candidates:?}).\n!!! Run scripts/setup.sh to install the brokers the reliability suite needs.\n"
    );
    None
}

pub fn nats_server_bin() -> Option<PathBuf> {
    let mut c: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .collect()
        })
        .unwrap_or_default();
    c.push("/usr/sbin/nats-server".into());
    tool("nats-server", &c)
}

pub fn rabbitmq_available() -> bool {
    tool(
        "rabbitmq-server",
        &[
            "/usr/lib/rabbitmq/bin/rabbitmq-server".into(),
            "/usr/sbin/rabbitmq-server".into(),
        ],
    )
    .is_some()
}

pub fn tansu_bin() -> Option<PathBuf> {
    let mut c = Vec::new();
    if let Some(t) = std::env::var_os("TANSU") {
        c.push(PathBuf::from(t));
    }
    if let Some(p) = std::env::var_os("PATH") {
        c.extend(std::env::split_paths(&p).map(|d| d.join("tansu")));
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(h) = cargo_home {
        c.push(h.join("bin/tansu"));
    }
    tool("tansu (Kafka-protocol broker)", &c)
}

pub use crate::common::free_port;

pub fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} {pid} failed");
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// private brokers

/// A nats-server with JetStream owned by one test: its own port and store directory.
pub struct NatsServer {
    bin: PathBuf,
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> Option<Self> {
        let bin = nats_server_bin()?;
        let mut s = Self {
            bin,
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        s.spawn();
        Some(s)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("nats-server running").id()
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js"])
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !accepts(self.port) {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful stop (SIGTERM), waits until the process is gone; the store is kept.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if c.try_wait().unwrap().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGSTOP: the port still accepts connections (the kernel's backlog), nothing answers.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = signal_quiet(c.id(), "CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal_quiet(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A RabbitMQ node owned by one test (`scripts/rabbitmq-node.sh`), on free ports, in a temp dir.
pub struct RabbitNode {
    pub name: String,
    pub port: u16,
    dist: u16,
    base: tempfile::TempDir,
}

impl RabbitNode {
    pub fn start() -> Option<Self> {
        if !rabbitmq_available() {
            return None;
        }
        let n = Self {
            name: format!("fbrel{}x{}", std::process::id(), free_port()),
            port: free_port(),
            dist: free_port(),
            base: tempfile::tempdir().unwrap(),
        };
        n.up();
        Some(n)
    }

    fn script(&self, args: &[&str]) {
        let t = Instant::now();
        let out = Command::new(repo().join("scripts/rabbitmq-node.sh"))
            .args(args)
            .env("FONDO_RABBITMQ_BASE", self.base.path())
            .output()
            .expect("run scripts/rabbitmq-node.sh");
        assert!(
            out.status.success(),
            "rabbitmq-node.sh {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("rabbitmq-node.sh {} took {:?}", args[0], t.elapsed());
    }

    pub fn up(&self) {
        self.script(&[
            "start",
            &self.name,
            &self.port.to_string(),
            &self.dist.to_string(),
        ]);
    }

    /// Graceful stop (`rabbitmqctl stop`); durable queues and persistent messages are kept.
    pub fn stop(&self) {
        self.script(&["stop", &self.name]);
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/rabbitmq-node.sh"))
            .args(["wipe", &self.name])
            .env("FONDO_RABBITMQ_BASE", self.base.path())
            .output();
    }
}

/// A tansu broker owned by one test (`scripts/kafka-broker.sh`), memory storage: a stop forgets
/// every topic and record.
pub struct Tansu {
    pub port: u16,
    bin: PathBuf,
    run_dir: tempfile::TempDir,
}

impl Tansu {
    pub fn start() -> Option<Self> {
        let bin = tansu_bin()?;
        let t = Self {
            port: free_port(),
            bin,
            run_dir: tempfile::tempdir().unwrap(),
        };
        t.up();
        Some(t)
    }

    fn script(&self, args: &[&str]) {
        let out = Command::new(repo().join("scripts/kafka-broker.sh"))
            .args(args)
            .env("FONDO_BRIDGE_RUN_DIR", self.run_dir.path())
            .env("TANSU", &self.bin)
            .output()
            .expect("run scripts/kafka-broker.sh");
        assert!(
            out.status.success(),
            "kafka-broker.sh {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn up(&self) {
        self.script(&["start", &self.port.to_string()]);
    }

    pub fn stop(&self) {
        self.script(&["stop", &self.port.to_string()]);
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/kafka-broker.sh"))
            .args(["stop", &self.port.to_string()])
            .env("FONDO_BRIDGE_RUN_DIR", self.run_dir.path())
            .output();
    }
}

// ---------------------------------------------------------------------------------------------
// the bridge, as a child process

pub struct BridgeProc {
    child: Option<Child>,
    pub admin: u16,
    pub dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    /// The running child's pid (0 while none runs), for the sampler.
    pub pid: Arc<AtomicU32>,
    pub starts: u32,
}

impl BridgeProc {
    /// Writes `config` to `dir/bridge.yaml` and starts `fondo-bridge run` with it.
    pub fn start(dir: &Path, admin: u16, config: &str, env: &[(&str, &str)]) -> Self {
        let path = dir.join("bridge.yaml");
        std::fs::write(&path, config).unwrap();
        let mut b = Self {
            child: None,
            admin,
            dir: dir.to_path_buf(),
            config: path,
            log: dir.join("bridge.log"),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            pid: Arc::new(AtomicU32::new(0)),
            starts: 0,
        };
        b.spawn();
        b
    }

    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "bridge already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fondo-bridge"))
            .args(["run", "--config"])
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start fondo-bridge");
        self.pid.store(child.id(), Ordering::SeqCst);
        self.child = Some(child);
        self.starts += 1;
        self.wait_healthy(Duration::from_secs(30));
    }

    pub fn wait_healthy(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(body) = http_get(self.admin, "/healthz")
                && (body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"))
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Some(st) = c.try_wait().unwrap()
            {
                panic!(
                    "fondo-bridge exited during start ({st}); log tail:\n{}",
                    self.log_tail(30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "fondo-bridge not healthy on admin port {}; log tail:\n{}",
                self.admin,
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn os_pid(&self) -> u32 {
        self.child.as_ref().expect("bridge running").id()
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            self.pid.store(0, Ordering::SeqCst);
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for the exit code (the drain is bounded by `drain_timeout_ms`).
    pub fn sigterm(&mut self, within: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        self.pid.store(0, Ordering::SeqCst);
        signal(c.id(), "TERM");
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metric(&self, name: &str) -> Option<f64> {
        http_get(self.admin, "/metrics").map(|t| metric_sum(&t, name))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for BridgeProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- fondo-bridge log tail ---\n{}", self.log_tail(40));
        }
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1:port; the whole response (status line included).
/// Events the bridge's runs replayed from the spool, summed over its log's start-up lines.
pub fn spool_replayed(bridge: &BridgeProc) -> u64 {
    bridge
        .log_text()
        .lines()
        .filter(|l| l.contains("replayed unreleased events from the spool"))
        .filter_map(|l| {
            l.split("events=")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// Waits until the bridge holds nothing (spool empty, nothing in flight), at most `within`.
/// After a SIGKILL some stream events are gone for good, so "everything arrived" cannot end a
/// wait; an idle bridge can.
pub async fn wait_idle(bridge: &BridgeProc, within: Duration) {
    let t0 = Instant::now();
    loop {
        let left = bridge.metric("fondo_bridge_spool_events").unwrap_or(-1.0)
            + bridge.metric("fondo_bridge_in_flight").unwrap_or(-1.0);
        if left == 0.0 {
            return;
        }
        assert!(
            t0.elapsed() < within,
            "the bridge still holds {left} events"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf)
}

/// The sum of every sample of a Prometheus metric (all label sets).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A tmpfs of a fixed size mounted by the test (root is needed), so a disk really fills:
/// unmounted (lazily) when dropped. `None` where it cannot be mounted (a loud skip; under `CI=true`
/// the test fails instead).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, kib: u64) -> Option<Self> {
        std::fs::create_dir_all(at).expect("create the mount point");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={kib}k,mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                !ci(),
                "cannot mount a {kib} KiB tmpfs at {} (the disk-full test needs root)",
                at.display()
            );
            eprintln!("\n!!! SKIPPING: cannot mount a tmpfs (needs root)\n");
            return None;
        }
        Some(Self(at.to_path_buf()))
    }
}

impl Tmpfs {
    /// Gives the filesystem a new size (`mount -o remount,size=`): room again for a full disk.
    pub fn resize(&self, kib: u64) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={kib}k")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot resize the tmpfs at {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

// ---------------------------------------------------------------------------------------------
// sampling the bridge while it runs

#[derive(Debug, Clone)]
pub struct Sample {
    pub t: Instant,
    pub pid: u32,
    pub published: Option<f64>,
    pub in_flight: Option<f64>,
    pub spool_bytes: Option<f64>,
    pub rss_kb: Option<u64>,
    pub fds: Option<u64>,
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Sample>>>,
}

impl Sampler {
    pub fn start(admin: u16, pid: Arc<AtomicU32>, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            while !s.load(Ordering::SeqCst) {
                let p = pid.load(Ordering::SeqCst);
                let t = Instant::now();
                let text = if p == 0 {
                    None
                } else {
                    http_get(admin, "/metrics")
                };
                let m = |n: &str| text.as_deref().map(|t| metric_sum(t, n));
                out.push(Sample {
                    t,
                    pid: p,
                    published: m("fondo_bridge_published_total"),
                    in_flight: m("fondo_bridge_in_flight"),
                    spool_bytes: m("fondo_bridge_spool_bytes"),
                    rss_kb: (p != 0).then(|| rss_kb(p)).flatten(),
                    fds: (p != 0).then(|| open_fds(p)).flatten(),
                });
                std::thread::sleep(every);
            }
            out
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

pub fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Time from `t` until the bridge was seen confirming publishes again: the first sample after `t`
/// whose `published_total` is above that process's value at `t` (0 for a process started after).
pub fn recovery_after(samples: &[Sample], t: Instant) -> Option<Duration> {
    let mut base: HashMap<u32, f64> = HashMap::new();
    for s in samples.iter().filter(|s| s.t <= t) {
        if let Some(p) = s.published {
            base.insert(s.pid, p);
        }
    }
    samples
        .iter()
        .filter(|s| s.t > t)
        .find(|s| {
            s.published
                .is_some_and(|p| p > base.get(&s.pid).copied().unwrap_or(0.0))
        })
        .map(|s| s.t - t)
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

// ---------------------------------------------------------------------------------------------
// the checker

/// An event's identity in the simulator's stream: the object it is about and its order number.
pub fn identity(body: &[u8]) -> Option<(String, u64)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    Some((object_key(&v)?, event_seq(&v)?))
}

#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub sent: usize,
    /// Distinct sent events found at the destination(s).
    pub delivered: usize,
    /// Extra copies beyond the first.
    pub duplicated: usize,
    pub lost: usize,
    /// Found, but only as a dead letter.
    pub dead_lettered: usize,
    /// A first copy of an event arriving after a later event of the same object.
    pub order_violations: usize,
    /// Found with different bytes than sent.
    pub corrupted: usize,
    /// Found but never sent.
    pub unexpected: usize,
    /// Indexes (in send order) of the lost events.
    pub lost_indexes: Vec<usize>,
}

/// Compares what the simulator sent (in send order) with what arrived at the main destination (in
/// arrival order; per key that order is the broker's) and, optionally, as dead letters.
pub fn tally(sent: &[Bytes], got: &[Bytes], dead: &[Bytes]) -> Tally {
    let mut index: HashMap<(String, u64), usize> = HashMap::with_capacity(sent.len());
    for (i, b) in sent.iter().enumerate() {
        let id = identity(b).expect("the simulator sends identifiable events");
        assert!(index.insert(id, i).is_none(), "simulator sent a duplicate");
    }
    let mut t = Tally {
        sent: sent.len(),
        ..Tally::default()
    };
    let mut seen = vec![0usize; sent.len()];
    let mut max_seq: HashMap<String, u64> = HashMap::new();
    for b in got {
        let Some((key, seq)) = identity(b) else {
            t.unexpected += 1;
            continue;
        };
        let Some(&i) = index.get(&(key.clone(), seq)) else {
            t.unexpected += 1;
            continue;
        };
        if sent[i] != *b {
            t.corrupted += 1;
        }
        seen[i] += 1;
        if seen[i] == 1 {
            let m = max_seq.entry(key).or_insert(0);
            if seq < *m {
                t.order_violations += 1;
            }
            *m = (*m).max(seq);
        }
    }
    let mut dead_seen = vec![false; sent.len()];
    for b in dead {
        if let Some(i) = identity(b).and_then(|id| index.get(&id).copied()) {
            dead_seen[i] = true;
        } else {
            t.unexpected += 1;
        }
    }
    for i in 0..sent.len() {
        match seen[i] {
            0 if dead_seen[i] => t.dead_lettered += 1,
            0 => {
                t.lost += 1;
                t.lost_indexes.push(i);
            }
            n => {
                t.delivered += 1;
                t.duplicated += n - 1;
            }
        }
    }
    t
}

/// `true` once every sent event is at the destination or dead-lettered.
pub fn complete(sent: &[Bytes], got: &[Bytes], dead: &[Bytes]) -> bool {
    let want: std::collections::HashSet<(String, u64)> =
        sent.iter().filter_map(|b| identity(b)).collect();
    let have: std::collections::HashSet<(String, u64)> = got
        .iter()
        .chain(dead.iter())
        .filter_map(|b| identity(b))
        .collect();
    want.is_subset(&have)
}

/// The identities a collector still waits for; fed with every message read.
pub struct Want {
    missing: std::collections::HashSet<(String, u64)>,
}

impl Want {
    /// Every event of `sent` that is not already in `have`.
    pub fn of(sent: &[Bytes], have: &[Bytes]) -> Self {
        let mut missing: std::collections::HashSet<(String, u64)> =
            sent.iter().filter_map(|b| identity(b)).collect();
        for b in have {
            if let Some(id) = identity(b) {
                missing.remove(&id);
            }
        }
        Self { missing }
    }

    /// Nothing in particular: read until the source has nothing more.
    pub fn drain() -> Self {
        Self {
            missing: Default::default(),
        }
    }

    pub fn feed(&mut self, body: &[u8]) {
        if !self.missing.is_empty()
            && let Some(id) = identity(body)
        {
            self.missing.remove(&id);
        }
    }

    pub fn done(&self) -> bool {
        self.missing.is_empty()
    }
}

/// The original bodies inside dead letters (JSON objects with `body`).
pub fn dead_letter_bodies(records: &[Bytes]) -> Vec<Bytes> {
    records
        .iter()
        .filter_map(|r| {
            let v: Value = serde_json::from_slice(r).ok()?;
            Some(Bytes::from(v.get("body")?.as_str()?.to_owned()))
        })
        .collect()
}

/// Dead letters in the fallback file, as original bodies.
pub fn fallback_bodies(path: &Path) -> Vec<Bytes> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<Bytes> = text.lines().map(|l| Bytes::from(l.to_owned())).collect();
    dead_letter_bodies(&lines)
}

// ---------------------------------------------------------------------------------------------
// the result record

#[derive(Debug, Clone)]
pub struct Record {
    pub scenario: String,
    pub broker: String,
    pub tally: Tally,
    pub recovery: Option<Duration>,
    pub elapsed: Duration,
    pub notes: String,
}

impl Record {
    pub fn emit(&self) {
        let t = &self.tally;
        let rec = self
            .recovery
            .map_or_else(|| "-".to_owned(), |d| format!("{:.2}s", d.as_secs_f64()));
        println!(
            "RELIABILITY scenario={} broker={} sent={} delivered={} duplicated={} lost={} dead_lettered={} order_violations={} recovery={} elapsed={:.1}s {}",
            self.scenario,
            self.broker,
            t.sent,
            t.delivered,
            t.duplicated,
            t.lost,
            t.dead_lettered,
            t.order_violations,
            rec,
            self.elapsed.as_secs_f64(),
            self.notes
        );
        if let Ok(path) = std::env::var("FONDO_BRIDGE_RELIABILITY_REPORT") {
            let json = serde_json::json!({
                "scenario": self.scenario,
                "broker": self.broker,
                "sent": t.sent,
                "delivered": t.delivered,
                "duplicated": t.duplicated,
                "lost": t.lost,
                "dead_lettered": t.dead_lettered,
                "order_violations": t.order_violations,
                "corrupted": t.corrupted,
                "unexpected": t.unexpected,
                "recovery_s": self.recovery.map(|d| d.as_secs_f64()),
                "elapsed_s": self.elapsed.as_secs_f64(),
                "notes": self.notes,
            });
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .expect("open FONDO_BRIDGE_RELIABILITY_REPORT");
            writeln!(f, "{json}").unwrap();
        }
    }

    /// The assertions every scenario shares: nothing lost, nothing corrupted or invented, order per
    /// object kept.
    pub fn assert_sound(&self) {
        self.assert_sound_but(true);
    }

    /// As [`Self::assert_sound`]; `order: false` for webhook senders that retry concurrently (a
    /// retried event legitimately arrives after later events of its object).
    pub fn assert_sound_but(&self, order: bool) {
        let t = &self.tally;
        assert!(t.sent > 0, "{}: nothing was sent", self.scenario);
        assert_eq!(
            t.lost,
            0,
            "{}: {} events lost, e.g. send indexes {:?}",
            self.scenario,
            t.lost,
            &t.lost_indexes[..t.lost_indexes.len().min(10)]
        );
        assert_eq!(t.corrupted, 0, "{}: bytes changed", self.scenario);
        assert_eq!(t.unexpected, 0, "{}: unknown messages", self.scenario);
        assert!(
            !order || t.order_violations == 0,
            "{}: order per object broken",
            self.scenario
        );
    }
}

// ---------------------------------------------------------------------------------------------
// independent consumers

/// A JetStream stream capturing `subject`, file storage (survives a server restart).
pub async fn nats_stream(url: &str, name: &str, subject: &str) {
    nats_stream_window(url, name, subject, Duration::from_secs(120)).await;
}

/// [`nats_stream`] with a duplicate window of its own (a short one keeps every re-publication).
pub async fn nats_stream_window(url: &str, name: &str, subject: &str, window: Duration) {
    let client = async_nats::connect(url).await.expect("connect to nats");
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: window,
        ..Default::default()
    })
    .await
    .expect("create stream");
}

/// The stream's state (messages, first and last sequence), for reports.
pub async fn nats_stream_state(url: &str, name: &str) -> String {
    let client = async_nats::connect(url).await.expect("connect to nats");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(name).await.expect("stream exists");
    let st = &stream.info().await.expect("stream info").state;
    format!(
        "messages={} first_seq={} last_seq={} deleted={:?}",
        st.messages, st.first_sequence, st.last_sequence, st.deleted_count
    )
}

/// Reads stream `name` from the start until `done(messages so far)` or `timeout`; stream order.
pub async fn nats_collect(url: &str, name: &str, timeout: Duration, mut want: Want) -> Vec<Bytes> {
    use async_nats::jetstream::consumer;
    let client = async_nats::connect(url).await.expect("connect to nats");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(name).await.expect("stream exists");
    let c: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("create pull consumer");
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    loop {
        let mut batch = c
            .batch()
            .max_messages(1000)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .expect("fetch");
        let mut n = 0;
        while let Some(m) = batch.next().await {
            let p = m.expect("message").payload.clone();
            want.feed(&p);
            got.push(p);
            n += 1;
        }
        if n < 1000 && (want.done() || Instant::now() > deadline) {
            return got;
        }
    }
}

/// A durable topic exchange and a durable queue bound to it with `binding`.
pub async fn rabbit_topology(url: &str, exchange: &str, queue: &str, binding: &str) {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .expect("connect to rabbitmq");
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        exchange.into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        binding.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _ = conn.close(200, "ok".into()).await;
}

/// Consumes `queue` (auto-ack) until `done(messages so far)` or `timeout`; queue order.
pub async fn rabbit_collect(
    url: &str,
    queue: &str,
    timeout: Duration,
    mut want: Want,
) -> Vec<Bytes> {
    use lapin::options::BasicConsumeOptions;
    use lapin::types::FieldTable;
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .expect("connect to rabbitmq");
    let ch = conn.create_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "reliability-checker".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut got: Vec<Bytes> = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(500), consumer.next()).await {
            Ok(Some(Ok(d))) => {
                want.feed(&d.data);
                got.push(Bytes::from(d.data));
                if !want.done() && Instant::now() < deadline {
                    continue;
                }
            }
            Ok(Some(Err(e))) => panic!("consumer error: {e}"),
            Ok(None) => break,
            Err(_) => {}
        }
        // Stop once nothing more is missing and the queue went quiet, or at the deadline.
        if want.done() || Instant::now() > deadline {
            // Read what is still queued (duplicates) for a short while.
            while let Ok(Some(Ok(d))) =
                tokio::time::timeout(Duration::from_millis(300), consumer.next()).await
            {
                got.push(Bytes::from(d.data));
            }
            break;
        }
    }
    let _ = conn.close(200, "ok".into()).await;
    got
}

pub async fn kafka_create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("kafka admin client");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(5))),
            )
            .await;
        match r {
            Ok(rs)
                if rs.iter().all(|r| match r {
                    Ok(_) => true,
                    Err((_, e)) => *e == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                }) =>
            {
                return;
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "cannot create topic {topic}: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Reads `topic` from the beginning until `done(messages so far)` or `timeout`. Messages are
/// grouped per partition in offset order (a key lives on one partition, so order per key holds).
pub async fn kafka_collect(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    mut want: Want,
) -> Vec<Bytes> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("reliability-{}-{}", std::process::id(), free_port()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .create()
        .expect("kafka consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut per_partition: std::collections::BTreeMap<i32, Vec<Bytes>> = Default::default();
    let mut idle = 0;
    loop {
        match tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            Ok(Ok(m)) => {
                let p = Bytes::copy_from_slice(m.payload().unwrap_or_default());
                want.feed(&p);
                per_partition.entry(m.partition()).or_default().push(p);
                idle = 0;
            }
            Ok(Err(e)) => eprintln!("kafka consumer: {e}"),
            Err(_) => idle += 1,
        }
        // Done: nothing missing and the topic quiet for a second (late duplicates), or deadline.
        if (want.done() && idle >= 2) || Instant::now() > deadline {
            return per_partition.into_values().flatten().collect();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// config

/// A bridge config: the WebSocket source (when `ws` is set), the webhook source (when `webhook` is
/// set), one sink named `main` (`sink_yaml`, a flow mapping), every event type to `topic`.
pub struct ConfigBuilder {
    pub ws: Option<String>,
    pub webhook: Option<u16>,
    pub sink_yaml: String,
    pub topic: String,
    pub admin: u16,
    pub dir: PathBuf,
    pub dead_letter: String,
    pub delivery: String,
    pub spool: String,
    pub extra_ws: String,
    /// More destinations of the one route, as YAML flow mappings (`, { sink: main, topic: x }`).
    pub extra_destinations: String,
    /// More sinks, as YAML lines under `sinks:` (`  other: { type: nats, ... }\n`).
    pub extra_sinks: String,
}

impl ConfigBuilder {
    pub fn new(dir: &Path, admin: u16, sink_yaml: &str) -> Self {
        Self {
            ws: None,
            webhook: None,
            sink_yaml: sink_yaml.to_owned(),
            topic: "fondo.events".into(),
            admin,
            dir: dir.to_path_buf(),
            dead_letter: format!(
                "{{ fallback_file: {}/dead-letter.jsonl }}",
                dir.display()
            ),
            delivery: "{ max_attempts: 1000, backoff_initial_ms: 50, backoff_max_ms: 1000, max_in_flight: 5000, drain_timeout_ms: 5000 }".into(),
            spool: format!("{{ dir: {}/spool }}", dir.display()),
            extra_ws: String::new(),
            extra_destinations: String::new(),
            extra_sinks: String::new(),
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::from("sources:\n");
        if let Some(url) = &self.ws {
            s.push_str(&format!(
                "  websocket:\n    url: {url}\n    client_ids: [{CID}]\n    heartbeat_timeout_ms: 3000\n    reconnect_initial_ms: 100\n    reconnect_max_ms: 1000\n{}",
                self.extra_ws
            ));
        }
        if let Some(port) = self.webhook {
            s.push_str(&format!(
                "  webhook:\n    listen: 127.0.0.1:{port}\n    signature: {{ scheme: standard-webhooks }}\n    ack_timeout_ms: 3000\n"
            ));
        }
        s.push_str(&format!(
            "sinks:\n  main: {}\n{}routes:\n  - {{ name: all, match: [\"*\"], to: [{{ sink: main, topic: \"{}\" }}{}] }}\n",
            self.sink_yaml, self.extra_sinks, self.topic, self.extra_destinations
        ));
        s.push_str(&format!(
            "dead_letter: {}\ndelivery: {}\nspool: {}\nadmin: {{ listen: 127.0.0.1:{} }}\ntelemetry: {{ log_level: info }}\n",
            self.dead_letter, self.delivery, self.spool, self.admin
        ));
        s
    }
}

/// A sender that retries like Fondo (until a 2xx, backing off from `initial` to `max`) to the
/// bridge's webhook on `port`, signed with [`WEBHOOK_SECRET`].
pub fn fondo_sender(
    port: u16,
    concurrency: usize,
    initial: Duration,
    max: Duration,
) -> fondo_bridge::simulator::webhook_sender::WebhookSender {
    use fondo_bridge::simulator::webhook_sender::{SenderOptions, Signer, WebhookSender};
    let mut opts = SenderOptions::new(
        format!("http://127.0.0.1:{port}/fondo/webhooks/callback"),
        Signer::standard(WEBHOOK_SECRET).unwrap(),
    );
    opts.concurrency = concurrency;
    opts.max_attempts = 10_000;
    opts.backoff_initial = initial;
    opts.backoff_max = max;
    opts.request_timeout = Duration::from_secs(10);
    WebhookSender::new(opts).unwrap()
}

pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const WS_TOKEN_ENV: (&str, &str) = ("FONDO_BRIDGE__SOURCES__WEBSOCKET__TOKEN", "sim-token");
pub const WEBHOOK_SECRETS_ENV: &str = "FONDO_BRIDGE__SOURCES__WEBHOOK__SIGNATURE__SECRETS";
