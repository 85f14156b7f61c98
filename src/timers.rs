//! Optional timers for `select!` loops: a branch with no timer never fires.

/// Resolves at `timer`'s next tick; never without a timer.
pub async fn tick(timer: Option<&mut tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Resolves at `deadline`; never without one.
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending::<()>().await,
    }
}
