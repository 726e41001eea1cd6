//! `/metrics` (OpenMetrics or Prometheus text, as the scraper asks), `/healthz` (the process serves) and `/readyz` (every cache has
//! finished its initial list, or this replica is a leader-election standby).

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::StatusCode, routing::get};

use super::{Context, Error};

/// Binds `addr` and serves in the background; returns the bound address (port 0 picks one).
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(addr: SocketAddr, ctx: Arc<Context>) -> Result<SocketAddr, Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Http { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::Http { addr, source })?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(ctx);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

/// The metrics in the format the scraper's `Accept` asks for, with its content type.
async fn metrics(
    State(ctx): State<Arc<Context>>,
    headers: axum::http::HeaderMap,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (content_type, body) = ctx.metrics.render_for(accept);
    ([(axum::http::header::CONTENT_TYPE, content_type)], body)
}

async fn readyz(State(ctx): State<Arc<Context>>) -> (StatusCode, &'static str) {
    let standby = ctx
        .leader
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .is_some_and(|rx| !*rx.borrow());
    if standby {
        // A standby is ready to take over; reporting it unready would stall rolling updates.
        (StatusCode::OK, "standby")
    } else if ctx.stores.ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}
