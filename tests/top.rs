//! `fondo-bridge top` in a real terminal: tmux runs it at 160x50 and the test reads the screen
//! with `tmux capture-pane`.
//!
//! `top` starts before anything listens on the admin port, so the screen first says the endpoint
//! is unreachable; then `fondo-bridge demo --admin` starts there, and the same `top` (it kept
//! retrying) shows live figures: events/s above zero for the demo's file sink, the demo's client
//! id connected, and a delivered count that grows between two captures. `q` ends it with exit
//! status 0 and the terminal's main screen back.
//!
//! tmux missing: the test fails under `CI=true` and skips loudly elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_fondo-bridge");
const DEMO_CLIENT: &str = "49ad7378-121c-4a53-9894-dfd14a7b4877";

/// A tmux server of the test's own (its own socket, no user config), killed when dropped, so a
/// failing test leaves no session behind.
struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    fn start(command: &str) -> Self {
        let t = Self {
            socket: common::unique("fondo-top-test"),
            session: common::unique("top"),
        };
        t.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            &t.session,
            "-x",
            "160",
            "-y",
            "50",
            command,
        ]);
        // Keep the pane after its process exits, to read how it exited.
        t.run(&["set-option", "-w", "-t", &t.session, "remain-on-exit", "on"]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("running tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", &self.session])
    }

    /// `Some(exit status)` once the pane's process has exited.
    fn exit_status(&self) -> Option<i32> {
        let out = self.run(&[
            "display-message",
            "-p",
            "-t",
            &self.session,
            "#{pane_dead} #{pane_dead_status}",
        ]);
        let (dead, status) = out.trim().split_once(' ')?;
        (dead == "1").then(|| status.parse().unwrap_or(-1))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The demo process, killed when dropped.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tmux_available() -> bool {
    if Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "tmux is not installed and CI=true: .ci/run installs it"
    );
    eprintln!(
        "\n!!! SKIPPING: tmux is not installed, so `top` cannot be run in a terminal here.\n!!! apt-get install tmux\n"
    );
    false
}

/// The cells of the first screen line whose first cell is `first` (table borders dropped).
fn row(screen: &str, first: &str) -> Option<Vec<String>> {
    screen.lines().find_map(|line| {
        let cells: Vec<String> = line
            .split(|c: char| c.is_whitespace() || c == '│')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        (cells.first().map(String::as_str) == Some(first)).then_some(cells)
    })
}

/// The file sink's (delivered, events/s), when its line shows numbers.
fn files_sink(screen: &str) -> Option<(f64, f64)> {
    let cells = row(screen, "files")?;
    Some((cells.get(1)?.parse().ok()?, cells.get(2)?.parse().ok()?))
}

fn stream_connected(screen: &str) -> bool {
    row(screen, DEMO_CLIENT).is_some_and(|c| c.get(1).map(String::as_str) == Some("connected"))
}

#[tokio::test]
async fn top_shows_a_running_demo_live_and_quits_on_q() {
    if !tmux_available() {
        return;
    }
    let port = common::free_port();
    let admin = format!("127.0.0.1:{port}");
    let out = tempfile::tempdir().unwrap();
    let tmux = Tmux::start(&format!(
        "{BIN} top --admin http://{admin} --interval 500ms"
    ));

    let mut screen = String::new();
    common::eventually(
        "top to say the admin endpoint is unreachable",
        Duration::from_secs(30),
        || {
            screen = tmux.screen();
            screen.contains("unreachable")
        },
    )
    .await;
    assert!(screen.contains(&format!("127.0.0.1:{port}")), "{screen}");
    assert_eq!(tmux.exit_status(), None, "top keeps retrying:\n{screen}");

    let _demo = Demo(
        Command::new(BIN)
            .args(["demo", "--admin", &admin, "--rate", "300"])
            .arg("--out")
            .arg(out.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    common::eventually(
        "live figures on top's screen",
        Duration::from_secs(60),
        || {
            screen = tmux.screen();
            files_sink(&screen).is_some_and(|(_, rate)| rate > 0.0) && stream_connected(&screen)
        },
    )
    .await;
    let (delivered, _) = files_sink(&screen).unwrap();
    assert!(screen.contains("READY"), "{screen}");
    assert!(!screen.contains("unreachable"), "{screen}");
    eprintln!("top's screen:\n{screen}");

    common::eventually(
        "the delivered count to grow",
        Duration::from_secs(30),
        || {
            screen = tmux.screen();
            files_sink(&screen).is_some_and(|(d, _)| d > delivered)
        },
    )
    .await;
    let route = row(&screen, "per-entity").unwrap_or_default();
    assert_eq!(route.get(1).map(String::as_str), Some("files"), "{screen}");

    tmux.run(&["send-keys", "-t", &tmux.session, "q"]);
    let mut status = None;
    common::eventually("top to exit on q", Duration::from_secs(10), || {
        status = tmux.exit_status();
        status.is_some()
    })
    .await;
    assert_eq!(status, Some(0));
    // The terminal's main screen is back: the tables were on the alternate screen.
    let after = tmux.screen();
    assert!(
        !after.contains("Sinks") && !after.contains(DEMO_CLIENT),
        "{after}"
    );
}

#[tokio::test]
async fn ctrl_c_quits_too() {
    if !tmux_available() {
        return;
    }
    let port = common::free_port();
    let tmux = Tmux::start(&format!("{BIN} top --admin http://127.0.0.1:{port}"));
    common::eventually("top to draw", Duration::from_secs(30), || {
        tmux.screen().contains("fondo-bridge top")
    })
    .await;
    tmux.run(&["send-keys", "-t", &tmux.session, "C-c"]);
    let mut status = None;
    common::eventually("top to exit on Ctrl-C", Duration::from_secs(10), || {
        status = tmux.exit_status();
        status.is_some()
    })
    .await;
    assert_eq!(status, Some(0));
}
