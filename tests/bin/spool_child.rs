//! A test helper, not part of the product: the process `tests/spool.rs` kills with SIGKILL while
//! it appends to a spool.
//!
//! `test-spool-child DIR` appends records to the spool in DIR forever, 64 appends in flight at a
//! time, and prints `ACK <n>` once record `n` is durable. Every third record is released as soon
//! as it is durable and printed `REL <n>` instead: released records may come back after a crash,
//! acknowledged ones must.

use std::path::PathBuf;
use std::sync::Arc;

use fondo_bridge::group_commit::Pace;
use fondo_bridge::metrics::Metrics;
use fondo_bridge::spool::Spool;

#[path = "../common/spool_records.rs"]
mod spool_records;

use spool_records::{body, cfg, occ};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .ok_or("usage: test-spool-child DIR")?
        .into();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(append_forever(dir))
}

async fn append_forever(dir: PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    let (spool, _) = Spool::open(&cfg(&dir, 256 * 1024), Arc::new(Metrics::new()))?;
    let mut n = 0u64;
    loop {
        let mut pending = Vec::new();
        for _ in 0..64 {
            let p = spool
                .begin_append("c1", &occ(n), body(n), Pace::Prompt)
                .await?;
            pending.push((n, p));
            n += 1;
        }
        for (n, p) in pending {
            let id = p.wait().await?;
            if n % 3 == 0 {
                spool.release(id);
                println!("REL {n}");
            } else {
                println!("ACK {n}");
            }
        }
    }
}
