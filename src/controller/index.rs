//! Pool membership, decided in one place: which domains and hosts belong to a pool (observe), and
//! which pools a changed domain or host belongs to (the watch mappers, the domain controller).
//!
//! - A domain belongs to the pool its `spec.pool` names now **and** to the one its `status.pool`
//!   recorded (it is still leaving that one).
//! - A host belongs to the pool its `spec.pool` names, to the pool whose uuid its report says it is
//!   connected to, and to every pool that still lists it in `status.hostIds`.

use std::collections::BTreeSet;

use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

use crate::api::{Host, StorageDomain, StoragePool};

/// The pool uuid in use: `spec.uuid`, else the one recorded in status, else `metadata.uid`.
pub fn pool_uuid(pool: &StoragePool) -> String {
    crate::api::pool::effective_uuid(
        pool.spec.uuid.as_deref(),
        pool.status.as_ref().and_then(|s| s.uuid.as_deref()),
        pool.uid().as_deref(),
    )
}

/// The pool names a domain belongs to: `spec.pool`, then `status.pool` when it differs.
pub fn domain_pools(domain: &StorageDomain) -> Vec<&str> {
    let spec = domain.spec.pool.as_deref().filter(|p| !p.is_empty());
    let status = domain
        .status
        .as_ref()
        .and_then(|s| s.pool.as_deref())
        .filter(|p| !p.is_empty() && Some(*p) != spec);
    spec.into_iter().chain(status).collect()
}

/// The pool uuid a host reports it is connected to.
pub fn reported_pool_uuid(host: &Host) -> Option<&str> {
    host.status
        .as_ref()
        .and_then(|s| s.report.as_ref())
        .and_then(|r| r.pool.as_ref())
        .map(|p| p.uuid.as_str())
}

/// One pool's membership test.
#[derive(Debug)]
pub struct Members<'a> {
    name: &'a str,
    uuid: String,
    with_id: BTreeSet<&'a str>,
}

impl<'a> Members<'a> {
    /// The membership test of `pool`.
    pub fn of(pool: &'a StoragePool) -> Self {
        Self {
            name: pool.metadata.name.as_deref().unwrap_or_default(),
            uuid: pool_uuid(pool),
            with_id: pool
                .status
                .iter()
                .flat_map(|s| s.host_ids.iter().map(|h| h.host.as_str()))
                .collect(),
        }
    }

    /// The pool's uuid in use.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// Whether `domain` belongs to the pool.
    pub fn has_domain(&self, domain: &StorageDomain) -> bool {
        domain_pools(domain).contains(&self.name)
    }

    /// Whether `host` belongs to the pool.
    pub fn has_host(&self, host: &Host) -> bool {
        host.spec.pool.as_deref() == Some(self.name)
            || reported_pool_uuid(host) == Some(self.uuid.as_str())
            || host
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| self.with_id.contains(n))
    }
}

/// The pools a host belongs to, from the pool cache.
pub fn host_pools(pools: &Store<StoragePool>, host: &Host) -> Vec<ObjectRef<StoragePool>> {
    let mut out: Vec<ObjectRef<StoragePool>> = host
        .spec
        .pool
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| ObjectRef::new(p))
        .collect();
    for pool in pools.state() {
        let r = ObjectRef::from_obj(pool.as_ref());
        if !out.contains(&r) && Members::of(&pool).has_host(host) {
            out.push(r);
        }
    }
    out
}

/// The domains that belong to `pool`, from the domain cache.
pub fn pool_domains(domains: &Store<StorageDomain>, pool: &str) -> Vec<ObjectRef<StorageDomain>> {
    domains
        .state()
        .iter()
        .filter(|d| domain_pools(d).contains(&pool))
        .map(|d| ObjectRef::new(&d.name_any()))
        .collect()
}
