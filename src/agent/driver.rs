//! The monitor driver: one shared ticker for the monitors of every host in the process, so a
//! simulator with thousands of hosts has no task per monitor. Each tick asks every host for its
//! checks due and reads the domain metadata: inline when storage answers at once (simulated
//! storage), in a short-lived task with a deadline otherwise. At most one read per monitor is in
//! flight; the decisions live in [`super::monitor`], this module only reads and calls back. The
//! same ticker renews the leases of hosts that are pool manager (blocking I/O, off the runtime's
//! workers; not while a simulated host is cut off) and fences a holder whose renewals stopped.

use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use tokio::sync::watch;

use super::host::HostAgent;
use super::monitor::MonitorConfig;

/// Drives the monitors of `hosts` until `shutdown` turns true: one ticker for all of them.
pub async fn run_driver(
    hosts: Arc<[Arc<HostAgent>]>,
    config: MonitorConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(config.tick());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        for host in hosts.iter() {
            let now = Instant::now();
            for (sd, generation) in host.poll_monitors(now) {
                start_check(host, sd, generation, config);
            }
            host.fence_if_stale(now);
            // A cut-off simulated host is cut off from storage too (a hung or dead host): its
            // renewals stop, so it gives the role up at half the lease and another host may
            // take it once the lease expires, as with a dead holder's sanlock lease.
            if host.is_blackholed() {
                continue;
            }
            if let Some((master, owner)) = host.spm_renewal_due(now) {
                let host = Arc::clone(host);
                tokio::task::spawn_blocking(move || host.renew_spm(&master, &owner, now));
            }
        }
    }
}

fn start_check(host: &Arc<HostAgent>, sd: String, generation: u64, config: MonitorConfig) {
    let started = Instant::now();
    let mut read = host.storage().read_metadata(&sd);
    if let Some(result) = (&mut read).now_or_never() {
        host.record_check(&sd, generation, result, started.elapsed(), config.period);
        return;
    }
    let host = Arc::clone(host);
    tokio::spawn(async move {
        let result = match tokio::time::timeout(config.check_timeout, &mut read).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(host = %host.name(), domain = %sd, timeout = ?config.check_timeout, "domain check hung");
                host.record_hung(&sd, generation);
                read.await
            }
        };
        host.record_check(&sd, generation, result, started.elapsed(), config.period);
    });
}
