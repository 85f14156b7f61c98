//! The commands of the `fondo-bridge` binary, one file each; `main.rs` parses the arguments and
//! calls them. Each returns the process's exit code: 0 done, 1 the command's own failure (a
//! replay that failed, webhooks not delivered), 2 an invalid config or usage, 3 an incomplete
//! drain.

pub mod asyncapi;
pub mod check;
pub mod demo;
pub mod dlq;
pub mod route;
pub mod run;
pub mod simulate;
pub mod top;

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use fondo_bridge::plan::Plan;

/// Loads and checks a config file; on failure prints every problem and gives the exit code.
pub fn load(path: &std::path::Path) -> Result<Plan, ExitCode> {
    Plan::load(path).map_err(|e| {
        eprintln!("{}: invalid", path.display());
        for p in e.problems() {
            eprintln!("  - {p}");
        }
        ExitCode::from(2)
    })
}

/// SIGTERM or SIGINT (Ctrl-C) cancels `stop`.
pub fn spawn_signal_handler(stop: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        stop.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        stop.cancel();
    });
}
