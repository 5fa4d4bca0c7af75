//! nzela-connectors: one module per protocol. Each connector is a config
//! struct (documented fields, unknown fields refused) and the runtime object
//! it builds.
//!
//! | module | config `type` | config struct | runtime object |
//! |---|---|---|---|
//! | [`http_server`] | source `http_server` | [`http_server::Config`] | [`http_server::HttpServer`]: endpoints that partners `POST` to |
//! | [`file`] | source `file` | [`file::SourceConfig`] | [`file::FileSource`]: an inbox folder, polled |
//! | [`http_client`] | destination `http` | [`http_client::Config`] | [`http_client::HttpClient`]: one request per attempt |
//! | [`file`] | destination `file` | [`file::DestinationConfig`] | [`file::FileDestination`]: an outbox folder, written atomically |
//! | [`amqp`] | source `amqp` | [`amqp::SourceConfig`] | [`amqp::AmqpSource`]: a RabbitMQ queue, consumed; acknowledged once committed |
//! | [`amqp`] | destination `amqp` | [`amqp::DestinationConfig`] | [`amqp::AmqpDestination`]: a RabbitMQ exchange, published to with confirms |
//!
//! Shared pieces:
//!
//! - [`common`]: sizes, durations, formats, business keys, retry settings;
//! - [`template`]: the templates of URLs, headers and file names;
//! - [`tls`]: the crypto provider, installed once before any HTTPS client
//!   or AMQPS connection.
//!
//! The binary reads `[sources.NAME]` as a [`SourceConfig`] and
//! `[destinations.NAME]` as a [`DestinationConfig`], then builds them with
//! [`build_source`] (or [`http_server::HttpServer::bind`], to serve several
//! endpoints on one address) and [`build_destination`]. A source hands its
//! messages to [`nzela_core::runtime::Intake`]; a destination is driven by
//! a [`nzela_core::runtime::dispatch::Dispatcher`] with the settings of
//! [`DestinationConfig::dispatch_settings`].

pub mod amqp;
pub mod common;
pub mod file;
pub mod http_client;
pub mod http_server;
pub mod template;
pub mod tls;

use std::sync::Arc;

use nzela_core::runtime::dispatch::DispatchSettings;
use nzela_core::runtime::{CancellationToken, Destination, Intake};
use serde::Deserialize;

/// A `[sources.NAME]` table: its `type` and that type's settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    /// `type = "http_server"`: an HTTP endpoint.
    HttpServer(http_server::Config),
    /// `type = "file"`: an inbox folder.
    File(file::SourceConfig),
    /// `type = "amqp"`: a RabbitMQ queue.
    Amqp(amqp::SourceConfig),
}

impl SourceConfig {
    /// The format of the documents the source takes in.
    pub fn format(&self) -> common::SourceFormat {
        match self {
            SourceConfig::HttpServer(c) => c.format,
            SourceConfig::File(c) => c.format,
            SourceConfig::Amqp(c) => c.format,
        }
    }
}

/// A `[destinations.NAME]` table: its `type` and that type's settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DestinationConfig {
    /// `type = "http"`: an HTTP endpoint.
    Http(http_client::Config),
    /// `type = "file"`: an outbox folder.
    File(file::DestinationConfig),
    /// `type = "amqp"`: a RabbitMQ exchange.
    Amqp(amqp::DestinationConfig),
}

impl DestinationConfig {
    /// How the dispatcher of the destination `name` sends to it.
    pub fn dispatch_settings(&self, name: &str) -> DispatchSettings {
        match self {
            DestinationConfig::Http(c) => c.dispatch_settings(name),
            DestinationConfig::File(c) => c.dispatch_settings(name),
            DestinationConfig::Amqp(c) => c.dispatch_settings(name),
        }
    }
}

/// A built source, ready to run.
#[derive(Debug)]
pub enum Source {
    Http(http_server::HttpServer),
    File(file::FileSource),
    Amqp(amqp::AmqpSource),
}

impl Source {
    /// Takes messages in until `shutdown`, then finishes what is in flight.
    pub async fn run(self, intake: Intake, shutdown: CancellationToken) {
        match self {
            Source::Http(s) => s.run(intake, shutdown).await,
            Source::File(s) => s.run(intake, shutdown).await,
            Source::Amqp(s) => s.run(intake, shutdown).await,
        }
    }
}

