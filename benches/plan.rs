//! Criterion benchmark of the pure planner: `plan` (and `report`) on a converged pool (the common
//! no-op reconcile) and at the start of a rollout (every host out of sync), at 250 hosts × 20
//! domains, 2,000 × 20 and 2,000 × 100. Target: under 1 ms at 250 × 20.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use poolkeeper::plan::{self, fixtures};

const SIZES: [(usize, usize); 3] = [(250, 20), (2000, 20), (2000, 100)];

fn bench_plan(c: &mut Criterion) {
    let now = fixtures::at(0);
    let mut group = c.benchmark_group("plan");
    for (hosts, domains) in SIZES {
        let id = format!("{hosts}x{domains}");
        let steady = fixtures::steady(hosts, domains, now);
        group.bench_with_input(BenchmarkId::new("steady", &id), &steady, |b, o| {
            b.iter(|| plan::plan(black_box(o), now));
        });
        group.bench_with_input(BenchmarkId::new("steady+report", &id), &steady, |b, o| {
            b.iter(|| {
                let p = plan::plan(black_box(o), now);
                plan::report(o, &p, &[], now)
            });
        });
        // A domain goes to maintenance: a new map for every host.
        let mut rollout = steady.clone();
        if let Some(d) = rollout.domains.values_mut().last() {
            d.spec.maintenance = true;
        }
        group.bench_with_input(BenchmarkId::new("rollout", &id), &rollout, |b, o| {
            b.iter(|| plan::plan(black_box(o), now));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_plan);
criterion_main!(benches);
