//! `fondo-bridge run`: the bridge, until SIGTERM or Ctrl-C, then an ordered drain.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use fondo_bridge::app::{AppError, Bridge};

pub async fn run(config: PathBuf) -> anyhow::Result<ExitCode> {
    let plan = match super::load(&config) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let _telemetry = fondo_bridge::telemetry::init(&plan.config().telemetry); // flushes spans when dropped
    for notice in &plan.config().renamed {
        tracing::warn!(config = %config.display(), "{notice}");
    }
    let stop = CancellationToken::new();
    super::spawn_signal_handler(stop.clone());
    let bridge = Bridge::start_plan(plan)
        .await
        .context("starting the bridge")?;
    bridge.watch_config(config.clone(), std::time::Duration::from_secs(2));
    tracing::info!("fondo-bridge running");
    stop.cancelled().await;
    match bridge.shutdown().await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ AppError::DrainTimeout(_)) => {
            tracing::error!(error = %e, "shutdown incomplete");
            Ok(ExitCode::from(3))
        }
        Err(e) => Err(e.into()),
    }
}
