//! The domain monitor table of one host: which domains are monitored, their vitals, and what a
//! finished (or hung) metadata read means for them. VDSM checks each `active` domain every period
//! (`sd_health_check_delay`, 10 s). VDSM's codes (monitor.py `_pathChecked`, check.py
//! `CheckResult.delay`): a metadata read that fails, or passes its deadline, is 2001
//! (`MiscFileReadException`) and `lastCheck` keeps growing until the read returns; a domain not
//! found is 358; metadata naming another domain is 379 (`StorageDomainAccessError`). `acquired`
//! (the host id held on the domain) turns true with a valid check of a data domain, never for
//! ISO or export (`Backup`) domains, and false again after a failed check.
//!
//! Pure: no tokio, no clock (every method takes `now`), no I/O. [`super::driver`] does the reads
//! on a ticker and feeds the results back through the host.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::storage::{ReadError, parse_metadata};
use crate::api::DomainVitals;
use crate::protocol::{ErrorCode, Vitals};

/// `lastCheck` values the report shows: the largest step at or below the real value, else 0. A
/// write happens only when the step changes, so a hung domain costs a few writes, not one per
/// tick. 30 s is the engine's "lastCheck too old" threshold.
pub const LAST_CHECK_STEPS: [f64; 5] = [30.0, 60.0, 120.0, 300.0, 600.0];
/// `delay` values the report shows, as for [`LAST_CHECK_STEPS`].
pub const DELAY_STEPS: [f64; 2] = [5.0, 30.0];
/// The longest monitor period accepted: beyond it a healthy `lastCheck` would cross the first
/// step every period and the report would tick.
pub const MAX_PERIOD: Duration = Duration::from_secs(20);

/// How monitors check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonitorConfig {
    /// Time between the end of a check and the start of the next (VDSM: 10 s).
    pub period: Duration,
    /// How long a read may take before the domain is reported unreadable (2001).
    pub check_timeout: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            period: Duration::from_secs(10),
            check_timeout: Duration::from_secs(10),
        }
    }
}

impl MonitorConfig {
    /// The shared ticker's interval: a fifth of the period, between 10 ms and 1 s.
    pub fn tick(&self) -> Duration {
        (self.period / 5).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// The report-relevant view of a monitor: what a write depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Projection {
    valid: bool,
    code: i64,
    actual: bool,
    acquired: bool,
    version: i64,
    delay_step: usize,
    last_check_step: usize,
}

/// One domain monitor.
#[derive(Debug)]
struct Monitor {
    /// Distinguishes this monitor from an earlier one of the same domain, so the result of a
    /// read started before a stop/start is dropped.
    generation: u64,
    next_due: Instant,
    in_flight: bool,
    /// When the status last changed from a finished read (or the monitor started).
    last_update: Instant,
    valid: bool,
    code: i64,
    delay: f64,
    actual: bool,
    acquired: bool,
    version: i64,
    reported: Projection,
}

fn step(value: f64, steps: &[f64]) -> usize {
    steps.iter().take_while(|s| value >= **s).count()
}

fn step_value(step: usize, steps: &[f64]) -> f64 {
    step.checked_sub(1)
        .and_then(|i| steps.get(i))
        .copied()
        .unwrap_or(0.0)
}

impl Monitor {
    fn new(generation: u64, now: Instant) -> Self {
        // VDSM's synthetic first status: no error yet, but not actual.
        let mut m = Self {
            generation,
            next_due: now,
            in_flight: false,
            last_update: now,
            valid: true,
            code: 0,
            delay: 0.0,
            actual: false,
            acquired: false,
            version: -1,
            reported: Projection {
                valid: true,
                code: 0,
                actual: false,
                acquired: false,
                version: -1,
                delay_step: 0,
                last_check_step: 0,
            },
        };
        m.reported = m.projection(now);
        m
    }

    fn last_check(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.last_update)
            .as_secs_f64()
    }

