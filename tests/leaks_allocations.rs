//! Allocations per lifecycle over many lifecycles (100 000; 1 000 000 with `ASYNC_HOOKS_LONG=1`),
//! counted per thread by a global allocator: the counts documented in `tests/allocations.rs` hold
//! on every lifecycle, not only on average, and the bytes still allocated afterwards are exactly
//! what they were before (nothing grows), with and without a hook.

use async_hooks::{
    AsyncLocalStorage, AsyncResource, BindContext, Hooks, Snapshot, async_resource, create_hook,
};

mod support;
use support::futures::poll_to_ready;
use support::{counting_alloc, serial};

#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

fn lifecycles() -> u64 {
    if std::env::var_os("ASYNC_HOOKS_LONG").is_some() {
        1_000_000
    } else {
        100_000
    }
}

/// Runs `f` `lifecycles()` times after a warm-up; asserts every call allocates exactly
/// `per_call` times (when given) and that the net bytes allocated do not grow. Returns the
/// allocations of the last call.
fn measure(per_call: Option<u64>, mut f: impl FnMut(u64)) -> u64 {
    f(0);
    f(1);
    let net_before = counting_alloc::net_bytes();
    let mut last = 0;
    for i in 0..lifecycles() {
        let before = counting_alloc::allocations();
        f(i);
        last = counting_alloc::allocations() - before;
        if let Some(expected) = per_call {
            assert_eq!(last, expected, "allocations in lifecycle {i}");
        }
    }
    assert_eq!(
        counting_alloc::net_bytes() - net_before,
        0,
        "bytes still allocated after {} lifecycles",
        lifecycles()
    );
    last
}

#[async_resource]
async fn annotated(x: u64) -> u64 {
    x + 1
}

static STORE: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
static OTHER: AsyncLocalStorage<u64> = AsyncLocalStorage::new();

#[test]
fn no_hook_instrumented_lifecycles_allocate_nothing_on_every_lifecycle() {
    let _serial = serial();
    measure(Some(0), |i| assert_eq!(poll_to_ready(annotated(i)), i + 1));
    measure(Some(0), |i| {
        assert_eq!(poll_to_ready(async move { i }.bind_context()), i)
    });
    measure(Some(0), |i| drop(annotated(i)));
    STORE.run(5, || {
        measure(Some(0), |i| assert_eq!(poll_to_ready(annotated(i)), i + 1));
        measure(Some(0), |_| {
            assert_eq!(STORE.get_store().as_deref(), Some(&5))
        });
    });
}

#[test]
fn documented_counts_hold_on_every_lifecycle() {
    let _serial = serial();
    // `run`: nothing (the frame is on the stack; the store goes into the allocation the last
    // `run` left in the thread's cache).
    measure(Some(0), |i| STORE.run(i, || ()));
    // A future made inside it keeps the frame: its one entry in the future itself, nothing
    // allocated (the store's allocation is still recycled: the future is gone when the `run`
    // ends); over another storage's store, one heap copy of it.
    measure(Some(0), |i| STORE.run(i, || drop(annotated(i))));
    OTHERS[0].run(0, || {
        measure(Some(1), |i| STORE.run(i, || drop(annotated(i))))
    });
    // A store kept beyond its `run` is not recycled: that `run`'s `Arc` only.
    measure(Some(1), |i| drop(STORE.run(i, || STORE.get_store())));
    measure(Some(0), |_| {
        AsyncResource::new("Counted").run_in_async_scope(|| ())
    });
    measure(Some(1), |_| drop(AsyncResource::new("Counted").resource()));
    // A `scope` future, run to the end or dropped pending: its store's allocation is recycled
    // as `run`'s is, and its polls build their frame on the stack.
    measure(Some(0), |i| {
        assert_eq!(poll_to_ready(STORE.scope(i, async move { i })), i)
    });
    measure(Some(0), |i| {
        drop(STORE.scope(i, std::future::pending::<()>()))
    });
    // A snapshot's runs enter its frame in place.
    let snapshot = STORE.run(3, Snapshot::capture);
    measure(Some(0), |_| {
        assert_eq!(snapshot.run(|| STORE.get_store()).as_deref(), Some(&3))
    });
    // Over four other storages the frame's entries spill to one heap block; the store is
    // still recycled.
    static OTHERS: [AsyncLocalStorage<u64>; 4] = [const { AsyncLocalStorage::new() }; 4];
    let nested = |i: u64| {
        OTHERS[0].run(i, || {
            OTHERS[1].run(i, || {
                OTHERS[2].run(i, || OTHERS[3].run(i, || STORE.run(i, || ())))
            })
        })
    };
    measure(Some(1), nested);
}

#[test]
fn with_a_hook_nothing_accumulates() {
    let _serial = serial();
    let hook = create_hook(Hooks::new().init(|_, _, _, _| {}).destroy(|_| {})).enable();
    let instrumented = measure(None, |i| assert_eq!(poll_to_ready(annotated(i)), i + 1));
    let resource = measure(None, |_| {
        AsyncResource::new("Counted").run_in_async_scope(|| ())
    });
    let stored = STORE.run(1, || measure(None, |i| STORE.run(i, || drop(annotated(i)))));
    let stored_over_another = STORE.run(1, || {
        OTHER.run(1, || measure(None, |i| STORE.run(i, || drop(annotated(i)))))
    });
    hook.disable();
    eprintln!(
        "with an init hook: {instrumented} allocation(s) per #[async_resource] lifecycle, \
         {resource} per AsyncResource, {stored} per run + future ({stored_over_another} over another storage)"
    );
    // An `init` hook that does not keep the resource makes no handle for it.
    assert_eq!((instrumented, resource), (0, 0));
    // The future keeps the frame's one entry in place (`run`'s store is recycled); a frame of
    // two is copied to the heap for it.
    assert_eq!((stored, stored_over_another), (0, 1));
}
