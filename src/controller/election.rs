//! Leader election: one replica reconciles while it holds the `poolkeeper-controller` Lease.
//!
//! The Lease itself is kept by `kube-lease-manager` (acquire, renew, release when every
//! receiver is gone). One thing it does not do: a standby sleeps until the holder's Lease would
//! expire, so a leader that releases the Lease on a clean stop (a rolling update) would still
//! leave the pool without a leader for up to a Lease duration. Here a watch of that one Lease
//! wakes the standby when it is released: its lease manager is rebuilt, and the new one takes
//! the free Lease at once.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::Error;

/// How long a stopping replica waits for its lease manager to release the Lease.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Who competes for which Lease, and with what timings.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub lease: String,
    /// This replica's identity (its Pod name).
    pub identity: String,
    /// The Lease duration, in seconds.
    pub duration: u64,
    /// How long before expiry the holder renews, in seconds.
    pub grace: u64,
    /// The field manager of the Lease writes.
    pub field_manager: String,
}

impl Candidate {
    async fn manager(&self, client: &Client) -> Result<kube_lease_manager::LeaseManager, Error> {
        kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &self.lease)
            .with_namespace(&self.namespace)
            .with_identity(&self.identity)
            .with_duration(self.duration)
            .with_grace(self.grace)
            .with_field_manager(&self.field_manager)
            .build()
            .await
            .map_err(Error::LeaderElection)
    }
}

/// Starts campaigning: the receiver says whether this replica leads now. Dropping every
/// receiver ends the campaign and releases the Lease if held (awaited by the returned task, at
/// most [`RELEASE_WAIT`]). The sender is dropped (the receiver's `changed` fails) when the
/// election cannot go on: the caller treats that as leadership lost.
///
/// # Errors
/// When the first lease manager cannot be built (the Lease cannot be read or created).
pub async fn campaign(
    client: Client,
    candidate: Candidate,
) -> Result<(watch::Receiver<bool>, tokio::task::JoinHandle<()>), Error> {
    let first = candidate.manager(&client).await?;
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let leases: Api<Lease> = Api::namespaced(client.clone(), &candidate.namespace);
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", candidate.lease));
        let released = watcher(leases, config)
            .default_backoff()
            .applied_objects()
            .filter_map(|l| async move {
                let free = l
                    .ok()?
                    .spec
                    .is_none_or(|s| s.holder_identity.as_deref().is_none_or(str::is_empty));
                free.then_some(())
            });
        let mut released = std::pin::pin!(released);
        let mut manager = Some(first);
        loop {
            let current = match manager.take() {
                Some(m) => m,
                None => match candidate.manager(&client).await {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(error = %e, "leader election: cannot rebuild the lease manager; giving up");
                        return;
                    }
                },
            };
            let (mut leading, lease_task) = current.watch().await;
            let released_now = loop {
                tokio::select! {
                    () = tx.closed() => break false,
                    changed = leading.changed() => {
                        if changed.is_err() {
                            // The lease manager stopped on an error: leadership is lost.
                            warn!("leader election: the lease manager stopped");
                            return;
                        }
                        tx.send_replace(*leading.borrow_and_update());
                    }
                    Some(()) = released.next(), if !*leading.borrow() => break true,
                }
            };
            // Dropping the receiver makes the lease manager release the Lease if it holds it.
            drop(leading);
            if tokio::time::timeout(RELEASE_WAIT, lease_task)
                .await
                .is_err()
            {
                warn!(wait = ?RELEASE_WAIT, "leader election: the Lease was not released in time");
            }
            if !released_now {
                debug!("leader election: stopped");
                return;
            }
            info!(lease = %candidate.lease, "leader election: the Lease was released; competing for it now");
        }
    });
    Ok((rx, task))
}
