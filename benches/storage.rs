//! AsyncLocalStorage against tokio's `task_local!` and a plain `thread_local!`, in Node's
//! benchmark shapes (storages active, nested resource scopes).
//!
//! `cargo bench --bench storage`

use std::cell::Cell;
use std::hint::black_box;

use async_hooks::{AsyncLocalStorage, AsyncResource, Snapshot};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

static STORE: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
static UNUSED: AsyncLocalStorage<u64> = AsyncLocalStorage::new();

tokio::task_local! {
    static TASK_LOCAL: u64;
}

thread_local! {
    static THREAD_LOCAL: Cell<u64> = const { Cell::new(1) };
}

/// Runs `f` with `n - 1` other storages active (plus whatever `f` sets itself).
fn with_active(others: &[AsyncLocalStorage<u64>], f: &mut dyn FnMut()) {
    match others.split_first() {
        Some((first, rest)) => first.run(7, || with_active(rest, f)),
        None => f(),
    }
}

/// Runs `f` inside `depth` nested resource scopes.
fn nested_scopes(depth: usize, f: &mut dyn FnMut()) {
    if depth == 0 {
        return f();
    }
    let r = AsyncResource::new("Nest");
    r.run_in_async_scope(|| nested_scopes(depth - 1, f));
}

/// A read from a function of its own, as a logger reads the request's store: the loop of a
/// bench that calls `with_store` directly may keep the thread-local's address, or the whole
/// read, in registers across iterations, which a real caller cannot.
#[inline(never)]
fn read_store() -> u64 {
    STORE.with_store(|v| v.map_or(0, |v| *v))
}

/// `read_store`'s peer.
#[inline(never)]
fn read_task_local() -> u64 {
    TASK_LOCAL.with(|v| *v)
}

fn reads(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    STORE.run(1, || {
        group.bench_function("async-hooks get_store hit", |b| {
            b.iter(|| black_box(STORE.get_store()))
        });
        // Reads the value into a `u64`, as the tokio row does: black-boxing the 16-byte
        // `Option<u64>` instead measured `black_box`'s own store-forwarding stall.
        group.bench_function("async-hooks with_store hit", |b| {
            b.iter(|| STORE.with_store(|v| black_box(v.map_or(0, |v| *v))))
        });
        group.bench_function("async-hooks with_store hit, through a call", |b| {
            b.iter(|| black_box(read_store()))
        });
        group.bench_function("async-hooks get_store miss", |b| {
            b.iter(|| black_box(UNUSED.get_store()))
        });
    });
    // Inside a resource's scope the thread owns a reference to the resource's frame, which
    // `with_store` lends to its closure (above, inside `run`, the frame is `run`'s own).
    let resource = STORE.run(1, || AsyncResource::new("Reader"));
    resource.run_in_async_scope(|| {
        group.bench_function("async-hooks with_store hit, in a resource's scope", |b| {
            b.iter(|| STORE.with_store(|v| black_box(v.map_or(0, |v| *v))))
        });
        group.bench_function(
            "async-hooks with_store hit, in a resource's scope, through a call",
            |b| b.iter(|| black_box(read_store())),
        );
        // After an `enter_with` there, the thread's cell owns the frame, and lends it.
        STORE.enter_with(1);
        group.bench_function(
            "async-hooks with_store hit, after enter_with, through a call",
            |b| b.iter(|| black_box(read_store())),
        );
    });
    TASK_LOCAL.sync_scope(1, || {
        group.bench_function("tokio task_local with (hit)", |b| {
            b.iter(|| TASK_LOCAL.with(|v| black_box(*v)))
        });
        group.bench_function("tokio task_local with (hit), through a call", |b| {
            b.iter(|| black_box(read_task_local()))
        });
    });
    group.bench_function("tokio task_local try_with (miss)", |b| {
        b.iter(|| black_box(TASK_LOCAL.try_with(|v| *v).ok()))
    });
    group.bench_function("thread_local with", |b| {
        b.iter(|| THREAD_LOCAL.with(|v| black_box(v.get())))
    });
    group.finish();

    let mut group = c.benchmark_group("get_store with N storages active");
    for n in [1usize, 10, 100] {
        let others: Vec<AsyncLocalStorage<u64>> =
            (1..n).map(|_| AsyncLocalStorage::new()).collect();
        with_active(&others, &mut || {
            STORE.run(1, || {
                group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                    b.iter(|| black_box(STORE.get_store()))
                });
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("get_store under N nested resource scopes");
    for depth in [10usize, 100, 1000] {
        STORE.run(1, || {
            nested_scopes(depth, &mut || {
                group.bench_with_input(BenchmarkId::from_parameter(depth), &depth, |b, _| {
                    b.iter(|| black_box(STORE.get_store()))
                });
            })
        });
    }
    group.finish();
}

/// A call that may panic (never does).
#[inline(never)]
fn may_panic() {
    if black_box(false) {
        panic!("never");
    }
}

fn writes(c: &mut Criterion) {
    let mut group = c.benchmark_group("run with N storages active");
    for n in [1usize, 4, 16, 100] {
        let others: Vec<AsyncLocalStorage<u64>> =
            (1..n).map(|_| AsyncLocalStorage::new()).collect();
        with_active(&others, &mut || {
            group.bench_with_input(BenchmarkId::new("async-hooks run", n), &n, |b, _| {
                b.iter(|| STORE.run(black_box(1), || black_box(())))
            });
        });
    }
    group.bench_function("tokio task_local sync_scope", |b| {
        b.iter(|| TASK_LOCAL.sync_scope(black_box(1), || black_box(())))
    });
    // A closure that calls a function that may panic, as real closures do: the scope guards'
    // unwinding paths are then part of the code, which an empty closure's are not.
    for n in [1usize, 4] {
        let others: Vec<AsyncLocalStorage<u64>> =
            (1..n).map(|_| AsyncLocalStorage::new()).collect();
        with_active(&others, &mut || {
            group.bench_with_input(
                BenchmarkId::new("async-hooks run, closure calls out", n),
                &n,
                |b, _| b.iter(|| STORE.run(black_box(1), may_panic)),
            );
        });
    }
    group.bench_function("tokio task_local sync_scope, closure calls out", |b| {
        b.iter(|| TASK_LOCAL.sync_scope(black_box(1), may_panic))
    });
    // What a store's `Arc` costs when it is made and dropped (a malloc, two atomic decrements
    // and a free): `get_store()` hands out `Arc<T>`, so `run` needs one, and reuses the
    // allocation of the thread's previous `run` instead of paying this on every call.
    group.bench_function("Arc::new + drop (reused by run)", |b| {
        b.iter(|| drop(black_box(std::sync::Arc::new(black_box(1u64)))))
    });
    group.finish();

    let mut group = c.benchmark_group("snapshot");
    group.bench_function("Snapshot::capture, empty context", |b| {
        b.iter(|| black_box(Snapshot::capture()))
    });
    STORE.run(1, || {
        group.bench_function("Snapshot::capture, one storage", |b| {
            b.iter(|| black_box(Snapshot::capture()))
        });
    });
    group.finish();

    // A guard's scope: the store's `Arc`, a heap frame, and the thread's list of live guards
    // (which tells an out-of-order drop apart).
    let mut group = c.benchmark_group("enter_scope");
    group.bench_function("async-hooks enter_scope + drop", |b| {
        b.iter(|| drop(STORE.enter_scope(black_box(1))))
    });
    group.finish();
}

criterion_group!(benches, reads, writes);
criterion_main!(benches);
