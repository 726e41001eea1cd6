//! The domain controller: the status of domains that no existing pool owns (unattached, or naming
//! a pool that does not exist), and the release of their finalizer when they are deleted (with no
//! pool there is nothing to detach from). Watch-driven: a domain's own change, or a pool created or
//! deleted, wakes the domains concerned. The pool reconciler owns every other domain.

use std::sync::Arc;
use std::time::Duration;

use kube::{
    ResourceExt,
    runtime::{controller::Action, reflector::ObjectRef},
};

use super::{Context, Error, finalize::finalize, index, report::Written};
use crate::{
    api::StorageDomain,
    plan::{self, DOMAIN_FINALIZER, FinalizerAction, FinalizerChange, needs_write},
};

/// Reconciles one domain when no existing pool owns it.
///
/// # Errors
/// When its status or finalizer cannot be written (retried).
pub async fn reconcile(domain: Arc<StorageDomain>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.stores.ready() {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let owned = index::domain_pools(&domain)
        .into_iter()
        .any(|p| ctx.stores.pools.get(&ObjectRef::new(p)).is_some());
    if owned {
        return Ok(Action::requeue(SAFETY_LOOK));
    }
    let name = domain.name_any();
    let current = domain.status.clone().unwrap_or_default();
    let desired = plan::orphan_domain(
        domain.metadata.generation,
        &domain.spec,
        &current,
        jiff::Timestamp::now(),
    );
    if needs_write(Some(&current), &desired) {
        let version = ctx
            .writer
            .status::<StorageDomain>(&name, &desired, None)
            .await
            .map_err(|source| Error::WriteStatus {
                kind: "StorageDomain",
                name: name.clone(),
                source,
            })?;
        let mut written = Written::default();
        written.domain(&name, version);
        written.caught_up(&ctx.stores).await;
    }
    if domain.metadata.deletion_timestamp.is_some() {
        let release = FinalizerChange {
            object: plan::ObjectRef::domain(name),
            finalizer: DOMAIN_FINALIZER,
            action: FinalizerAction::Remove,
        };
        finalize(&ctx, &[release]).await?;
    }
    Ok(Action::requeue(SAFETY_LOOK))
}

/// A periodic look even when nothing changes: a pool deleted during a watch gap (a relist) wakes
/// none of its domains, so they would keep a stale status, and a deleted domain its finalizer.
const SAFETY_LOOK: Duration = Duration::from_secs(300);

/// What to do after a failed domain reconcile.
pub fn error_policy(domain: Arc<StorageDomain>, error: &Error, _ctx: Arc<Context>) -> Action {
    super::retry_after(&domain.name_any(), error)
}
