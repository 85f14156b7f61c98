//! CPU time and memory of this process, from `/proc`.

/// Clock ticks per second, the unit of `/proc/*/stat`'s CPU times.
pub fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// utime+stime in seconds from a `/proc/.../stat` file.
fn stat_cpu(path: &str, tck: f64) -> f64 {
    let Ok(s) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // after ")": state is field 3 → index 0; utime field 14 → index 11; stime → 12
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (get(11) + get(12)) / tck
}

/// A `kB` field of `/proc/self/status`, e.g. `VmHWM:`.
fn status_kb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// Peak resident memory (`VmHWM`) in MB since the last [`reset_peak_rss`].
pub fn peak_rss_mb() -> f64 {
    status_kb("VmHWM:") / 1024.0
}

/// Resets `VmHWM` to the current RSS (`/proc/self/clear_refs`).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// CPU seconds of the process and of the simulator's thread since [`CpuMeter::start`].
pub struct CpuMeter {
    tck: f64,
    sim_tid: Option<String>,
    p0: f64,
    s0: f64,
}

impl CpuMeter {
    fn sim_path(&self) -> Option<String> {
        self.sim_tid
            .as_ref()
            .map(|t| format!("/proc/self/task/{t}/stat"))
    }

    pub fn start(tck: f64, sim_tid: Option<String>) -> Self {
        let mut m = Self {
            tck,
            sim_tid,
            p0: 0.0,
            s0: 0.0,
        };
        m.p0 = stat_cpu("/proc/self/stat", tck);
        m.s0 = m.sim_path().map(|p| stat_cpu(&p, tck)).unwrap_or(0.0);
        m
    }

    /// (process, simulator thread) CPU seconds since start.
    pub fn read(&self) -> (f64, f64) {
        let p = stat_cpu("/proc/self/stat", self.tck) - self.p0;
        let s = self
            .sim_path()
            .map(|p| stat_cpu(&p, self.tck) - self.s0)
            .unwrap_or(0.0);
        (p, s.max(0.0))
    }
}
