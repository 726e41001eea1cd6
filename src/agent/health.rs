//! The agent's own HTTP endpoint, apart from the RPC port: `/healthz`, `/readyz` and `/metrics`
//! in plain HTTP without the bearer token, so kubelet probes and Prometheus reach it. It shows only
//! what each Host's report already publishes to the API server, and changes nothing.
//!
//! Metrics are computed from the hosts' reports at each scrape (there is nothing to keep between
//! scrapes), in the OpenMetrics text format, served with that format's content type.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{Error, host::HostAgent};

/// The content type of the OpenMetrics text format `prometheus-client` writes.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabels {
    host: String,
    /// `true` or `false`: the domain's last check.
    valid: &'static str,
}

/// Binds `addr` and serves in the background; returns the bound address (port 0 picks one).
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    hosts: Arc<[Arc<HostAgent>]>,
    serving: tokio::sync::watch::Receiver<bool>,
) -> Result<SocketAddr, Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        // Ready once the RPC listener takes calls: at once, or once the certificate requested
        // from the cluster is issued.
        .route(
            "/readyz",
            get(move || {
                let serving = *serving.borrow();
                async move {
                    if serving {
                        (http::StatusCode::OK, "ok")
                    } else {
                        (
                            http::StatusCode::SERVICE_UNAVAILABLE,
                            "waiting for the serving certificate",
                        )
                    }
                }
            }),
        )
        .route("/metrics", get(metrics))
        .with_state(hosts);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health server stopped");
        }
    });
    tracing::info!(addr = %bound, "serving health and metrics");
    Ok(bound)
}

async fn metrics(State(hosts): State<Arc<[Arc<HostAgent>]>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], render(&hosts))
}

/// The metrics of `hosts`, in the OpenMetrics text format.
pub fn render(hosts: &[Arc<HostAgent>]) -> String {
    let info = Family::<VersionLabels, Gauge>::default();
    info.get_or_create(&VersionLabels {
        version: env!("CARGO_PKG_VERSION"),
    })
    .set(1);
    let connected = Family::<HostLabels, Gauge>::default();
    let domains = Family::<DomainLabels, Gauge>::default();
    for host in hosts {
        let report = host.report();
        let name = host.name().to_owned();
        connected
            .get_or_create(&HostLabels { host: name.clone() })
            .set(i64::from(report.pool.is_some()));
        for valid in [true, false] {
            let n = report.domains.iter().filter(|d| d.valid == valid).count();
            domains
                .get_or_create(&DomainLabels {
                    host: name.clone(),
                    valid: if valid { "true" } else { "false" },
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    let mut registry = Registry::default();
    registry.register(
        "poolkeeper_agent_info",
        "The agent's version (always 1)",
        info,
    );
    registry.register(
        "poolkeeper_agent_pool_connected",
        "Whether the host holds a pool connection (1) or not (0)",
        connected,
    );
    registry.register(
        "poolkeeper_agent_domains",
        "Domains the host monitors, by the result of their last check",
        domains,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}
