//! Figures over several rows: the raw/core pairs of one broker, the whole-machine runs.

use crate::row::Row;

/// The bridge-core / raw ratio of every pair run for one broker (`main` and `pair-N` rows).
pub struct PairRatios {
    /// Per pair, in run order, in percent.
    ratios: Vec<f64>,
}

impl PairRatios {
    /// `None` unless more than one pair ran.
    pub fn of(rows: &[Row], sink: &str) -> Option<Self> {
        let mut ratios = Vec::new();
        for group in std::iter::once("main".to_owned()).chain((2..=20).map(|i| format!("pair-{i}")))
        {
            let find = |scenario: &str| {
                rows.iter().find(|r| {
                    r.group == group
                        && r.sink == sink
                        && r.scenario == scenario
                        && r.msgs_per_s > 0.0
                })
            };
            if let (Some(raw), Some(core)) = (find("raw"), find("bridge-core")) {
                ratios.push(100.0 * core.msgs_per_s / raw.msgs_per_s);
            }
        }
        (ratios.len() > 1).then_some(Self { ratios })
    }

    fn median(&self) -> f64 {
        median(&self.ratios).unwrap_or(f64::NAN)
    }

    fn min(&self) -> f64 {
        self.ratios.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn describe(&self) -> String {
        let each: Vec<String> = self.ratios.iter().map(|r| format!("{r:.0}%")).collect();
        format!(
            "bridge/raw over {} pairs: {} (median {:.0}%, min {:.0}%)",
            self.ratios.len(),
            each.join(", "),
            self.median(),
            self.min()
        )
    }
}

/// The target of the bridge against the same-job baseline: at least this share of its events/s.
pub const BASELINE_TARGET: f64 = 80.0;

/// `bridge-ws` / `baseline` throughput of one broker's `main` rows, in percent; `None` unless
/// both ran.
pub fn baseline_ratio(rows: &[Row], sink: &str) -> Option<f64> {
    let find = |scenario: &str| {
        rows.iter()
            .find(|r| r.group == "main" && r.sink == sink && r.scenario == scenario)
    };
    let (base, bridge) = (find("baseline")?, find("bridge-ws")?);
    (base.msgs_per_s > 0.0).then(|| 100.0 * bridge.msgs_per_s / base.msgs_per_s)
}

/// The target for WebSocket → file on the whole machine, events/s.
const MACHINE_TARGET: f64 = 50_000.0;

/// The `--machine-runs` rows summed up: the rate of every run, their median and minimum.
pub struct MachineRuns {
    rates: Vec<f64>,
    failed: usize,
    requested: usize,
}

impl MachineRuns {
    /// `None` when no machine run is among `rows`.
    pub fn of(rows: &[Row]) -> Option<Self> {
        let runs: Vec<&Row> = rows.iter().filter(|r| r.group == "machine").collect();
        if runs.is_empty() {
            return None;
        }
        // A run that lost events, or that the broker count does not confirm, counts as failed.
        let rates: Vec<f64> = runs
            .iter()
            .filter(|r| r.verified == Some(true))
            .map(|r| r.msgs_per_s)
            .collect();
        Some(Self {
            failed: runs.len() - rates.len(),
            requested: runs.len(),
            rates,
        })
    }

    pub fn describe(&self) -> String {
        let each: Vec<String> = self.rates.iter().map(|r| format!("{r:.0}")).collect();
        let min = self.rates.iter().copied().reduce(f64::min);
        let met = self.rates.iter().filter(|r| **r >= MACHINE_TARGET).count();
        format!(
            "WebSocket → file, whole machine, {} runs: {} events/s; median {}, minimum {}; \
             {met} of {} at or above {:.0}{}",
            self.requested,
            each.join(", "),
            median(&self.rates).map_or("n/a".into(), |m| format!("{m:.0}")),
            min.map_or("n/a".into(), |m| format!("{m:.0}")),
            self.requested,
            MACHINE_TARGET,
            if self.failed > 0 {
                format!("; {} not verified", self.failed)
            } else {
                String::new()
            }
        )
    }
}

/// The median of `v`; `None` when it is empty.
fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[m]),
        _ => Some((v[m - 1] + v[m]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_even_and_no_runs() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn the_baseline_ratio_is_the_bridges_share_of_the_main_baseline() {
        let row = |group: &str, scenario: &str, rate: f64| Row {
            group: group.into(),
            sink: "nats".into(),
            scenario: scenario.into(),
            msgs_per_s: rate,
            ..Row::default()
        };
        let mut rows = vec![row("main", "baseline", 40_000.0)];
        assert_eq!(baseline_ratio(&rows, "nats"), None);
        rows.push(row("payload", "bridge-ws", 1.0));
        rows.push(row("main", "bridge-ws", 30_000.0));
        assert_eq!(baseline_ratio(&rows, "nats"), Some(75.0));
        assert_eq!(baseline_ratio(&rows, "kafka"), None);
    }

    #[test]
    fn pair_ratios_need_two_pairs() {
        let row = |group: &str, scenario: &str, rate: f64| Row {
            group: group.into(),
            sink: "nats".into(),
            scenario: scenario.into(),
            msgs_per_s: rate,
            ..Row::default()
        };
        let mut rows = vec![row("main", "raw", 100.0), row("main", "bridge-core", 50.0)];
        assert!(PairRatios::of(&rows, "nats").is_none());
        rows.extend([
            row("pair-2", "bridge-core", 80.0),
            row("pair-2", "raw", 100.0),
        ]);
        let p = PairRatios::of(&rows, "nats").unwrap();
        assert_eq!(
            p.describe(),
            "bridge/raw over 2 pairs: 50%, 80% (median 65%, min 50%)"
        );
    }
}
