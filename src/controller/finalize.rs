//! The last step of a pool reconcile: add and remove the finalizers the plan asks for (last,
//! because removing the pool's own finalizer may delete it). Each change is a compare-and-swap on
//! the cached object's resourceVersion, so finalizers others added are never lost.

use kube::{ResourceExt, runtime::reflector::ObjectRef as StoreRef};
use tracing::info;

use super::{Context, Error, write::with_finalizer};
use crate::{
    api::{StorageDomain, StoragePool},
    plan::{FinalizerAction, FinalizerChange, ObjectKind},
};

/// Applies `changes` in order.
///
/// # Errors
/// The first change that failed (the reconcile is retried; a 409 soon).
pub async fn finalize(ctx: &Context, changes: &[FinalizerChange]) -> Result<(), Error> {
    for change in changes {
        apply(ctx, change).await?;
    }
    Ok(())
}

async fn apply(ctx: &Context, change: &FinalizerChange) -> Result<(), Error> {
    let name = change.object.name.as_str();
    let present = change.action == FinalizerAction::Add;
    let result = match change.object.kind {
        ObjectKind::StorageDomain => {
            let Some(obj) = ctx.stores.domains.get(&StoreRef::new(name)) else {
                return Ok(());
            };
            let Some(wanted) = with_finalizer(obj.as_ref(), change.finalizer, present) else {
                return Ok(());
            };
            let version = obj.resource_version();
            ctx.writer
                .finalizers::<StorageDomain>(name, &wanted, version.as_deref())
                .await
        }
        ObjectKind::StoragePool => {
            let Some(obj) = ctx.stores.pools.get(&StoreRef::new(name)) else {
                return Ok(());
            };
            let Some(wanted) = with_finalizer(obj.as_ref(), change.finalizer, present) else {
                return Ok(());
            };
            let version = obj.resource_version();
            ctx.writer
                .finalizers::<StoragePool>(name, &wanted, version.as_deref())
                .await
        }
        // The planner never puts finalizers on Hosts.
        ObjectKind::Host => return Ok(()),
    };
    match result {
        Ok(()) => {}
        Err(e) if e.is_not_found() => return Ok(()),
        Err(source) => {
            return Err(Error::Finalizer {
                kind: change.object.kind.as_str(),
                name: name.to_owned(),
                source,
            });
        }
    }
    info!(kind = change.object.kind.as_str(), name, finalizer = change.finalizer, action = ?change.action, "finalizer updated");
    Ok(())
}
