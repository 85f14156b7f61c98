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
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fondo-bridge");
const DEMO_CLIENT: &str = "49ad7378-121c-4a53-9894-dfd14a7b4877";

/// A tmux server of the test's own (its own socket, no user config), killed when dropped, so a
/// failing test leaves no session behind.
struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    /// Runs `command` in a new 160x50 session; when it ends, the pane stays to be read.
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

    /// `Some(exit status)` once the pane's process has exited. tmux marks the pane dead when its
    /// terminal closes, and learns the status only when it reaps the process, which it sometimes
    /// does late: until then the status is read from the zombie's `/proc/PID/stat` (Linux).
    fn exit_status(&self) -> Option<i32> {
        let out = self.run(&[
            "display-message",
            "-p",
            "-t",
            &self.session,
            "#{pane_dead}:#{pane_dead_status}:#{pane_pid}",
        ]);
        let mut fields = out.trim().split(':');
        let (dead, status, pid) = (fields.next()?, fields.next()?, fields.next()?);
        if dead != "1" {
            return None;
        }
        status.parse().ok().or_else(|| zombie_exit_status(pid))
    }
}

/// The exit status of process `pid` when it has exited and not been reaped yet.
fn zombie_exit_status(pid: &str) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ... exit_code`: the command may hold spaces, so split after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() != Some(&"Z") {
        return None;
    }
    let wait_status: i32 = fields.last()?.parse().ok()?;
    // As waitpid reports it: the exit code in the second byte, or a signal in the low bits.
    Some(if wait_status & 0x7f == 0 {
        (wait_status >> 8) & 0xff
    } else {
        128 + (wait_status & 0x7f)
    })
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

/// The cells that follow the first cell reading `first` on the screen, on its line (table borders
/// dropped; two tables can share a line).
fn row(screen: &str, first: &str) -> Option<Vec<String>> {
    screen.lines().find_map(|line| {
        let cells: Vec<String> = line
            .split(|c: char| c.is_whitespace() || c == '│')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        let at = cells.iter().position(|c| c == first)?;
        Some(cells[at..].to_vec())
    })
}

/// The file sink's (delivered, events/s), when its line shows numbers.
fn files_sink(screen: &str) -> Option<(f64, f64)> {
    let cells = row(screen, "files")?;
    Some((cells.get(1)?.parse().ok()?, cells.get(2)?.parse().ok()?))
}

/// Captures the screen every 100 ms until `done` holds on it, and returns it; fails the test with
/// the last screen (and `context`, the demo's log) after `within`.
fn wait_for_screen(
    tmux: &Tmux,
    what: &str,
    within: Duration,
    context: &dyn Fn() -> String,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let screen = tmux.screen();
        if done(&screen) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; the screen:\n{screen}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stream_connected(screen: &str) -> bool {
    row(screen, DEMO_CLIENT).is_some_and(|c| c.get(1).map(String::as_str) == Some("connected"))
}

/// Waits for the pane's process to exit; its exit status.
fn wait_for_exit(tmux: &Tmux, what: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = tmux.exit_status() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the pane (dead:status:signal pid): {}; the screen:\n{}",
            tmux.run(&[
                "display-message",
                "-p",
                "-t",
                &tmux.session,
                "#{pane_dead}:#{pane_dead_status}:#{pane_dead_signal} #{pane_pid}"
            ]),
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn top_shows_a_running_demo_live_and_quits_on_q() {
    if !tmux_available() {
        return;
    }
    let port = common::free_port();
    let admin = format!("127.0.0.1:{port}");
    let out = tempfile::tempdir().unwrap();
    let tmux = Tmux::start(&format!(
        "{BIN} top --admin http://{admin} --interval 500ms"
    ));
    let no_log = || String::new();
    let screen = wait_for_screen(
        &tmux,
        "top to say the endpoint is unreachable",
        Duration::from_secs(30),
        &no_log,
        |s| s.contains("unreachable"),
    );
    assert!(screen.contains(&format!("127.0.0.1:{port}")), "{screen}");
    assert_eq!(tmux.exit_status(), None, "top keeps retrying:\n{screen}");

    let log = out.path().join("demo.log");
    let _demo = Demo(
        Command::new(BIN)
            .args(["demo", "--admin", &admin, "--rate", "300"])
            .arg("--out")
            .arg(out.path().join("demo-out"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let demo_log = || {
        format!(
            "the demo's log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };
    let screen = wait_for_screen(
        &tmux,
        "live figures",
        Duration::from_secs(60),
        &demo_log,
        |s| files_sink(s).is_some_and(|(_, rate)| rate > 0.0) && stream_connected(s),
    );
    let (delivered, _) = files_sink(&screen).unwrap();
    assert!(
        screen.contains("READY") && !screen.contains("unreachable"),
        "{screen}"
    );
    eprintln!("top's screen:\n{screen}");

    let screen = wait_for_screen(
        &tmux,
        "the delivered count to grow",
        Duration::from_secs(30),
        &demo_log,
        |s| files_sink(s).is_some_and(|(d, _)| d > delivered),
    );
    let route = row(&screen, "per-entity").unwrap_or_default();
    assert_eq!(route.get(1).map(String::as_str), Some("files"), "{screen}");

    tmux.run(&["send-keys", "-t", &tmux.session, "q"]);
    assert_eq!(wait_for_exit(&tmux, "top to exit on q"), 0);
    // The terminal's main screen is back: the tables were on the alternate screen.
    let after = tmux.screen();
    assert!(
        !after.contains("Sinks") && !after.contains(DEMO_CLIENT),
        "{after}"
    );
}

#[test]
fn ctrl_c_quits_too() {
    if !tmux_available() {
        return;
    }
    let port = common::free_port();
    let tmux = Tmux::start(&format!("{BIN} top --admin http://127.0.0.1:{port}"));
    wait_for_screen(
        &tmux,
        "top to draw",
        Duration::from_secs(30),
        &String::new,
        |s| s.contains("fondo-bridge top"),
    );
    tmux.run(&["send-keys", "-t", &tmux.session, "C-c"]);
    assert_eq!(wait_for_exit(&tmux, "top to exit on Ctrl-C"), 0);
}