    fn projection(&self, now: Instant) -> Projection {
        Projection {
            valid: self.valid,
            code: self.code,
            actual: self.actual,
            acquired: self.acquired,
            version: self.version,
            delay_step: step(self.delay, &DELAY_STEPS),
            last_check_step: step(self.last_check(now), &LAST_CHECK_STEPS),
        }
    }

    /// Updates the reported projection; true when it changed (a report write is due).
    fn refresh(&mut self, now: Instant) -> bool {
        let p = self.projection(now);
        let changed = p != self.reported;
        self.reported = p;
        changed
    }
}

/// The monitors of one host.
#[derive(Debug, Default)]
pub(crate) struct Monitors {
    by_sd: BTreeMap<String, Monitor>,
    next_generation: u64,
}

/// A read's result, for [`Monitors::record`].
pub(crate) type ReadResult = Result<Vec<u8>, ReadError>;

impl Monitors {
    /// Starts monitors for domains in `active` that have none and stops the others. True when
    /// the set changed.
    pub(crate) fn sync<'a>(&mut self, active: impl Iterator<Item = &'a str>, now: Instant) -> bool {
        let want: std::collections::BTreeSet<&str> = active.collect();
        let before = self.by_sd.len();
        self.by_sd.retain(|sd, _| want.contains(sd.as_str()));
        let mut changed = self.by_sd.len() != before;
        for sd in want {
            if !self.by_sd.contains_key(sd) {
                self.next_generation += 1;
                self.by_sd
                    .insert(sd.to_owned(), Monitor::new(self.next_generation, now));
                changed = true;
            }
        }
        changed
    }

    /// How many domains are monitored.
    pub(crate) fn len(&self) -> usize {
        self.by_sd.len()
    }

    /// Refreshes every projection (threshold crossings of a hung check) and returns the checks
    /// due now, marking them in flight. The bool is true when a projection changed.
    pub(crate) fn poll(&mut self, now: Instant) -> (Vec<(String, u64)>, bool) {
        let mut due = Vec::new();
        let mut changed = false;
        for (sd, m) in &mut self.by_sd {
            changed |= m.refresh(now);
            if !m.in_flight && m.next_due <= now {
                m.in_flight = true;
                due.push((sd.clone(), m.generation));
            }
        }
        (due, changed)
    }

    /// Records a finished read of `sd` that took `delay`. True when the report changed.
    pub(crate) fn record(
        &mut self,
        sd: &str,
        generation: u64,
        result: ReadResult,
        delay: Duration,
        period: Duration,
        now: Instant,
    ) -> bool {
        let Some(m) = self
            .by_sd
            .get_mut(sd)
            .filter(|m| m.generation == generation)
        else {
            return false;
        };
        let (valid, code, version, data) = match result {
            Err(ReadError::NotFound) => (
                false,
                ErrorCode::StorageDomainDoesNotExist.code(),
                None,
                false,
            ),
            Err(ReadError::Io(_)) => (false, ErrorCode::MiscFileReadException.code(), None, false),
            Ok(bytes) => {
                let md = parse_metadata(&bytes);
                if md.sd_uuid.as_deref() == Some(sd) {
                    // sd.py: ISO and Backup domains hold no host id.
                    let data = !matches!(md.class.as_deref(), Some("Iso" | "Backup"));
                    (true, 0, md.version, data)
                } else {
                    (
                        false,
                        ErrorCode::StorageDomainAccessError.code(),
                        None,
                        false,
                    )
                }
            }
        };
        m.valid = valid;
        m.code = code;
        m.actual = true;
        m.delay = delay.as_secs_f64();
        m.last_update = now;
        m.in_flight = false;
        m.next_due = now + period;
        // VDSM acquires the host id once a status is actual and valid (data domains only); a
        // failed check reports it not acquired.
        m.acquired = valid && data;
        if let Some(v) = version {
            m.version = v;
        }
        m.refresh(now)
    }

    /// Records that the read of `sd` passed its deadline and is still running: invalid (2001),
    /// actual, and `lastCheck` keeps growing. True when the report changed.
    pub(crate) fn record_hung(&mut self, sd: &str, generation: u64, now: Instant) -> bool {
        let Some(m) = self
            .by_sd
            .get_mut(sd)
            .filter(|m| m.generation == generation)
        else {
            return false;
        };
        m.valid = false;
        m.code = ErrorCode::MiscFileReadException.code();
        m.actual = true;
        m.acquired = false;
        m.refresh(now)
    }

    /// The exact vitals, as `Host.getStats` answers them.
    pub(crate) fn vitals(&self, now: Instant) -> BTreeMap<String, Vitals> {
        self.by_sd
            .iter()
            .map(|(sd, m)| {
                let v = Vitals {
                    valid: m.valid,
                    code: m.code,
                    last_check: m.last_check(now),
                    delay: m.delay,
                    acquired: m.acquired,
                    actual: m.actual,
                    version: m.version,
                };
                (sd.clone(), v)
            })
            .collect()
    }

    /// The vitals as the report shows them (delay and lastCheck in steps), sorted by sdUUID.
    pub(crate) fn report(&self) -> Vec<DomainVitals> {
        self.by_sd
            .iter()
            .map(|(sd, m)| {
                let p = m.reported;
                DomainVitals {
                    uuid: sd.clone(),
                    valid: p.valid,
                    code: i32::try_from(p.code).unwrap_or(i32::MAX),
                    delay_seconds: step_value(p.delay_step, &DELAY_STEPS),
                    last_check_seconds: step_value(p.last_check_step, &LAST_CHECK_STEPS),
                    acquired: p.acquired,
                    actual: p.actual,
                    version: i32::try_from(p.version).unwrap_or(-1),
                }
            })
            .collect()
    }
}

