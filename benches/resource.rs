//! AsyncResource and instrumented-future lifecycles, with and without a hook, next to a plain
//! closure call and a plain future.
//!
//! `cargo bench --bench resource`

use std::hint::black_box;
use std::sync::atomic::Ordering;

use async_hooks::{AsyncLocalStorage, AsyncResource, BindContext};
mod common;

use common::{EVENTS, counting_hook, poll_to_ready};
use criterion::{Criterion, criterion_group, criterion_main};

tokio::task_local! {
    static TASK_LOCAL: u64;
}

static STORE: AsyncLocalStorage<u64> = AsyncLocalStorage::new();

fn lifecycles(c: &mut Criterion) {
    let mut group = c.benchmark_group("lifecycle");
    group.bench_function("plain closure call", |b| {
        let f = black_box(|x: u64| x + 1);
        b.iter(|| f(black_box(1)))
    });
    group.bench_function("AsyncResource new+run_in_async_scope+drop, no hook", |b| {
        b.iter(|| {
            let r = AsyncResource::new("Bench");
            r.run_in_async_scope(|| black_box(1u64) + 1)
        })
    });
    // Shared, as a resource handed to several tasks is: moved into an `Arc` as soon as it is made.
    group.bench_function(
        "AsyncResource new+Arc::new+run_in_async_scope+drop, no hook",
        |b| {
            b.iter(|| {
                let r = std::sync::Arc::new(AsyncResource::new("Bench"));
                r.run_in_async_scope(|| black_box(1u64) + 1)
            })
        },
    );
    // A bound callback's usual shape: a resource made once under a request's store, its scope
    // run many times (as `bind!` closures and `AsyncResource::bind` do).
    let bound = STORE.run(7, || AsyncResource::new("Bench"));
    group.bench_function(
        "run_in_async_scope of one resource, one storage value captured",
        |b| b.iter(|| bound.run_in_async_scope(|| black_box(1u64) + 1)),
    );
    let hook = counting_hook().enable();
    group.bench_function(
        "AsyncResource new+run_in_async_scope+drop, counting hook",
        |b| {
            b.iter(|| {
                let r = AsyncResource::new("Bench");
                r.run_in_async_scope(|| black_box(1u64) + 1)
            })
        },
    );
    hook.disable();

    group.bench_function("plain future poll to ready", |b| {
        b.iter(|| poll_to_ready(async { black_box(1u64) + 1 }))
    });
    group.bench_function("tokio task_local scope future create+poll+drop", |b| {
        b.iter(|| poll_to_ready(TASK_LOCAL.scope(black_box(1), async { black_box(1u64) + 1 })))
    });
    group.bench_function("bind_context future create+poll+drop, no hook", |b| {
        b.iter(|| poll_to_ready(async { black_box(1u64) + 1 }.bind_context()))
    });
    let hook = counting_hook().enable();
    group.bench_function("bind_context future create+poll+drop, counting hook", |b| {
        b.iter(|| poll_to_ready(async { black_box(1u64) + 1 }.bind_context()))
    });
    hook.disable();
    group.finish();
    assert!(
        EVENTS.load(Ordering::Relaxed) > 0,
        "the hook saw the benchmarked resources"
    );
}

criterion_group!(benches, lifecycles);
criterion_main!(benches);
