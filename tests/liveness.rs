//! `/healthz` of the real binary says whether the process is stuck, not merely whether it
//! answers: with the spool on an ext4 filesystem the test freezes (`fsfreeze`: every write and
//! fsync on it blocks, as on a hung disk), the spool writer thread stops committing while the
//! WebSocket stream keeps bringing events, and `/healthz` turns 503 after `admin.stuck_after_ms`
//! naming the spool writer; thawed, it is 200 again and the stream goes on. Needs root (loop
//! mount, fsfreeze): skipped loudly without, a failure under `CI=true`.
//!
//! The runtime half of the watchdog (a runtime whose threads are blocked stops ticking) is proved
//! by the unit tests in `src/telemetry/admin.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "reliability/support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fondo_bridge::simulator::stream::{self, StreamConfig};
use support::*;

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn run(cmd: &str, args: &[&str], path: &Path) -> bool {
    Command::new(cmd)
        .args(args)
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

/// A small ext4 filesystem in a file, loop-mounted by the test, that it can freeze. Thawed and
/// unmounted when dropped (drop it before anything that may wait for a write to it).
struct FreezableFs {
    at: PathBuf,
    frozen: bool,
}

impl FreezableFs {
    fn mount(image: &Path, at: &Path) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("truncate")
            .args(["-s", "64M"])
            .arg(image)
            .status()
            .is_ok_and(|s| s.success())
            && run("mkfs.ext4", &["-q", "-F"], image)
            && Command::new("mount")
                .args(["-o", "loop"])
                .arg(image)
                .arg(at)
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                !ci(),
                "cannot loop-mount an ext4 image (this test needs root, mkfs.ext4 and fsfreeze)"
            );
            eprintln!("\n!!! SKIPPING: cannot loop-mount an ext4 image (needs root)\n");
            return None;
        }
        Some(Self {
            at: at.to_path_buf(),
            frozen: false,
        })
    }

    fn freeze(&mut self) {
        assert!(
            run("fsfreeze", &["--freeze"], &self.at),
            "fsfreeze --freeze"
        );
        self.frozen = true;
    }

    fn thaw(&mut self) {
        if self.frozen {
            assert!(
                run("fsfreeze", &["--unfreeze"], &self.at),
                "fsfreeze --unfreeze"
            );
            self.frozen = false;
        }
    }
}

impl Drop for FreezableFs {
    fn drop(&mut self) {
        if self.frozen {
            let _ = run("fsfreeze", &["--unfreeze"], &self.at);
        }
        let _ = run("umount", &["-l"], &self.at);
    }
}

/// `GET /healthz`: (status, body).
fn healthz(admin: u16) -> (u16, String) {
    let raw = http_get(admin, "/healthz").unwrap_or_default();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

async fn healthz_becomes(admin: u16, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = blocking(|| healthz(admin));
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz stayed {status} (wanted {want}) for {within:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_while_the_spool_writer_is_stuck_and_recovers_when_it_moves() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sim) = stream::start(StreamConfig {
        rate: 200.0,
        count: Some(1_000_000),
        objects: 50,
        heartbeat: Some(Duration::from_millis(500)),
        client_ids: vec![CID.to_owned()],
        ..StreamConfig::default()
    })
    .await
    .expect("simulator starts");
    let mut cfg = ConfigBuilder::new(
        dir.path(),
        free_port(),
        &format!(
            "{{ type: file, dir: {}/out, fsync: never }}",
            dir.path().display()
        ),
    );
    cfg.ws = Some(sim.base_url());
    let spool_at = dir.path().join("spoolfs");
    cfg.spool = format!("{{ dir: {}/spool }}", spool_at.display());
    let config = cfg.render().replace(
        &format!("admin: {{ listen: 127.0.0.1:{} }}", cfg.admin),
        &format!(
            "admin: {{ listen: 127.0.0.1:{}, stuck_after_ms: 2000 }}",
            cfg.admin
        ),
    );
    assert!(config.contains("stuck_after_ms"), "{config}");
    let Some(mut fs) = FreezableFs::mount(&dir.path().join("spool.img"), &spool_at) else {
        return;
    };
    let mut bridge =
        blocking(|| BridgeProc::start(dir.path(), cfg.admin, &config, &[WS_TOKEN_ENV]));
    // `fs` must be thawed before the bridge is killed (a process blocked on a frozen filesystem
    // cannot exit): the guard below is dropped first.
    let fs_guard = Thaw(&mut fs);
    let received = |b: &BridgeProc| b.metric("fondo_bridge_received_total").unwrap_or(0.0);

    // Events flow; the spool writer commits; healthy.
    common::eventually(
        "the stream flows (100 events received)",
        Duration::from_secs(30),
        || received(&bridge) >= 100.0,
    )
    .await;
    assert_eq!(blocking(|| healthz(bridge.admin)).0, 200);

    // The disk hangs: writes and fsyncs block.
    fs_guard.0.freeze();
    let frozen_at = Instant::now();
    let body = healthz_becomes(bridge.admin, 503, Duration::from_secs(15)).await;
    let after = frozen_at.elapsed();
    eprintln!("LIVENESS: /healthz 503 {after:?} after the freeze: {body}");
    assert!(body.contains("spool writer"), "{body}");
    assert!(
        after >= Duration::from_millis(1500),
        "not before stuck_after_ms (2 s, less the commit in progress): {after:?}"
    );
    // The admin server still answers: only the writer is stuck, and /metrics shows it.
    let pending = bridge.metric("fondo_bridge_spool_writer_pending").unwrap();
    assert!(pending > 0.0, "appends wait for the writer: {pending}");

    // The disk comes back: the writer commits again, healthy again, the stream goes on.
    fs_guard.0.thaw();
    healthz_becomes(bridge.admin, 200, Duration::from_secs(15)).await;
    let before = received(&bridge);
    common::eventually(
        "the stream flows again (100 more events received)",
        Duration::from_secs(30),
        || received(&bridge) >= before + 100.0,
    )
    .await;
    drop(fs_guard);
    bridge.sigterm(Duration::from_secs(20));
}

/// Thaws the filesystem when dropped, before the bridge is.
struct Thaw<'a>(&'a mut FreezableFs);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        if self.0.frozen {
            let _ = run("fsfreeze", &["--unfreeze"], &self.0.at);
            self.0.frozen = false;
        }
    }
}
