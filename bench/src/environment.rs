//! The run's circumstances, recorded beside the results: build, machine, load, pinning.

use serde::Serialize;

use crate::args::Args;
use fondo_bridge::telemetry::prom;

#[derive(Serialize)]
pub struct Env {
    /// fondo-bridge's version.
    pub crate_version: String,
    pub git_commit: String,
    pub git_dirty: bool,
    pub rustc: String,
    pub nproc: String,
    pub cpu_model: String,
    pub date_utc: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub cpus_allowed: String,
    pub profile: String,
    pub build: &'static str,
    pub note: String,
}

/// The circumstances at the start of the run (`loadavg_end` is filled in at its end).
pub fn environment(a: &Args) -> Env {
    Env {
        crate_version: bridge_version(),
        git_commit: cmd("git", &["rev-parse", "HEAD"]),
        git_dirty: !cmd("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty(),
        rustc: cmd("rustc", &["-V"]),
        nproc: cmd("nproc", &["--all"]),
        cpu_model: proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
        date_utc: cmd("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
        cpus_allowed: proc_field("/proc/self/status", "Cpus_allowed_list").unwrap_or_default(),
        profile: a.profile().into(),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        note: a.note.clone(),
    }
}

/// The bridge's version, as its metrics report it (`fondo_bridge_build_info{version}`).
fn bridge_version() -> String {
    let text = fondo_bridge::metrics::Metrics::new().encode();
    prom::samples(&text)
        .find(|s| s.name == "fondo_bridge_build_info")
        .and_then(|s| s.label("version").map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The value of the first `key: value` line of `path` whose key starts with `key`.
fn proc_field(path: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    })
}

/// A command's trimmed output, or `unknown`.
fn cmd(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}
