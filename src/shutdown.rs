//! Process shutdown: a future that resolves when the process is asked to stop (SIGINT or SIGTERM).
//!
//! Shared by every long-running subcommand, so the controller and the agent do not depend on each
//! other for it. It only waits; what stopping means is up to the caller.

use tokio::signal::unix::{SignalKind, signal as unix_signal};

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what Kubernetes sends to stop a Pod).
pub async fn signal() {
    let term = async {
        match unix_signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without a SIGTERM handler only Ctrl-C stops the process.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let which = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        () = term => "SIGTERM",
    };
    tracing::info!(signal = which, "stop signal received");
}
