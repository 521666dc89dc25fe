//! Heap allocations on the hot paths, counted by a global allocator (this test binary enables
//! no hook, so these are the "no hook enabled" numbers).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};

use async_hooks::{
    AsyncLocalStorage, AsyncResource, BindContext, Instrumented, Snapshot, async_resource,
};

mod support;
use support::counting_alloc;
use support::futures::poll_to_ready;

#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

/// Allocations made by `f`, after one warm-up call (first use registers types and
/// thread-locals).
fn allocations(mut f: impl FnMut()) -> u64 {
    f();
    let before = counting_alloc::allocations();
    f();
    counting_alloc::allocations() - before
}

struct Once<R> {
    result: R,
    allocations: u64,
}

/// `f`'s result and the allocations it made, with no warm-up call.
fn once<R>(f: impl FnOnce() -> R) -> Once<R> {
    let before = counting_alloc::allocations();
    let result = f();
    let allocations = counting_alloc::allocations() - before;
    Once {
        result,
        allocations,
    }
}

#[async_resource]
async fn annotated(x: u64) -> u64 {
    x + 1
}

static STORE: AsyncLocalStorage<u64> = AsyncLocalStorage::new();

#[test]
fn instrumented_lifecycles_allocate_nothing() {
    assert_eq!(
        allocations(|| assert_eq!(poll_to_ready(annotated(1)), 2)),
        0
    );
    assert_eq!(
        allocations(|| assert_eq!(poll_to_ready(async { 3 }.bind_context()), 3)),
        0
    );
    // Never polled, and dropped while pending.
    assert_eq!(allocations(|| drop(annotated(1))), 0);
    assert_eq!(
        allocations(|| {
            let mut fut = pin!(std::future::pending::<()>().bind_context());
            let mut cx = Context::from_waker(Waker::noop());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }),
        0
    );
    // With a storage value captured: one refcount increment, still no allocation.
    STORE.run(5, || {
        assert_eq!(
            allocations(|| assert_eq!(poll_to_ready(annotated(1)), 2)),
            0
        )
    });
}

#[test]
fn storage_reads_and_captures_allocate_nothing() {
    assert_eq!(allocations(|| assert!(STORE.get_store().is_none())), 0);
    STORE.run(7, || {
        assert_eq!(
            allocations(|| assert_eq!(STORE.get_store().as_deref(), Some(&7))),
            0
        );
        assert_eq!(
            allocations(|| STORE.with_store(|v| assert_eq!(v, Some(&7)))),
            0
        );
        assert_eq!(allocations(|| drop(Snapshot::capture())), 0);
    });
    assert_eq!(allocations(|| drop(Snapshot::capture())), 0);
}

#[test]
fn documented_allocation_counts() {
    // `run` and `exit` with up to four storages in the frame: nothing once the thread has run
    // the storage before (the frame is built on the stack, and the store goes into the
    // allocation the last `run` of the storage left in the thread's cache). This binary has five
    // storages, so their keys (1 to 5) have slots of their own in that cache.
    static OTHERS: [AsyncLocalStorage<u64>; 4] = [const { AsyncLocalStorage::new() }; 4];
    assert_eq!(allocations(|| STORE.run(1, || ())), 0);
    assert_eq!(allocations(|| STORE.exit(|| ())), 0);
    OTHERS[0].run(1, || {
        OTHERS[1].run(2, || {
            OTHERS[2].run(3, || {
                assert_eq!(allocations(|| STORE.run(1, || ())), 0);
                // Nested, and replacing the storage's own entry: the inner `run` finds the
                // storage's slot empty (the outer one took it) and allocates.
                assert_eq!(allocations(|| STORE.run(1, || STORE.run(2, || ()))), 1);
                // A fifth storage: the frame's entries spill to the heap (one allocation); the
                // store is still recycled.
                assert_eq!(allocations(|| OTHERS[3].run(4, || ())), 0);
                assert_eq!(allocations(|| STORE.run(1, || OTHERS[3].run(4, || ()))), 1);
                assert_eq!(allocations(|| STORE.run(1, || OTHERS[3].run(4, || ()))), 1);
            })
        })
    });
    // A store still referenced when its `run` ends is not recycled: the next `run` allocates,
    // and the kept store is intact.
    assert_eq!(allocations(|| STORE.run(7, || ())), 0);
    let kept = once(|| STORE.run(8, || STORE.get_store().unwrap()));
    assert_eq!((kept.allocations, *kept.result), (0, 8));
    let next = once(|| STORE.run(9, || *STORE.get_store().unwrap()));
    assert_eq!((next.allocations, next.result), (1, 9));
    assert_eq!(once(|| STORE.run(10, || ())).allocations, 0);
    assert_eq!(*kept.result, 8);
    // Keeping the frame beyond the scope copies it to the heap once (one allocation), however
    // many resources capture it; a frame of one storage's store is kept in the resource itself
    // (no allocation).
    let capture_twice = || {
        STORE.run(1, || {
            let resources = [AsyncResource::new("A"), AsyncResource::new("B")];
            for resource in resources {
                resource.run_in_async_scope(|| assert_eq!(*STORE.get_store().unwrap(), 1));
            }
        })
    };
    assert_eq!(allocations(capture_twice), 0);
    OTHERS[0].run(1, || assert_eq!(allocations(capture_twice), 1));
    // `AsyncResource::new` and a scope: nothing (its `Resource` handle is made on first use).
    assert_eq!(
        allocations(|| AsyncResource::new("Counted").run_in_async_scope(|| ())),
        0
    );
    // Asking for the handle makes it, once.
    assert_eq!(
        allocations(|| {
            let resource = AsyncResource::new("Counted");
            assert_eq!(resource.resource(), resource.resource());
        }),
        1
    );
}

#[test]
fn wrapper_size_overhead() {
    fn overhead<F>(_: &Instrumented<F>) -> usize {
        std::mem::size_of::<Instrumented<F>>() - std::mem::size_of::<F>()
    }
    let plain = async {
        let local = [0u8; 64];
        std::future::ready(()).await;
        local.len()
    };
    let plain_size = std::mem::size_of_val(&plain);
    let wrapped = plain.bind_context();
    // Six words: async id, trigger id, the type-or-handle word (which also flags a finished
    // inner future, so no `Option` tag), and the storage frame, three words so that a frame of
    // one store is kept in place rather than in a heap frame (issue #31; issue #4's target was
    // at most 32 bytes, met with a one-word frame). A future whose size is not a multiple of 8
    // also pays its padding up to the wrapper's 8-byte alignment.
    let padding = plain_size.next_multiple_of(8) - plain_size;
    assert_eq!(
        overhead(&wrapped),
        48 + padding,
        "over a {plain_size}-byte future"
    );
    // An 8-aligned future: exactly 48 bytes.
    let aligned = async {
        let local = [0u64; 8];
        std::future::ready(()).await;
        local.len()
    };
    assert_eq!(std::mem::size_of_val(&aligned) % 8, 0);
    assert_eq!(overhead(&aligned.bind_context()), 48);
}
