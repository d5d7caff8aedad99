//! The two listeners and what serves on them: gRPC (the API, health,
//! reflection) and HTTP (the API's HTTP shapes, health, info, metrics),
//! both with TLS when configured.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use ce_proto::v1::cross_encoder_server::CrossEncoderServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;

use super::connections::{self, HttpTimeouts};
use crate::api::Api;
use crate::config::Settings;
use crate::grpc::CrossEncoderService;
use crate::tls::TlsIdentity;

/// The bound gRPC and HTTP listeners. Binding is separate from serving so
/// that a caller (a test) can bind port 0 and learn the ports first.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC listener.
    pub grpc: TcpListener,
    /// The HTTP listener.
    pub http: TcpListener,
}

impl Listeners {
    /// Binds `grpc_addr` and `http_addr`.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("binding gRPC on {}", settings.grpc_addr))?;
        let http = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("binding HTTP on {}", settings.http_addr))?;
        Ok(Self { grpc, http })
    }

    /// The addresses they listen on.
    pub fn addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.grpc.local_addr()?, self.http.local_addr()?))
    }
}

/// Writes `{"grpc": …, "http": …}` to `path`, whole or not at all (written
/// beside it, then renamed), so a reader never sees half a file.
pub fn write_addr_file(path: &Path, grpc: SocketAddr, http: SocketAddr) -> anyhow::Result<()> {
    let text = serde_json::json!({ "grpc": grpc.to_string(), "http": http.to_string() });
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text.to_string())
        .and_then(|()| std::fs::rename(&partial, path))
        .with_context(|| format!("writing addr_file {}", path.display()))
}

/// The running front ends.
#[derive(Debug)]
pub struct FrontEnds {
    /// The gRPC server, until it has drained.
    pub grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The HTTP server, until it has drained.
    pub http: JoinHandle<std::io::Result<()>>,
    /// gRPC health: NOT_SERVING until told otherwise.
    pub health: HealthReporter,
}

/// Serves the API on both listeners until `stop` turns true, then drains.
pub async fn serve(
    listeners: Listeners,
    api: Api,
    settings: &Settings,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<FrontEnds> {
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let ms = Duration::from_millis;
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, false).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ce_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(TlsIdentity::load(cert, key)?),
        _ => None,
    };
    let mut grpc_server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(settings.grpc_max_concurrent_streams))
        .http2_keepalive_interval(Some(ms(settings.grpc_keepalive_interval_ms)))
        .http2_keepalive_timeout(Some(ms(settings.grpc_keepalive_timeout_ms)))
        .tcp_nodelay(true);
    if let Some(tls) = &tls {
        grpc_server = grpc_server
            .tls_config(tls.grpc(ms(settings.grpc_handshake_timeout_ms)))
            .context("gRPC TLS configuration")?;
    }
    let incoming = connections::grpc_incoming(
        listeners.grpc,
        ms(settings.grpc_handshake_timeout_ms),
        stop.clone(),
    );
    let grpc = tokio::spawn(
        grpc_server
            .add_service(health_service)
            .add_service(reflection)
            .add_service(tonic::service::interceptor::InterceptedService::new(
                CrossEncoderServer::new(CrossEncoderService::new(api.clone()))
                    .max_decoding_message_size(settings.max_request_bytes),
                crate::auth::grpc_interceptor(settings.api_key.clone()),
            ))
            .serve_with_incoming_shutdown(incoming, stopped(stop.clone())),
    );
    let router = crate::http::router(api);
    let timeouts = HttpTimeouts {
        header: ms(settings.http_header_timeout_ms),
        idle: ms(settings.http_idle_timeout_ms),
        tls_handshake: ms(settings.http_header_timeout_ms),
    };
    let http = tokio::spawn(connections::serve_http(
        listeners.http,
        router,
        tls.as_ref().map(TlsIdentity::http_acceptor),
        timeouts,
        stop,
    ));
    tracing::debug!(tls = tls.is_some(), "front ends started");
    Ok(FrontEnds { grpc, http, health })
}

/// Sets both the API's and the server-wide ("") health status.
pub async fn set_health(health: &HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    health
        .set_service_status(
            <CrossEncoderServer<CrossEncoderService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    health.set_service_status("", status).await;
}
