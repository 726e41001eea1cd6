//! The bridge beside a real VDSM (`poolkeeper agent --vdsm <address>`): the agent serves no
//! calls; it registers the Host (its endpoint is VDSM's, which the controller calls directly),
//! renews its Lease, and reports what VDSM itself answers, polled at VDSM's cadence:
//! `Host.getConnectedStoragePools`, then for the pool `StoragePool.getInfo` (map, master and
//! its version, memory or disk backend) and `StoragePool.getSpmStatus` (the manager's lease),
//! and `Host.getStorageRepoStats` (the domain monitors). The report is written only when it
//! changed (vitals in the same steps as the agent's own monitors).
//!
//! VDSM does not say which host id it was connected with: the bridge reports the id the pool
//! assigned to this Host (`StoragePool.status.hostIds`), read once per connection. A VDSM
//! connected with another id refuses the controller's next connect with 325, which the Host's
//! `InSync` condition then shows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::{Api, ResourceExt};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use super::host::HostAgent;
use super::monitor::reported_vitals;
use crate::api::{DomainVitals, Host, PoolBackend, PoolConnection, StoragePool};
use crate::protocol::wire::{PoolInfo, PoolParams, SpmStatusResult, Vitals, method};
use crate::protocol::{Client, RpcError, Target};

/// Where VDSM is, and how to reach it.
#[derive(Clone, Debug)]
pub struct Vdsm {
    /// `host:port` of VDSM (its Host's endpoint).
    pub endpoint: String,
    /// The name VDSM's certificate carries (checked in the TLS handshake).
    pub tls_name: String,
    /// The client (VDSM's CA, and a client certificate VDSM accepts).
    pub client: Client,
    /// How often it is polled.
    pub period: Duration,
}

/// What VDSM's memory-backend pools answer as their name (`getInfo`).
const MEMORY_BACKEND_NAME: &str = "No Description";

#[derive(Serialize)]
struct NoParams {}

/// Polls `vdsm` for `host` until `shutdown`.
pub(super) async fn run(
    vdsm: Vdsm,
    host: Arc<HostAgent>,
    kube: kube::Client,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut host_id: Option<(String, i32)> = None;
    let to = Target {
        name: &vdsm.tls_name,
        endpoint: &vdsm.endpoint,
    };
    // The connection is kept: a new one means VDSM closed the last, and a restarted VDSM has
    // lost its pool (a new bootId says so), even if it came back between two polls.
    let mut connections = 0;
    let mut last_error = None;
    loop {
        match poll(&vdsm, &host, &kube, &mut host_id).await {
            Ok((pool, domains)) => {
                if last_error.take().is_some() {
                    info!(host = %host.name(), vdsm = %vdsm.endpoint, "VDSM answers again");
                }
                let opened = vdsm.client.connections_opened(to);
                let restarted = connections != 0 && opened != connections;
                connections = opened;
                host.set_bridged(pool, domains, restarted);
            }
            Err(e) => {
                let text = e.to_string();
                if last_error.as_ref() != Some(&text) {
                    warn!(host = %host.name(), vdsm = %vdsm.endpoint, error = %text, "VDSM does not answer");
                }
                host_id = None;
                last_error = Some(text);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(vdsm.period) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Why a poll gave nothing to report.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("reading the Host's pool")]
    Kube(#[from] kube::Error),
}

async fn poll(
    vdsm: &Vdsm,
    host: &HostAgent,
    kube: &kube::Client,
    host_id: &mut Option<(String, i32)>,
) -> Result<(Option<PoolConnection>, Vec<DomainVitals>), PollError> {
    let to = Target {
        name: &vdsm.tls_name,
        endpoint: &vdsm.endpoint,
    };
    let timeout = vdsm.period.max(Duration::from_secs(5));
    let pools: Vec<String> = vdsm
        .client
        .call(
            to,
            method::HOST_GET_CONNECTED_STORAGE_POOLS,
            &NoParams {},
            timeout,
        )
        .await?;
    let stats: BTreeMap<String, Vitals> = vdsm
        .client
        .call(
            to,
            method::HOST_GET_STORAGE_REPO_STATS,
            &NoParams {},
            timeout,
        )
        .await?;
    let domains = stats.iter().map(|(sd, v)| reported_vitals(sd, v)).collect();
    let Some(uuid) = pools.into_iter().next() else {
        *host_id = None;
        return Ok((None, domains));
    };
    let info: PoolInfo = vdsm.client.get_info(to, &uuid, timeout).await?;
    let spm: SpmStatusResult = vdsm
        .client
        .call(
            to,
            method::POOL_GET_SPM_STATUS,
            &PoolParams {
                storagepool_id: uuid.clone(),
            },
            timeout,
        )
        .await?;
    let id = match host_id {
        Some((known, id)) if *known == uuid => *id,
        _ => {
            let id = assigned_id(kube, host.name(), &uuid).await?;
            *host_id = Some((uuid.clone(), id));
            id
        }
    };
    let pool = PoolConnection {
        uuid,
        host_id: id,
        master_domain: Some(info.info.master_uuid.clone()).filter(|m| !m.is_empty()),
        master_version: info.info.master_ver,
        domain_map: info.domain_map().into_iter().collect(),
        spm_lver: (spm.spm_st.spm_status == "SPM").then_some(spm.spm_st.spm_lver),
        backend: Some(if info.info.name == MEMORY_BACKEND_NAME {
            PoolBackend::Memory
        } else {
            PoolBackend::Disk
        }),
    };
    Ok((Some(pool), domains))
}

/// The id pool `uuid` assigned to Host `name` (`status.hostIds` of the pool its spec names);
/// -1 when that pool is not `uuid` or assigned none.
async fn assigned_id(kube: &kube::Client, name: &str, uuid: &str) -> Result<i32, kube::Error> {
    let hosts: Api<Host> = Api::all(kube.clone());
    let Some(pool) = hosts.get_opt(name).await?.and_then(|h| h.spec.pool) else {
        return Ok(-1);
    };
    let pools: Api<StoragePool> = Api::all(kube.clone());
    let Some(pool) = pools.get_opt(&pool).await? else {
        return Ok(-1);
    };
    let status = pool.status.clone().unwrap_or_default();
    if status.uuid.as_deref() != Some(uuid) && pool.spec.uuid.as_deref() != Some(uuid) {
        warn!(host = %name, pool = %pool.name_any(), connected = %uuid, "VDSM is connected to another pool than its Host's");
        return Ok(-1);
    }
    Ok(status
        .host_ids
        .iter()
        .find(|e| e.host == name)
        .map_or(-1, |e| e.id))
}
