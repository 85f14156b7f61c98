//! `fondo-bridge demo`: a simulated Fondo stream through the bridge into files, no broker.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

pub async fn demo(args: fondo_bridge::demo::DemoArgs) -> anyhow::Result<ExitCode> {
    fondo_bridge::telemetry::init_logging(&fondo_bridge::config::TelemetryConfig {
        log_level: "error".into(),
        ..Default::default()
    });
    let stop = CancellationToken::new();
    super::spawn_signal_handler(stop.clone());
    let s = fondo_bridge::demo::run(args, stop).await?;
    println!(
        "demo: sent {} events, received {}, delivered {} (every destination confirmed), dead-lettered {}, in {:.1} s",
        s.sent,
        s.received,
        s.delivered,
        s.dead_lettered,
        s.elapsed.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
