//! Micro-benchmarks of the queue's hot paths: storing a call, taking due calls off the
//! schedule and finishing them, finding the next due call among many scheduled later, and the
//! retry schedule itself.

use cage_runtime::config::QueuePolicy;
use cage_runtime::model::call::{CallRecord, QueuedCall, Stage};
use cage_runtime::queue::QueueStore;
use cage_runtime::retry_policy::next_attempt_at;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use std::sync::atomic::{AtomicU64, Ordering};

static SEQ: AtomicU64 = AtomicU64::new(0);

fn record(due_ms: u64) -> CallRecord {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let call = QueuedCall {
        id: format!("bench-18c3f0a2b4d-{n}"),
        source: "a".into(),
        target: "a".into(),
        module: "billing".into(),
        method: "charge".into(),
        args: br#"{"customer":"c-0001","cents":500}"#.to_vec(),
        queue: "retry".into(),
        priority: 0,
        key: None,
        enqueued_at_ms: due_ms,
        not_before_ms: due_ms,
        chain: None,
        group: None,
    };
    CallRecord::new(call, Stage::Execute, due_ms)
}

fn queue(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = QueueStore::open(dir.path()).unwrap();
    // A backlog scheduled far in the future, as in a cage holding many pending calls.
    for i in 0..100_000u64 {
        store.insert(&record(10_000_000_000_000 + i)).unwrap();
    }

    c.bench_function(
        "queue insert (record, due index, order index; no flush)",
        |b| b.iter(|| store.insert(black_box(&record(1_000))).unwrap()),
    );

    c.bench_function("queue pop: take 64 due calls and finish them", |b| {
        b.iter_batched(
            || {
                for _ in 0..64 {
                    store.insert(&record(1_000)).unwrap();
                }
            },
            |()| {
                for due in store.due(2_000, 64).unwrap() {
                    let r = store.get(&due.id).unwrap().unwrap();
                    store.finish(&r).unwrap();
                }
            },
            BatchSize::PerIteration,
        )
    });
    // Drain what the insert benchmark left due, so the index lookups below see only the backlog.
    while !store.due(2_000, 1024).unwrap().is_empty() {
        for due in store.due(2_000, 1024).unwrap() {
            let r = store.get(&due.id).unwrap().unwrap();
            store.finish(&r).unwrap();
        }
    }

    c.bench_function(
        "schedule index: next due time among 100 000 later calls",
        |b| b.iter(|| black_box(store.next_due_ms().unwrap())),
    );
    c.bench_function(
        "schedule index: due calls now (none) among 100 000 later calls",
        |b| b.iter(|| black_box(store.due(black_box(2_000), 1024).unwrap())),
    );

    let policy = QueuePolicy::default();
    c.bench_function("retry schedule: next attempt time", |b| {
        let mut attempt = 0;
        b.iter(|| {
            attempt = attempt % 80 + 1;
            black_box(next_attempt_at(
                &policy.backoff(),
                attempt,
                1_000,
                5_000,
                0.3,
            ))
        })
    });
}

criterion_group!(benches, queue);
criterion_main!(benches);
