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

/// Writes every changed status of the report and publishes the events of each object right after
/// its status changed (`persisted`: act already wrote the pool status, based on `pool_version`).
/// Transitions always change a status, so a reconcile that runs on a cache that has not caught up
/// with our own writes repeats neither the writes nor the events. One failed write does not stop
/// the others; an object deleted meanwhile (404) needs no status.
///
/// # Errors
/// The first status write that failed (the reconcile is retried).
pub async fn write(
    ctx: &Context,
    observed: &Observed,
    report: &Report,
    persisted: bool,
    pool_version: Option<&str>,
) -> Result<(), Error> {
    let pool = &observed.pool.name;
    let mut first_error = None;
    let cached = ctx
        .stores
        .pools
        .get(&StoreRef::new(pool))
        .and_then(|p| p.resource_version());
    let mut pool_written = persisted;
    if needs_write(Some(&observed.pool.status), &report.pool)
        && !ctx.already_written(
            ObjectKind::StoragePool,
            pool,
            cached.as_deref(),
            &report.pool,
        )
    {
        // Based on the version the plan was made from (or act's map write): the pool status
        // carries the map and host ids, which a stale reconcile must never overwrite.
        let result = write_pool_status(ctx, pool, &report.pool, pool_version.or(cached.as_deref()))
            .await
            .map_err(|source| Error::WriteStatus {
                kind: "StoragePool",
                name: pool.clone(),
                source,
            });
        if settle(result.map(drop), &mut first_error) {
            ctx.remember_write(
                ObjectKind::StoragePool,
                pool,
                cached.as_deref(),
                &report.pool,
            );
            pool_written = true;
            debug!(pool = %pool, "pool status written");
        }
    }
    if pool_written {
        publish_for(ctx, report, &plan::ObjectRef::pool(pool)).await;
    }
    for (name, status) in &report.domains {
        let current = observed.domains.get(name).map(|d| &d.status);
        let version = ctx
            .stores
            .domains
            .get(&StoreRef::new(name))
            .and_then(|d| d.resource_version());
        if needs_write(current, status)
            && !ctx.already_written(ObjectKind::StorageDomain, name, version.as_deref(), status)
            && settle(
                write_domain_status(ctx, name, status).await,
                &mut first_error,
            )
        {
            ctx.remember_write(ObjectKind::StorageDomain, name, version.as_deref(), status);
            publish_for(ctx, report, &plan::ObjectRef::domain(name)).await;
        }
    }
    for (name, status) in &report.hosts {
        let current = observed.hosts.get(name).map(|h| &h.controller);
        let version = ctx
            .stores
            .hosts
            .get(&StoreRef::new(name))
            .and_then(|h| h.resource_version());
        let body = host_status_body(status);
        if needs_write(current, status)
            && !ctx.already_written(ObjectKind::Host, name, version.as_deref(), &body)
            && settle(write_host_status(ctx, name, &body).await, &mut first_error)
        {
            ctx.remember_write(ObjectKind::Host, name, version.as_deref(), &body);
            publish_for(ctx, report, &plan::ObjectRef::host(name)).await;
        }
    }
    export_gauges(ctx, pool, report);
    first_error.map_or(Ok(()), Err)
}

/// Whether a write took effect; a 404 (the object is gone) counts as done, any other error is
/// kept (the first one) for the caller and the write counts as not done.
fn settle(result: Result<(), Error>, first_error: &mut Option<Error>) -> bool {
    match result {
        Ok(()) => true,
        Err(Error::WriteStatus {
            source: kube::Error::Api(status),
            ..
        }) if status.code == 404 => false,
        Err(e) => {
            warn!(error = %e, "status write failed");
            first_error.get_or_insert(e);
            false
        }
    }
}

async fn publish_for(ctx: &Context, report: &Report, object: &plan::ObjectRef) {
    for event in report.events.iter().filter(|e| e.object == *object) {
        publish(ctx, event).await;
    }
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

/// The apply body of the controller's part of a Host status: only the controller's fields, since
/// the agent owns `status.report` under its own field manager.
fn host_status_body(status: &HostControllerStatus) -> serde_json::Value {
    let mut fields = serde_json::Map::new();
    if let Some(phase) = status.phase {
        fields.insert("phase".into(), json!(phase));
    }
    if let Some(generation) = status.observed_generation {
        fields.insert("observedGeneration".into(), json!(generation));
    }
    fields.insert("conditions".into(), json!(status.conditions));
    json!({"apiVersion": "poolkeeper.io/v1alpha1", "kind": "Host", "status": fields})
}

async fn write_host_status(
    ctx: &Context,
    name: &str,
    body: &serde_json::Value,
) -> Result<(), Error> {
    let api: Api<Host> = Api::all(ctx.client.clone());
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
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
        note: Some(truncate(&event.note, 1024).to_owned()),
        action: event.reason.to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
        warn!(object = name, reason = event.reason, error = %e, "publishing event failed");
    }
}

/// `s` cut to at most `max` bytes at a character boundary (events.k8s.io limits `note` in bytes).
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
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
