//! `fondo-bridge asyncapi`: prints the AsyncAPI 3.0 document of what a config publishes.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

pub fn asyncapi(config: &std::path::Path, format: Format) -> anyhow::Result<ExitCode> {
    let plan = match super::load(config) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let doc = fondo_bridge::asyncapi::document(&plan)
        .with_context(|| format!("describing {}", config.display()))?;
    let text = match format {
        Format::Yaml => serde_yaml::to_string(&doc).context("writing YAML")?,
        Format::Json => {
            let mut t = serde_json::to_string_pretty(&doc).context("writing JSON")?;
            t.push('\n');
            t
        }
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}
