//! Publishing with a confirm window: at most `window` publishes awaiting their confirm at once.

use std::future::Future;
use std::time::Instant;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

use crate::latency::Latencies;

/// What a publisher measured.
pub struct Published {
    pub elapsed_s: f64,
    /// Publish→confirm of each confirmed message.
    pub latencies: Latencies,
    pub errors: u64,
}

/// Publishes `n` messages, `publish(i)` for each `i`, with at most `window` in flight.
pub async fn windowed<F, Fut>(n: u64, window: usize, mut publish: F) -> Published
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let mut latencies = Latencies::new();
    let mut errors = 0u64;
    let mut inflight = FuturesUnordered::new();
    let mut i = 0u64;
    loop {
        while inflight.len() < window.max(1) && i < n {
            let fut = publish(i);
            inflight.push(async move {
                let t = Instant::now();
                let r = fut.await;
                (t.elapsed(), r)
            });
            i += 1;
        }
        match inflight.next().await {
            Some((took, Ok(()))) => latencies.record(took),
            Some((_, Err(e))) => {
                if errors < 5 {
                    eprintln!("  publish error: {e:#}");
                }
                errors += 1;
            }
            None => break,
        }
    }
    Published {
        elapsed_s: started.elapsed().as_secs_f64(),
        latencies,
        errors,
    }
}
