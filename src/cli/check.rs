//! `fondo-bridge check`: validates a config file and lists every problem with its path.

use std::process::ExitCode;

pub fn check(path: &std::path::Path) -> ExitCode {
    match super::load(path) {
        Ok(plan) => {
            let cfg = plan.config();
            println!(
                "{}: valid ({} sink(s), {} route(s), sources: {})",
                path.display(),
                cfg.sinks.len(),
                cfg.routes.len(),
                [
                    cfg.sources.websocket.as_ref().map(|_| "websocket"),
                    cfg.sources.webhook.as_ref().map(|_| "webhook"),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ")
            );
            for notice in &cfg.renamed {
                println!("  note: {notice}");
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
