//! The cost of recording one event with [`Recorder`]: a direct `before` call on a full ring
//! buffer (steady state: every event also evicts the oldest), and a whole `AsyncResource`
//! lifecycle (init, before, after, destroy: four events) with the recorder as the only hook,
//! next to the same lifecycle with a counting hook.
//!
//! `cargo bench --bench recorder -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use async_hooks::{AsyncId, AsyncResource, HookCallbacks, Recorder, create_hook};
mod common;

use common::counting_hook;
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("recorder");

    // One event recorded straight into a full buffer of 4096 events.
    let recorder = Recorder::new(4096);
    let id = AsyncId::from_u64(42);
    for _ in 0..4096 {
        recorder.before(id);
    }
    group.bench_function("record one event (direct call, full ring of 4096)", |b| {
        b.iter(|| recorder.before(black_box(id)))
    });

    let hook = counting_hook().enable();
    group.bench_function("AsyncResource lifecycle, counting hook (4 events)", |b| {
        b.iter(|| {
            let r = AsyncResource::new("Bench");
            r.run_in_async_scope(|| black_box(1));
        })
    });
    hook.disable();

    let recorder = Recorder::new(4096);
    let hook = create_hook(recorder.clone()).enable();
    group.bench_function("AsyncResource lifecycle, Recorder hook (4 events)", |b| {
        b.iter(|| {
            let r = AsyncResource::new("Bench");
            r.run_in_async_scope(|| black_box(1));
        })
    });
    hook.disable();
    assert_eq!(recorder.len(), 4096);
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
