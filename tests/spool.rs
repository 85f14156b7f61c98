#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Black-box tests of the durable spool: a real SIGKILL of a process that is appending, torn
//! tails at every possible offset, and many writers at once.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fondo_bridge::metrics::Metrics;
use fondo_bridge::spool::Spool;

#[path = "common/spool_records.rs"]
mod spool_records;

use spool_records::{body, cfg, occ};

fn n_of(payload: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
    v.pointer("/current/seq").unwrap().as_u64().unwrap()
}

/// A child process (`tests/bin/spool_child.rs`) appends to a spool and says which records are
/// durable; it is killed with SIGKILL in the middle of appending, and every record it said was
/// durable and did not release must come back, in order.
#[test]
fn sigkill_while_appending_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_test-spool-child"))
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = HashSet::new();
    let mut released = HashSet::new();
    let mut lines = BufReader::new(stdout).lines();
    let t0 = Instant::now();
    while acked.len() < 3000 {
        assert!(t0.elapsed() < Duration::from_secs(60), "child too slow");
        let Some(Ok(line)) = lines.next() else {
            panic!("child ended early");
        };
        if let Some(n) = line.strip_prefix("ACK ") {
            acked.insert(n.parse::<u64>().unwrap());
        } else if let Some(n) = line.strip_prefix("REL ") {
            released.insert(n.parse::<u64>().unwrap());
        }
    }
    // SIGKILL in the middle of appending.
    child.kill().unwrap();
    child.wait().unwrap();
    // Whatever the child printed after our last read is acknowledged too; reading it is optional.
    for line in lines.map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("ACK ") {
            acked.insert(n.parse::<u64>().unwrap());
        } else if let Some(n) = line.strip_prefix("REL ") {
            released.insert(n.parse::<u64>().unwrap());
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (spool, report) =
            Spool::open(&cfg(dir.path(), 256 * 1024), Arc::new(Metrics::new())).unwrap();
        let replayed: Vec<u64> = spool.replay().map(|r| n_of(&r.unwrap().payload)).collect();
        let set: HashSet<u64> = replayed.iter().copied().collect();
        let missing: Vec<_> = acked.iter().filter(|n| !set.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged records lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        assert!(
            replayed.windows(2).all(|w| w[0] < w[1]),
            "replay out of order"
        );
        // Releases are durable with the next group commit: only those of the last commits before
        // the kill come back (the child releases about 21 records per batch of 64).
        let back_released = released.iter().filter(|n| set.contains(n)).count();
        assert!(released.len() >= 1000, "{} released", released.len());
        assert!(
            back_released <= 256,
            "{back_released} of {} released records replayed",
            released.len()
        );
        // A torn tail, if the kill hit a write, was cut; no later record survived a bad one.
        assert!(report.corrupt_segments <= 1, "{report:?}");
        // Appending after the crash works.
        spool
            .append("c1", "after-crash", body(u64::MAX / 2))
            .await
            .unwrap();
    });
}

#[tokio::test]
async fn torn_tail_at_every_offset_recovers_the_good_prefix() {
    let src = tempfile::tempdir().unwrap();
    {
        let (s, _) = Spool::open(&cfg(src.path(), 1 << 20), Arc::new(Metrics::new())).unwrap();
        for n in 0..3 {
            s.append("c1", &occ(n), body(n)).await.unwrap();
        }
    }
    let seg = std::fs::read_dir(src.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let full = std::fs::read(&seg).unwrap();
    let record = Spool::record_size("c1", &occ(0), &body(0)) as usize;
    let two = full.len() - record;
    // Cut the file at every offset inside the third record: two records always survive.
    for cut in (two..full.len()).step_by(7) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(seg.file_name().unwrap()), &full[..cut]).unwrap();
        let (s, report) = Spool::open(&cfg(dir.path(), 1 << 20), Arc::new(Metrics::new())).unwrap();
        assert_eq!(report.records, 2, "cut at {cut}");
        assert_eq!(
            report.corrupt_segments,
            usize::from(cut > two),
            "cut at {cut}"
        );
        let got: Vec<u64> = s.replay().map(|r| n_of(&r.unwrap().payload)).collect();
        assert_eq!(got, vec![0, 1]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writers_each_see_their_own_order() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(&cfg(dir.path(), 128 * 1024), Arc::new(Metrics::new())).unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..250 {
                    ids.push(
                        s.append(&format!("c{w}"), &occ(w * 1000 + n), body(w * 1000 + n))
                            .await
                            .unwrap(),
                    );
                }
                ids
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        let ids = t.await.unwrap();
        assert!(ids.windows(2).all(|p| p[0] < p[1]));
        all.extend(ids);
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 2000);
    drop(s);
    let (s, report) = Spool::open(&cfg(dir.path(), 128 * 1024), Arc::new(Metrics::new())).unwrap();
    assert_eq!(report.records, 2000);
    let mut per_writer: std::collections::HashMap<String, Vec<u64>> = Default::default();
    for r in s.replay() {
        let r = r.unwrap();
        per_writer
            .entry(r.client_id)
            .or_default()
            .push(n_of(&r.payload));
    }
    assert_eq!(per_writer.len(), 8);
    for (w, ns) in per_writer {
        assert_eq!(ns.len(), 250, "{w}");
        assert!(ns.windows(2).all(|p| p[0] < p[1]), "{w} out of order");
    }
}
