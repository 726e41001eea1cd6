//! The counts-and-hosts snapshots of the write budget (see [`crate::plan`]): which tenth of the pool
//! a count falls in, the lagging or blocking host entries with their typed reason, and how those
//! lists are ordered, compared and named in messages. Pure; whether to keep a snapshot is decided
//! from [`bucket`]s and typed reasons here, never from message text.

use crate::api::{LagReason, LaggingHost};
use crate::plan::MAX_LISTED_HOSTS;

/// Which step of progress `n` out of `total` is in: 0 for none, 11 for all, 1..=10 for each tenth
/// between. A monotone rollout passes through at most 12 buckets, whatever the pool's size.
pub fn bucket(n: i32, total: i32) -> i32 {
    if n <= 0 {
        0
    } else if n >= total {
        11
    } else {
        1 + i32::try_from(i64::from(n) * 10 / i64::from(total.max(1))).unwrap_or(10)
    }
}

/// How many items, as the API's `i32` counts.
pub(super) fn count<T>(items: impl IntoIterator<Item = T>) -> i32 {
    i32::try_from(items.into_iter().count()).unwrap_or(i32::MAX)
}

/// A lagging or blocking host entry. Its message is the reason in words, followed by the error
/// when there is one (`connect failing: error 323: ...`).
pub(super) fn entry(host: &str, reason: LagReason, error: Option<&str>) -> LaggingHost {
    let words = words(reason);
    let message = match error {
        Some(e) => format!("{words}: {e}"),
        None => words.to_owned(),
    };
    LaggingHost::new(host, reason, message)
}

/// The words a reason is shown with in lists and condition messages.
fn words(reason: LagReason) -> &'static str {
    match reason {
        LagReason::NotResponding => "not responding",
        LagReason::ConnectFailing => "connect failing",
        LagReason::NotConfirming => "not confirming the map",
        LagReason::ReportUnparsable => "report unreadable",
        LagReason::NoEndpoint => "no endpoint to call",
        LagReason::BeingDisconnected => "being disconnected",
        LagReason::NotToldYet => "not told yet",
        LagReason::WaitingForReport => "waiting for its report",
        LagReason::WaitingTurn => "waiting its turn",
        LagReason::Connecting => "connecting",
    }
}

/// Problem entries first, then by name, at most [`MAX_LISTED_HOSTS`].
pub(super) fn listed(mut entries: Vec<LaggingHost>) -> Vec<LaggingHost> {
    entries.sort_by(|a, b| {
        b.reason
            .is_problem()
            .cmp(&a.reason.is_problem())
            .then_with(|| a.host.cmp(&b.host))
    });
    entries.truncate(MAX_LISTED_HOSTS);
    entries
}

/// The entries whose reason is a problem: a snapshot is rewritten when these change.
pub(super) fn problems(list: &[LaggingHost]) -> Vec<&LaggingHost> {
    list.iter().filter(|e| e.reason.is_problem()).collect()
}

/// `host (message), ...`, and how many more of `total` the list leaves out.
pub(super) fn names(list: &[LaggingHost], total: i32) -> String {
    let mut s = list
        .iter()
        .map(|e| format!("{} ({})", e.host, e.message))
        .collect::<Vec<_>>()
        .join(", ");
    let more = total - count(list);
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

/// At most [`MAX_LISTED_HOSTS`] names, and how many more there are.
pub(super) fn short_list(items: &[&str]) -> String {
    crate::api::bounds::listed(items, MAX_LISTED_HOSTS)
}
