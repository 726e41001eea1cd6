//! Write what [`crate::plan::report`] built: each status only when it differs from the cached one
//! (server-side apply, field manager `poolkeeper-controller`), and publish the planned events.

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{events::Event, reflector::ObjectRef as StoreRef},
};
use serde_json::json;
use tracing::{debug, warn};

use super::{Context, Error, FIELD_MANAGER, act::write_pool_status, object_ref};
use crate::{
    api::{Host, StorageDomain, StorageDomainStatus},
    metrics::{PoolPhaseLabels, PoolStateLabels, WriteLabels},
    plan::{
        self, EventType, HostControllerStatus, ObjectKind, Observed, PlannedEvent, Report,
        needs_write,
    },
};

/// Writes every changed status of the report and publishes its events.
///
/// # Errors
/// When a status write fails (the reconcile is retried).
pub async fn write(ctx: &Context, observed: &Observed, report: &Report) -> Result<(), Error> {
    let pool = &observed.pool.name;
    if needs_write(Some(&observed.pool.status), &report.pool) {
        write_pool_status(ctx, pool, &report.pool)
            .await
            .map_err(|source| Error::WriteStatus {
                kind: "StoragePool",
                name: pool.clone(),
                source,
            })?;
        debug!(pool = %pool, "pool status written");
    }
    for (name, status) in &report.domains {
        let current = observed.domains.get(name).map(|d| &d.status);
        if needs_write(current, status) {
            write_domain_status(ctx, name, status).await?;
        }
    }
    for (name, status) in &report.hosts {
        let current = observed.hosts.get(name).map(|h| &h.controller);
        if needs_write(current, status) {
            write_host_status(ctx, name, status).await?;
        }
    }
    for event in &report.events {
        publish(ctx, event).await;
    }
    export_gauges(ctx, pool, report);
    Ok(())
}

pub(crate) async fn write_domain_status(
    ctx: &Context,
    name: &str,
    status: &StorageDomainStatus,
) -> Result<(), Error> {
    let api: Api<StorageDomain> = Api::all(ctx.client.clone());
    let body =
        json!({"apiVersion": "poolkeeper.io/v1alpha1", "kind": "StorageDomain", "status": status});
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::WriteStatus {
        kind: "StorageDomain",
        name: name.to_owned(),
        source,
    })?;
    ctx.metrics
        .status_writes
        .get_or_create(&WriteLabels {
            kind: "StorageDomain",
        })
        .inc();
    Ok(())
}

async fn write_host_status(
    ctx: &Context,
    name: &str,
    status: &HostControllerStatus,
) -> Result<(), Error> {
    let api: Api<Host> = Api::all(ctx.client.clone());
    // Only the controller's fields: the agent owns `status.report` under its own field manager.
    let mut fields = serde_json::Map::new();
    if let Some(phase) = status.phase {
        fields.insert("phase".into(), json!(phase));
    }
    if let Some(generation) = status.observed_generation {
        fields.insert("observedGeneration".into(), json!(generation));
    }
    fields.insert("conditions".into(), json!(status.conditions));
    let body = json!({"apiVersion": "poolkeeper.io/v1alpha1", "kind": "Host", "status": fields});
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::WriteStatus {
        kind: "Host",
        name: name.to_owned(),
        source,
    })?;
    ctx.metrics
        .status_writes
        .get_or_create(&WriteLabels { kind: "Host" })
        .inc();
    Ok(())
}

async fn publish(ctx: &Context, event: &PlannedEvent) {
    let name = event.object.name.as_str();
    let reference = match event.object.kind {
        ObjectKind::StoragePool => ctx
            .stores
            .pools
            .get(&StoreRef::new(name))
            .map(|o| object_ref(o.as_ref())),
        ObjectKind::StorageDomain => ctx
            .stores
            .domains
            .get(&StoreRef::new(name))
            .map(|o| object_ref(o.as_ref())),
        ObjectKind::Host => ctx
            .stores
            .hosts
            .get(&StoreRef::new(name))
            .map(|o| object_ref(o.as_ref())),
    };
    let Some(reference) = reference else { return };
    let ev = Event {
        type_: match event.type_ {
            EventType::Normal => kube::runtime::events::EventType::Normal,
            EventType::Warning => kube::runtime::events::EventType::Warning,
        },
        reason: event.reason.to_owned(),
        note: Some(event.note.chars().take(1024).collect()),
        action: event.reason.to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
        warn!(object = name, reason = event.reason, error = %e, "publishing event failed");
    }
}

fn export_gauges(ctx: &Context, pool: &str, report: &Report) {
    let c = &report.pool.counts;
    for (state, value) in [
        ("hosts", c.hosts),
        ("in_sync", c.in_sync),
        ("connecting", c.connecting),
        ("failing", c.failing),
        ("unresponsive", c.unresponsive),
    ] {
        ctx.metrics
            .pool_hosts
            .get_or_create(&PoolStateLabels {
                pool: pool.to_owned(),
                state,
            })
            .set(i64::from(value));
    }
    let mut phases = std::collections::BTreeMap::new();
    for status in report.domains.values() {
        if let Some(phase) = status.phase {
            *phases.entry(phase.as_str()).or_insert(0_i64) += 1;
        }
    }
    for phase in crate::api::domain::ALL_PHASES {
        ctx.metrics
            .pool_domains
            .get_or_create(&PoolPhaseLabels {
                pool: pool.to_owned(),
                phase: phase.as_str(),
            })
            .set(phases.get(phase.as_str()).copied().unwrap_or(0));
    }
}

/// Writes the status of a domain no existing pool owns (unattached, or naming a missing pool), and
/// releases its finalizer when it is being deleted: with no pool there is nothing to detach from.
///
/// # Errors
/// When a write fails.
pub async fn orphan_domain(ctx: &Context, domain: &StorageDomain) -> Result<(), Error> {
    let pool_exists = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && ctx.stores.pools.get(&StoreRef::new(p)).is_some())
    };
    let spec_pool = domain.spec.pool.as_deref();
    let status_pool = domain.status.as_ref().and_then(|s| s.pool.as_deref());
    if pool_exists(spec_pool) || pool_exists(status_pool) {
        return Ok(());
    }
    let current = domain.status.clone().unwrap_or_default();
    let desired = plan::orphan_domain(
        domain.metadata.generation,
        &domain.spec,
        &current,
        jiff::Timestamp::now(),
    );
    if needs_write(Some(&current), &desired) {
        write_domain_status(ctx, &domain.name_any(), &desired).await?;
    }
    if domain.metadata.deletion_timestamp.is_some()
        && domain
            .finalizers()
            .iter()
            .any(|f| f == plan::DOMAIN_FINALIZER)
    {
        let change = plan::FinalizerChange {
            object: plan::ObjectRef::domain(domain.name_any()),
            finalizer: plan::DOMAIN_FINALIZER,
            action: plan::FinalizerAction::Remove,
        };
        super::act::apply_finalizer(ctx, &change).await?;
    }
    Ok(())
}
