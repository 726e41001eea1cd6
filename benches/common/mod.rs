//! What the end-to-end benches share: a test control plane with the agents' namespace, and the
//! controller's `/metrics` page read back.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use poolkeeper::testenv::ControlPlane;
use serde_json::json;

/// A real etcd and kube-apiserver with the namespace `ns`; exits the bench when it cannot start.
pub async fn control_plane(ns: &str) -> (ControlPlane, Client) {
    let cp = match ControlPlane::start().await {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("cannot start the control plane: {e}");
            std::process::exit(1);
        }
    };
    let client = cp.client().await.expect("client");
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::apply("bench"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            ),
        )
        .await
        .expect("namespace");
    (cp, client)
}

/// The controller's `/metrics` page (empty when it cannot be read).
pub async fn metrics_text(metrics: std::net::SocketAddr) -> String {
    match reqwest::get(format!("http://{metrics}/metrics")).await {
        Ok(resp) => resp.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Per reconcile step (`poolkeeper_reconcile_step_seconds`): runs and seconds so far.
pub async fn steps(metrics: std::net::SocketAddr) -> BTreeMap<String, (f64, f64)> {
    let body = metrics_text(metrics).await;
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("poolkeeper_reconcile_step_seconds_") else {
            continue;
        };
        let (Some((field, labels)), Some(value)) = (
            rest.split_once('{'),
            rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
        ) else {
            continue;
        };
        let step = labels.split('"').nth(1).unwrap_or_default().to_owned();
        let entry = out.entry(step).or_default();
        match field {
            "count" => entry.0 = value,
            "sum" => entry.1 = value,
            _ => {}
        }
    }
    out
}
