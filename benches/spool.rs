//! Spool append + fsync throughput (group commit): `batch` appends are queued at once and awaited,
//! then released, for 1 KB and 2 KB records, with `group_commit_ms` 0 (no pacing) and 5 (the
//! default). With batch 1 every record pays a whole fsync; larger batches share one. The spool lives in `FONDO_BRIDGE_BENCH_DIR` (default: the system temp dir),
//! so measure on the disk the bridge will use.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fondo_bridge::config::SpoolConfig;
use fondo_bridge::group_commit::Pace;
use fondo_bridge::metrics::Metrics;
use fondo_bridge::spool::Spool;

fn payload(len: usize) -> Bytes {
    let mut s =
        String::from("{\"eventType\":\"order.update\",\"current\":{\"id\":\"o1\",\"pad\":\"");
    while s.len() + 3 < len {
        s.push('x');
    }
    s.push_str("\"}}");
    Bytes::from(s)
}

fn bench_spool(c: &mut Criterion) {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let base = std::env::var_os("FONDO_BRIDGE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let mut group = c.benchmark_group("spool_append_fsync");
    group.sample_size(20);
    // 0: commit as soon as the writer is free (no pacing); 5: the default `group_commit_ms`.
    for group_commit_ms in [0u64, 5] {
        let dir = match tempfile::tempdir_in(&base) {
            Ok(d) => d,
            Err(e) => panic!("temp dir in {}: {e}", base.display()),
        };
        let cfg = SpoolConfig {
            enabled: true,
            dir: dir.path().join("spool"),
            max_bytes: 1 << 30,
            segment_bytes: 16 << 20,
            group_commit_ms,
            ..SpoolConfig::default()
        };
        let spool = match rt.block_on(async { Spool::open(&cfg, Arc::new(Metrics::new())) }) {
            Ok((s, _)) => s,
            Err(e) => panic!("open spool: {e}"),
        };
        for size in [1024usize, 2048] {
            let body = payload(size);
            for batch in [1usize, 16, 128, 1024] {
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_with_input(
                    BenchmarkId::new(format!("{size}B/group_commit_{group_commit_ms}ms"), batch),
                    &batch,
                    |b, &batch| {
                        b.iter(|| {
                            rt.block_on(async {
                                let mut pending = Vec::with_capacity(batch);
                                for _ in 0..batch {
                                    match spool
                                        .begin_append(
                                            "bench-client",
                                            "bench-occurrence-0001",
                                            body.clone(),
                                            Pace::Prompt,
                                        )
                                        .await
                                    {
                                        Ok(p) => pending.push(p),
                                        Err(e) => panic!("append: {e}"),
                                    }
                                }
                                for p in pending {
                                    match p.wait().await {
                                        Ok(id) => spool.release(id),
                                        Err(e) => panic!("append: {e}"),
                                    }
                                }
                            })
                        })
                    },
                );
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench_spool);
criterion_main!(benches);
