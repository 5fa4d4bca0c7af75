//! `nzela run [--config FILE]`: the daemon.

use std::path::Path;
use std::process::ExitCode;

use super::EXIT_CONFIG;
use crate::{config, daemon};

pub fn run(file: &Path, log_format: Option<&str>) -> ExitCode {
    let config = match config::load(file) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems.0 {
                eprintln!("error: {p}");
            }
            eprintln!(
                "nzela did not start: {} problem(s) in the configuration (see `nzela check`)",
                problems.0.len()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let format = log_format.unwrap_or(&config.log.format);
    if let Err(e) = init_logging(format, &config.log.level) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    nzela_connectors::tls::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nzela")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "nzela stopped on an error");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Text for people or JSON for collectors; `RUST_LOG` overrides the level.
fn init_logging(format: &str, level: &str) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::try_new(f),
        _ => EnvFilter::try_new(level),
    }
    .map_err(|e| format!("bad log level \"{level}\": {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        "json" => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        "text" => builder.with_target(false).try_init(),
        other => return Err(format!("\"{other}\" is not a log format: text or json")),
    };
    result.map_err(|e| format!("cannot start logging: {e}"))
}
