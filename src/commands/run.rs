//! `nzela run [--config FILE]`: the daemon.

use std::path::Path;
use std::process::ExitCode;

use super::EXIT_CONFIG;
use crate::{config, daemon, priority};

pub fn run(file: &Path, log_format: Option<&str>) -> ExitCode {
    let config = match config::load(file) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems.errors {
                eprintln!("error: {p}");
            }
            for w in &problems.warnings {
                eprintln!("warning: {w}");
            }
            eprintln!(
                "nzela did not start: {} problem(s) in the configuration (see `nzela check`)",
                problems.errors.len()
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
    let delivery = match delivery_runtime(&config.delivery) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the delivery threads: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(daemon::run(config, delivery.handle().clone()));
    // Everything on it has stopped; what a connection still holds is let go.
    delivery.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "nzela stopped on an error");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime that routes, maps and sends, on threads of their own at a
/// lower priority than the intake's (see `priority`).
fn delivery_runtime(settings: &config::DeliveryConfig) -> std::io::Result<tokio::runtime::Runtime> {
    let nice = priority::Nice::this_thread_plus(settings.nice)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .enable_all()
        .thread_name("nzela-delivery")
        .on_thread_start(move || {
            if let Err(e) = nice.apply() {
                tracing::warn!(error = %e, nice = nice.value(), "cannot lower the priority of a delivery thread");
            }
        });
    if let Some(n) = settings.threads {
        builder.worker_threads(n);
    }
    builder.build()
}

/// Text for people or JSON for collectors; `RUST_LOG` overrides the level.
/// Text is coloured only on a terminal.
fn init_logging(format: &str, level: &str) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::try_new(quiet_amqp_client(&f)),
        _ => EnvFilter::try_new(quiet_amqp_client(level)),
    }
    .map_err(|e| format!("bad log level \"{level}\": {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colours_on_stderr());
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

/// The filter, with the AMQP client (lapin) off unless it names it. The
/// AMQP connector logs what lapin would, once and with what it was doing;
/// lapin logs a declaration the broker refuses as an error at every
/// attempt, and warns of every message the broker returns.
fn quiet_amqp_client(filter: &str) -> String {
    if filter.contains("lapin") {
        filter.to_owned()
    } else {
        format!("{filter},lapin=off")
    }
}

/// Whether log lines may carry colours (ANSI escape codes): only when
/// standard error is a terminal, and `NO_COLOR` is unset or empty
/// (<https://no-color.org>). A journal, a file or a pipe gets plain text.
fn colours_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
