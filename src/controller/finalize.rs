//! Add and remove the finalizers the plan asks for: its guards before a pool reconcile acts, the
//! rest as its last step ([`crate::plan::Plan::guards`], [`crate::plan::Plan::finalizers`]). Each
//! change is a compare-and-swap on the cached object's resourceVersion, so finalizers others added
//! are never lost.

use kube::{
    Resource, ResourceExt,
    runtime::reflector::{ObjectRef as StoreRef, Store},
};
use serde::de::DeserializeOwned;
use tracing::info;

use super::{
    Context, Error,
    write::{WriteError, with_finalizer},
};
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
            set::<StorageDomain>(ctx, &ctx.stores.domains, name, change.finalizer, present).await
        }
        ObjectKind::StoragePool => {
            set::<StoragePool>(ctx, &ctx.stores.pools, name, change.finalizer, present).await
        }
        // The planner never puts finalizers on Hosts.
        ObjectKind::Host => Ok(false),
    };
    match result {
        Ok(true) => {}
        Ok(false) => return Ok(()),
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

/// Adds (`present`) or removes `finalizer` on the cached object `name`, compare-and-swap on the
/// cached resourceVersion; `false` when there was nothing to change.
async fn set<K>(
    ctx: &Context,
    store: &Store<K>,
    name: &str,
    finalizer: &str,
    present: bool,
) -> Result<bool, WriteError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(obj) = store.get(&StoreRef::new(name)) else {
        return Ok(false);
    };
    let Some(wanted) = with_finalizer(obj.as_ref(), finalizer, present) else {
        return Ok(false);
    };
    let version = obj.resource_version();
    ctx.writer
        .finalizers::<K>(name, &wanted, version.as_deref())
        .await
        .map(|()| true)
}
