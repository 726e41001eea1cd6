//! Crash points for fault tests: with `POOLKEEPER_CRASH_AT=<point>[:<detail>][@<n>]` in its
//! environment, the controller aborts the `n`-th time (default: the first) it reaches that point,
//! as a `kill -9` there would stop it: no graceful shutdown, nothing flushed, calls and writes in
//! flight cut. Unset (always, outside tests), [`reached`] is one lookup of a value read once.
//!
//! | point | where | detail |
//! | --- | --- | --- |
//! | `map-persisted` | the new map is in the pool status, no host told yet | - |
//! | `calling` | a call is recorded in the ledger, about to be sent | `connect`, `disconnect` |
//! | `called` | a host answered, its outcome not recorded yet | `connect`, `disconnect` |
//! | `status-written` | a status write succeeded | the kind |
//! | `finalizers-written` | a finalizer change succeeded | the kind |
//! | `event-published` | an event was published | the regarded object's kind |
//!
//! This module decides nothing and changes nothing unless the variable is set.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a crash point.
pub const CRASH_AT_ENV: &str = "POOLKEEPER_CRASH_AT";

/// The armed point: `point`, optionally only with `detail`, aborting at hit number `nth`.
#[derive(Debug)]
struct Armed {
    point: String,
    detail: Option<String>,
    nth: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| parse(&std::env::var(CRASH_AT_ENV).ok()?))
        .as_ref()
}

fn parse(spec: &str) -> Option<Armed> {
    let (what, nth) = match spec.split_once('@') {
        Some((what, n)) => (what, n.parse().ok()?),
        None => (spec, 1),
    };
    let (point, detail) = match what.split_once(':') {
        Some((p, d)) => (p, Some(d.to_owned())),
        None => (what, None),
    };
    Some(Armed {
        point: point.to_owned(),
        detail,
        nth,
        hits: AtomicU64::new(0),
    })
}

/// Marks that the controller reached `point` (with `detail`); aborts the process when that is the
/// armed point's `n`-th hit.
pub fn reached(point: &str, detail: &str) {
    let Some(armed) = armed() else { return };
    if armed.point != point || armed.detail.as_deref().is_some_and(|d| d != detail) {
        return;
    }
    if armed.hits.fetch_add(1, Ordering::SeqCst) + 1 == armed.nth {
        tracing::error!(
            point,
            detail,
            hit = armed.nth,
            "crash point reached, aborting"
        );
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_and_without_detail_and_count() {
        let a = parse("status-written:StorageDomain@3").expect("parses");
        assert_eq!(
            (a.point.as_str(), a.detail.as_deref(), a.nth),
            ("status-written", Some("StorageDomain"), 3)
        );
        let a = parse("map-persisted").expect("parses");
        assert_eq!(
            (a.point.as_str(), a.detail, a.nth),
            ("map-persisted", None, 1)
        );
        assert!(parse("called@x").is_none());
    }
}