/// Builds the source `name`. An `http_server` source gets a server of its
/// own; to share one address among several endpoints, use
/// [`http_server::HttpServer::bind`] with all of them.
pub async fn build_source(name: &str, config: &SourceConfig) -> Result<Source, String> {
    match config {
        SourceConfig::HttpServer(c) => {
            http_server::HttpServer::bind(&c.listen, vec![(name.to_owned(), c.clone())])
                .await
                .map(Source::Http)
        }
        SourceConfig::File(c) => file::FileSource::build(name, c).await.map(Source::File),
        SourceConfig::Amqp(c) => amqp::AmqpSource::build(name, c).await.map(Source::Amqp),
    }
}

/// Builds the destination `name`.
pub async fn build_destination(
    name: &str,
    config: &DestinationConfig,
) -> Result<Arc<dyn Destination>, String> {
    Ok(match config {
        DestinationConfig::Http(c) => Arc::new(http_client::HttpClient::build(name, c).await?),
        DestinationConfig::File(c) => Arc::new(file::FileDestination::build(name, c).await?),
        DestinationConfig::Amqp(c) => Arc::new(amqp::AmqpDestination::build(name, c).await?),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_type_picks_the_connector() {
        let s: SourceConfig = serde_json::from_value(json!({
            "type": "http_server", "listen": "127.0.0.1:8080", "path": "/in/orders", "format": "json"
        }))
        .unwrap();
        assert!(matches!(s, SourceConfig::HttpServer(ref c) if c.path == "/in/orders"));
        let s: SourceConfig =
            serde_json::from_value(json!({"type": "file", "path": "in", "format": "xml"})).unwrap();
        assert!(matches!(s, SourceConfig::File(_)));
        let d: DestinationConfig =
            serde_json::from_value(json!({"type": "http", "url": "https://x.example/api"}))
                .unwrap();
        assert_eq!(
            d.dispatch_settings("api").attempt_timeout,
            std::time::Duration::from_secs(35)
        );
        let d: DestinationConfig = serde_json::from_value(json!({
            "type": "file", "path": "out", "concurrency": 2, "retry": {"max_attempts": 4}
        }))
        .unwrap();
        let s = d.dispatch_settings("outbox");
        assert_eq!(
            (s.name.as_str(), s.concurrency, s.retry.max_attempts),
            ("outbox", 2, 4)
        );
    }

    #[test]
    fn unknown_keys_inside_a_tagged_section_are_refused() {
        let e = serde_json::from_value::<SourceConfig>(json!({
            "type": "http_server", "listen": "127.0.0.1:8080", "path": "/in", "format": "json", "listn": "x"
        }))
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `listn`"), "{e}");
        let e = serde_json::from_value::<SourceConfig>(
            json!({"type": "file", "path": "in", "format": "json", "done_dir": "x"}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `done_dir`"), "{e}");
        let e = serde_json::from_value::<DestinationConfig>(
            json!({"type": "http", "url": "https://x/", "retries": 3}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `retries`"), "{e}");
        let e = serde_json::from_value::<DestinationConfig>(
            json!({"type": "file", "path": "out", "retry": {"max": 3}}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `max`"), "{e}");
    }

    #[test]
    fn an_unknown_or_missing_type_is_refused() {
        let e = serde_json::from_value::<SourceConfig>(json!({"type": "ftp", "path": "in"}))
            .unwrap_err();
        assert!(e.to_string().contains("unknown variant `ftp`"), "{e}");
        let e = serde_json::from_value::<DestinationConfig>(json!({"path": "out"})).unwrap_err();
        assert!(e.to_string().contains("missing field `type`"), "{e}");
    }

    #[tokio::test]
    async fn sources_and_destinations_build_from_their_settings() {
        let tmp = tempfile::tempdir().unwrap();
        let s: SourceConfig = serde_json::from_value(
            json!({"type": "file", "path": tmp.path().join("in"), "format": "json"}),
        )
        .unwrap();
        assert!(matches!(
            build_source("inbox", &s).await.unwrap(),
            Source::File(_)
        ));
        assert!(tmp.path().join("in/done").is_dir() && tmp.path().join("in/error").is_dir());
        let s: SourceConfig = serde_json::from_value(json!({
            "type": "http_server", "listen": "127.0.0.1:0", "path": "/in", "format": "json"
        }))
        .unwrap();
        assert!(matches!(
            build_source("orders", &s).await.unwrap(),
            Source::Http(_)
        ));
        let d: DestinationConfig =
            serde_json::from_value(json!({"type": "file", "path": tmp.path().join("out")}))
                .unwrap();
        build_destination("outbox", &d).await.unwrap();
        assert!(tmp.path().join("out").is_dir());
        let d: DestinationConfig =
            serde_json::from_value(json!({"type": "http", "url": "http://127.0.0.1:1/"})).unwrap();
        build_destination("api", &d).await.unwrap();
    }
}