/// A domain's vitals as a real VDSM answered them (`Host.getStorageRepoStats`), as the report
/// shows them: delay and lastCheck in the same steps as the agent's own monitors, so a host
/// whose storage is steady writes nothing.
pub(crate) fn reported_vitals(sd: &str, v: &Vitals) -> DomainVitals {
    DomainVitals {
        uuid: sd.to_owned(),
        valid: v.valid,
        code: i32::try_from(v.code).unwrap_or(i32::MAX),
        delay_seconds: step_value(step(v.delay, &DELAY_STEPS), &DELAY_STEPS),
        last_check_seconds: step_value(step(v.last_check, &LAST_CHECK_STEPS), &LAST_CHECK_STEPS),
        acquired: v.acquired,
        actual: v.actual,
        version: i32::try_from(v.version).unwrap_or(-1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaa-0000-0000-0000-000000000001";
    const B: &str = "bbbbbbbb-0000-0000-0000-000000000002";
    const PERIOD: Duration = Duration::from_secs(10);

    fn ok(sd: &str) -> ReadResult {
        Ok(super::super::storage::metadata_text(sd).into_bytes())
    }

    #[test]
    fn a_new_monitor_is_valid_but_not_actual_until_its_first_check() {
        let t0 = Instant::now();
        let mut m = Monitors::default();
        assert!(m.sync([A].into_iter(), t0));
        let r = m.report();
        assert!(r[0].valid && !r[0].actual && !r[0].acquired);
        let (due, _) = m.poll(t0);
        assert_eq!(due.len(), 1);
        assert!(m.poll(t0).0.is_empty(), "one read in flight at most");
        assert!(m.record(A, due[0].1, ok(A), Duration::from_millis(2), PERIOD, t0));
        let r = m.report();
        assert!(r[0].valid && r[0].actual && r[0].acquired);
        assert_eq!(r[0].version, 5);
        assert_eq!(r[0].delay_seconds, 0.0);
    }

    #[test]
    fn results_map_to_vdsm_codes() {
        let t0 = Instant::now();
        let mut m = Monitors::default();
        m.sync([A].into_iter(), t0);
        let check = |m: &mut Monitors, r: ReadResult, at: Instant| {
            let (due, _) = m.poll(at);
            m.record(A, due[0].1, r, Duration::ZERO, PERIOD, at);
            m.report()[0].code
        };
        assert_eq!(check(&mut m, Err(ReadError::NotFound), t0), 358);
        let t1 = t0 + PERIOD;
        assert_eq!(
            check(&mut m, Err(ReadError::Io(std::io::Error::other("x"))), t1),
            2001
        );
        assert!(!m.report()[0].acquired, "a failed check is not acquired");
        let t2 = t1 + PERIOD;
        assert_eq!(check(&mut m, ok(B), t2), 379);
        let t3 = t2 + PERIOD;
        assert_eq!(check(&mut m, ok(A), t3), 0);
    }

    #[test]
    fn hung_check_is_invalid_and_last_check_crosses_steps_once_each() {
        let t0 = Instant::now();
        let mut m = Monitors::default();
        m.sync([A].into_iter(), t0);
        let (due, _) = m.poll(t0);
        assert!(m.record_hung(A, due[0].1, t0 + Duration::from_secs(10)));
        assert_eq!(m.report()[0].code, 2001);
        assert!(m.report()[0].actual);
        assert!(!m.poll(t0 + Duration::from_secs(20)).1);
        assert!(m.poll(t0 + Duration::from_secs(31)).1, "crossed 30 s");
        assert_eq!(m.report()[0].last_check_seconds, 30.0);
        assert!(!m.poll(t0 + Duration::from_secs(40)).1);
        assert!(m.vitals(t0 + Duration::from_secs(40))[A].last_check >= 40.0);
        assert!(m.record(
            A,
            due[0].1,
            ok(A),
            Duration::from_secs(41),
            PERIOD,
            t0 + Duration::from_secs(41)
        ));
        let r = &m.report()[0];
        assert!(r.valid);
        assert_eq!(r.last_check_seconds, 0.0);
        assert_eq!(r.delay_seconds, 30.0);
    }

    #[test]
    fn iso_and_export_domains_are_never_acquired() {
        let t0 = Instant::now();
        let mut m = Monitors::default();
        m.sync([A, B].into_iter(), t0);
        let (due, _) = m.poll(t0);
        for (sd, generation) in due {
            let class = if sd == A { "Iso" } else { "Backup" };
            let text = format!("CLASS={class}\nSDUUID={sd}\nVERSION=5\n");
            m.record(
                &sd,
                generation,
                Ok(text.into_bytes()),
                Duration::ZERO,
                PERIOD,
                t0,
            );
        }
        assert!(
            m.report()
                .iter()
                .all(|d| d.valid && d.actual && !d.acquired)
        );
    }

    #[test]
    fn steady_checks_do_not_change_the_report() {
        let t0 = Instant::now();
        let mut m = Monitors::default();
        m.sync([A].into_iter(), t0);
        let mut at = t0;
        let (due, _) = m.poll(at);
        m.record(A, due[0].1, ok(A), Duration::from_millis(1), PERIOD, at);
        for _ in 0..10 {
            at += PERIOD;
            let (due, changed) = m.poll(at);
            assert!(!changed);
            assert!(!m.record(A, due[0].1, ok(A), Duration::from_millis(3), PERIOD, at));
        }
    }

    #[test]
    fn stale_results_of_a_stopped_monitor_are_dropped() {
        let t0 = Instant::now();
        let mut m = Monitors::default();
        m.sync([A].into_iter(), t0);
        let (due, _) = m.poll(t0);
        assert!(m.sync([B].into_iter(), t0));
        assert!(m.sync([A, B].into_iter(), t0));
        assert!(!m.record(
            A,
            due[0].1,
            Err(ReadError::NotFound),
            Duration::ZERO,
            PERIOD,
            t0
        ));
        assert!(!m.report()[0].actual);
    }
}
