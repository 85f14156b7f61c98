//! `fondo-bridge dlq`: list, show and replay dead letters ([`fondo_bridge::dlq::commands`]).

use std::process::ExitCode;

pub async fn dlq(
    config: &std::path::Path,
    command: fondo_bridge::dlq::commands::DlqCommand,
) -> anyhow::Result<ExitCode> {
    let plan = match super::load(config) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    fondo_bridge::telemetry::init_logging(&fondo_bridge::config::TelemetryConfig {
        log_level: "warn".into(),
        ..Default::default()
    });
    match fondo_bridge::dlq::commands::run(command, &plan).await {
        Ok(outcome) => Ok(ExitCode::from(outcome.code)),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}
