//! `--machine-runs`: WebSocket → file in child processes of this binary, each allowed every CPU
//! with its simulator thread unpinned, so load generator and bridge share the machine's cores
//! as `fondo-bridge demo` does. Each child runs `--only file --scenarios ws` and hands its rows
//! back through `--rows-out`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, anyhow};

use crate::args::Args;
use crate::dest::tmp_dir;
use crate::report::lat;
use crate::row::Row;
use crate::summary::MachineRuns;

/// Runs `a.machine_runs` children of `n` events each and appends their rows (a failed run as a
/// failed row, so the summary's count of runs stays honest).
pub async fn run(a: &Args, n: u64, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating fondo-bench")?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all_cpus = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| format!("0-{}", cpus.saturating_sub(1)));
    let taskset = Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    for run in 1..=a.machine_runs {
        eprintln!(
            "file: WebSocket → file on the whole machine (CPUs {all_cpus}), run {run} of {}",
            a.machine_runs
        );
        let dir = tmp_dir("machine")?;
        let out = dir.join("rows.json");
        let cmd = child(a, &exe, taskset.then_some(all_cpus.as_str()), n, &out);
        let got = one(cmd, &out, run).await;
        let _ = std::fs::remove_dir_all(&dir);
        match got {
            Ok(got) => {
                for mut r in got {
                    r.group = "machine".into();
                    r.note = format!("run {run}; CPUs {all_cpus}, simulator unpinned");
                    eprintln!(
                        "  run {run}: {:.0} events/s, receive→ack p50/p99/p99.9 {} ms, SUT cpu {:.2}s, verified {:?}",
                        r.msgs_per_s,
                        lat(&r),
                        r.cpu_s_sut,
                        r.verified
                    );
                    rows.push(r);
                }
            }
            Err(e) => {
                eprintln!("  machine run {run}: FAILED: {e:#}");
                rows.push(Row {
                    scenario: "bridge-ws".into(),
                    sink: "file".into(),
                    group: "machine".into(),
                    events: n,
                    verified: Some(false),
                    note: format!("run {run} FAILED: {e:#}"),
                    ..Row::default()
                });
            }
        }
    }
    if let Some(m) = MachineRuns::of(rows) {
        eprintln!("  {}", m.describe());
    }
    Ok(())
}

/// The child's command line: this run's settings, `--rows-out out`, under `taskset -c cpus`
/// when given.
fn child(a: &Args, exe: &Path, cpus: Option<&str>, n: u64, out: &Path) -> Command {
    let mut cmd = match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args(["--quick", "--only", "file", "--scenarios", "ws"])
        .args(["--events", &n.to_string()])
        .args(["--payload-bytes", &a.payload_bytes.to_string()])
        .args(["--objects", &a.objects.to_string()])
        .args(["--window", &a.window.to_string()])
        .arg("--rows-out")
        .arg(out);
    if let Some(b) = a.bridge_in_flight {
        cmd.args(["--bridge-in-flight", &b.to_string()]);
    }
    if let Some(ms) = a.group_commit_ms {
        cmd.args(["--group-commit-ms", &ms.to_string()]);
    }
    cmd
}

/// Runs one child and reads the rows it wrote.
async fn one(mut cmd: Command, out: &Path, run: u32) -> anyhow::Result<Vec<Row>> {
    let status = tokio::task::spawn_blocking(move || cmd.status())
        .await
        .context("waiting for a machine run")?
        .context("starting a machine run")?;
    if !status.success() {
        return Err(anyhow!("machine run {run} exited with {status}"));
    }
    let bytes = std::fs::read(out).context("reading a machine run's rows")?;
    let rows: Vec<Row> = serde_json::from_slice(&bytes).context("parsing a machine run's rows")?;
    if rows.is_empty() {
        return Err(anyhow!("no row (see the run's output above)"));
    }
    Ok(rows)
}
