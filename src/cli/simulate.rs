//! `fondo-bridge simulate`: the Fondo stand-in, as a WebSocket stream or a webhook sender.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::Simulate;

pub async fn simulate(what: Simulate) -> anyhow::Result<ExitCode> {
    fondo_bridge::telemetry::init_logging(&fondo_bridge::config::TelemetryConfig::default());
    match what {
        Simulate::Stream(args) => {
            let stop = CancellationToken::new();
            super::spawn_signal_handler(stop.clone());
            fondo_bridge::simulator::stream::run_stream(args, stop).await?;
        }
        Simulate::Webhooks(args) => {
            let report = fondo_bridge::simulator::webhook_sender::run(args).await?;
            println!("{}", report.summary());
            if report.failed > 0 {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
