//! Instruction counts of the hot paths against tokio's `task_local!`, for `valgrind
//! --tool=callgrind`: unlike the criterion timings they are exact, repeatable, and do not depend on
//! code layout or on what else the machine is doing (see BENCHMARKS.md for why that matters on
//! this project's machine).
//!
//! Each shape runs in its own `#[inline(never)]` function, `ROUNDS` times after a warm-up of 10,
//! so a function's inclusive count divided by `ROUNDS + 10` is its cost per operation. The
//! set-up (making and dropping a future, entering a `run`, the thread's first look at the hook
//! registry, enabling and disabling a hook) is negligible at the default number of rounds:
//!
//! ```text
//! cargo bench --bench instructions --no-run
//! valgrind --tool=callgrind --callgrind-out-file=cg.out target/release/deps/instructions-<hash>
//! callgrind_annotate --threshold=100 --inclusive=yes cg.out | grep 'instructions::shape_'
//! ```
//!
//! The `tracing_registry` shapes are tracing's `#[instrument]` with a
//! `tracing_subscriber` registry, the peer of the counting-hook shapes. The `_calling` shapes run
//! a closure that calls a function that may panic, as real closures do: then the scope's guard
//! has a landing pad, which an empty closure's does not. `shape_run_16_calling` nests its
//! fifteen outer `run`s recursively: read its own line, not `nest`'s. Run without valgrind, it
//! runs every shape and prints nothing.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use async_hooks::{AsyncLocalStorage, AsyncResource, Snapshot, async_resource};

mod common;

use common::counting_hook;

const ROUNDS: u64 = 100_000;

static STORE: AsyncLocalStorage<u64> = AsyncLocalStorage::new();

static SHARED: AsyncLocalStorage<Arc<String>> = AsyncLocalStorage::new();

tokio::task_local! {
    static SCOPED_ARC: Arc<String>;
}

tokio::task_local! {
    static TASK_LOCAL: u64;
}

async fn plain(x: u64) -> u64 {
    black_box(x) + 1
}

#[async_resource]
async fn annotated(x: u64) -> u64 {
    black_box(x) + 1
}

/// Never ready: for re-polls.
struct Forever;

impl Future for Forever {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

async fn plain_forever() {
    Forever.await
}

#[async_resource]
async fn annotated_forever() {
    Forever.await
}

#[tracing::instrument]
async fn instrumented(x: u64) -> u64 {
    black_box(x) + 1
}

#[tracing::instrument]
async fn instrumented_forever() {
    Forever.await
}

/// Inlined into every shape, so that each is one function whatever LLVM decides about a shared
/// helper: the counts then compare code paths, not inlining decisions.
#[inline(always)]
fn poll_to_ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}

#[inline(always)]
fn repoll<F: Future>(future: F, rounds: u64) {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..rounds {
        let _ = black_box(future.as_mut().poll(&mut cx));
    }
}

#[inline(never)]
fn shape_lifecycle_plain(rounds: u64) {
    for i in 0..rounds {
        black_box(poll_to_ready(plain(black_box(i))));
    }
}

#[inline(never)]
fn shape_lifecycle_tokio_scope(rounds: u64) {
    for i in 0..rounds {
        black_box(poll_to_ready(TASK_LOCAL.scope(1, plain(black_box(i)))));
    }
}

#[inline(never)]
fn shape_lifecycle(rounds: u64) {
    for i in 0..rounds {
        black_box(poll_to_ready(annotated(black_box(i))));
    }
}

/// With one `Arc` storage value captured by every future (the value's reference count goes up
/// at creation and down at drop). The `run` around the loop is two per 100 010 lifecycles.
#[inline(never)]
fn shape_lifecycle_arc_captured(rounds: u64) {
    SHARED.run(Arc::new(String::from("request")), || {
        for i in 0..rounds {
            black_box(poll_to_ready(annotated(black_box(i))));
        }
    })
}

/// A request's shape: a fresh one-storage `run` each time, one future made and run inside it.
#[inline(never)]
fn shape_lifecycle_in_fresh_run(rounds: u64) {
    for i in 0..rounds {
        STORE.run(black_box(i), || {
            black_box(poll_to_ready(annotated(black_box(i))))
        });
    }
}

#[inline(never)]
fn shape_lifecycle_tokio_scope_arc(rounds: u64) {
    let value = Arc::new(String::from("request"));
    for i in 0..rounds {
        black_box(poll_to_ready(
            SCOPED_ARC.scope(value.clone(), plain(black_box(i))),
        ));
    }
}

/// Its own loop rather than a call of `shape_lifecycle`, so that its inclusive count is this
/// shape's alone.
#[inline(never)]
fn shape_lifecycle_counting_hook(rounds: u64) {
    let hook = counting_hook().enable();
    for i in 0..rounds {
        black_box(poll_to_ready(annotated(black_box(i))));
    }
    hook.disable();
}

/// `AsyncLocalStorage::scope`, the async `run`: the peer of tokio's `scope` with a `u64`.
#[inline(never)]
fn shape_lifecycle_storage_scope(rounds: u64) {
    for i in 0..rounds {
        black_box(poll_to_ready(STORE.scope(1, plain(black_box(i)))));
    }
}

#[inline(never)]
fn shape_repoll_storage_scope(rounds: u64) {
    repoll(STORE.scope(7, plain_forever()), rounds)
}

#[inline(never)]
fn shape_repoll_tokio_scope(rounds: u64) {
    repoll(TASK_LOCAL.scope(7, plain_forever()), rounds)
}

#[inline(never)]
fn shape_repoll(rounds: u64) {
    repoll(annotated_forever(), rounds)
}

#[inline(never)]
fn shape_repoll_counting_hook(rounds: u64) {
    let hook = counting_hook().enable();
    repoll(annotated_forever(), rounds);
    hook.disable();
}

/// Run with a `tracing_subscriber::registry()` as the thread's default subscriber (see `main`).
#[inline(never)]
fn shape_lifecycle_tracing_registry(rounds: u64) {
    for i in 0..rounds {
        black_box(poll_to_ready(instrumented(black_box(i))));
    }
}

/// Run with a `tracing_subscriber::registry()` as the thread's default subscriber (see `main`),
/// as `benches/macros.rs` polls it: the span's enter and exit reach the registry.
#[inline(never)]
fn shape_repoll_tracing_registry(rounds: u64) {
    repoll(instrumented_forever(), rounds)
}

#[inline(never)]
fn shape_with_store_in_run(rounds: u64) {
    STORE.run(1, || {
        for _ in 0..rounds {
            STORE.with_store(|v| black_box(v.map_or(0, |v| *v)));
        }
    })
}

/// A read from a function of its own, as a logger or a handler reads the store: each call
/// finds the thread-local anew, which the loops above may hoist out of the loop.
#[inline(never)]
fn read_store() -> u64 {
    STORE.with_store(|v| v.map_or(0, |v| *v))
}

#[inline(never)]
fn shape_with_store_called_in_run(rounds: u64) {
    STORE.run(1, || {
        for _ in 0..rounds {
            black_box(read_store());
        }
    })
}

/// `read_store` where the thread's cell owns the frame (after an `enter_with` in a resource's
/// scope, as a request handler does), which is lent for each read.
#[inline(never)]
fn shape_with_store_called_after_enter_with(rounds: u64) {
    AsyncResource::new("Handler").run_in_async_scope(|| {
        STORE.enter_with(1);
        for _ in 0..rounds {
            black_box(read_store());
        }
    })
}

/// `read_store`'s peer.
#[inline(never)]
fn read_task_local() -> u64 {
    TASK_LOCAL.with(|v| *v)
}

#[inline(never)]
fn shape_tokio_with_called_in_sync_scope(rounds: u64) {
    TASK_LOCAL.sync_scope(1, || {
        for _ in 0..rounds {
            black_box(read_task_local());
        }
    })
}

#[inline(never)]
fn shape_get_store_in_run(rounds: u64) {
    STORE.run(1, || {
        for _ in 0..rounds {
            black_box(STORE.get_store());
        }
    })
}

/// A guard's scope: `enter_scope` and the guard's drop (the store's `Arc`, a heap frame, and
/// the thread's list of live guards).
#[inline(never)]
fn shape_enter_scope(rounds: u64) {
    for i in 0..rounds {
        drop(black_box(STORE.enter_scope(black_box(i))));
    }
}

/// `Snapshot::run` of a snapshot taken once (Node's `AsyncLocalStorage.snapshot()` pattern), from
/// inside a `run` of another store.
#[inline(never)]
fn shape_snapshot_run(rounds: u64) {
    let snapshot = STORE.run(1, Snapshot::capture);
    STORE.run(2, || {
        for _ in 0..rounds {
            black_box(snapshot.run(|| black_box(1)));
        }
    })
}

/// A `bind!` closure's call: a scope of a resource made once under a request's store.
#[inline(never)]
fn shape_bound_call(rounds: u64) {
    let resource = STORE.run(7, || AsyncResource::new("Callback"));
    for i in 0..rounds {
        black_box(resource.run_in_async_scope(|| black_box(i) + 1));
    }
}

/// `enter_with` inside a resource's scope, as a request handler does once.
#[inline(never)]
fn shape_enter_with(rounds: u64) {
    for i in 0..rounds {
        AsyncResource::new("Handler").run_in_async_scope(|| STORE.enter_with(black_box(i)));
    }
}

#[inline(never)]
fn shape_tokio_with_in_sync_scope(rounds: u64) {
    TASK_LOCAL.sync_scope(1, || {
        for _ in 0..rounds {
            TASK_LOCAL.with(|v| black_box(*v));
        }
    })
}

#[inline(never)]
fn shape_run(rounds: u64) {
    for i in 0..rounds {
        STORE.run(black_box(i), || black_box(()));
    }
}

#[inline(never)]
fn shape_tokio_sync_scope(rounds: u64) {
    for i in 0..rounds {
        TASK_LOCAL.sync_scope(black_box(i), || black_box(()));
    }
}

/// A call that may panic, as nearly every real closure body makes: then the scope's guard has a
/// landing pad to run, which an empty closure does not.
#[inline(never)]
fn may_panic() {
    if black_box(false) {
        panic!("never");
    }
}

#[inline(never)]
fn shape_run_calling(rounds: u64) {
    for i in 0..rounds {
        STORE.run(black_box(i), may_panic);
    }
}

static OTHERS: [AsyncLocalStorage<u64>; 3] = [const { AsyncLocalStorage::new() }; 3];

/// `rounds` runs of `storage` inside runs of the three [`OTHERS`]: its frame copies their entries
/// around its own.
#[inline(always)]
fn run_4_calling(storage: &AsyncLocalStorage<u64>, rounds: u64, f: impl Fn() + Copy) {
    let [a, b, c] = &OTHERS;
    a.run(1, || {
        b.run(2, || {
            c.run(3, || {
                for i in 0..rounds {
                    storage.run(black_box(i), f);
                }
            })
        })
    })
}

/// `run` with three other storages active, its entry sorting first (`STORE` is used first).
#[inline(never)]
fn shape_run_4_calling(rounds: u64) {
    run_4_calling(&STORE, rounds, may_panic)
}

/// `run` with three other storages active and an empty closure: the peer of the criterion row
/// `run with N storages active/async-hooks run/4`, which the target compares with `sync_scope`.
#[inline(never)]
fn shape_run_4(rounds: u64) {
    run_4_calling(&STORE, rounds, || {
        black_box(());
    })
}

static LAST: AsyncLocalStorage<u64> = AsyncLocalStorage::new();

/// The same with a storage whose key sorts after the three others (used first after them): its
/// entry goes at the end of the frame instead of the front. A closure of its own, so that the
/// other shapes' `run` (one copy for `may_panic`, called with `STORE` only) stays as it was.
#[inline(never)]
#[allow(clippy::redundant_closure)] // A closure type of its own, see above.
fn shape_run_4_calling_last(rounds: u64) {
    run_4_calling(&LAST, rounds, || may_panic())
}

static FIFTEEN: [AsyncLocalStorage<u64>; 15] = [const { AsyncLocalStorage::new() }; 15];

/// `run` with fifteen other storages active: too many for a stack frame, its frame goes to the
/// heap.
#[inline(never)]
fn shape_run_16_calling(rounds: u64) {
    fn nest(others: &[AsyncLocalStorage<u64>], rounds: u64) {
        match others {
            [first, rest @ ..] => first.run(1, || nest(rest, rounds)),
            [] => {
                for i in 0..rounds {
                    STORE.run(black_box(i), may_panic);
                }
            }
        }
    }
    nest(&FIFTEEN, rounds)
}

#[inline(never)]
fn shape_tokio_sync_scope_calling(rounds: u64) {
    for i in 0..rounds {
        TASK_LOCAL.sync_scope(black_box(i), may_panic);
    }
}

/// Runs each shape after its warm-up (ids, type registration, the thread's hook table, the
/// subscriber's span slab).
fn run_shapes(shapes: &[fn(u64)]) {
    for shape in shapes {
        shape(10);
        shape(ROUNDS);
    }
}

fn main() {
    // Criterion's flags (`--bench`, filters) are accepted and ignored: every shape always runs,
    // in well under a second.
    run_shapes(&[
        shape_lifecycle_plain,
        shape_lifecycle_tokio_scope,
        shape_lifecycle,
        shape_lifecycle_tokio_scope_arc,
        shape_lifecycle_arc_captured,
        shape_lifecycle_in_fresh_run,
        shape_lifecycle_counting_hook,
        shape_lifecycle_storage_scope,
        shape_repoll_storage_scope,
        shape_repoll_tokio_scope,
        shape_repoll,
        shape_repoll_counting_hook,
        shape_with_store_in_run,
        shape_get_store_in_run,
        shape_tokio_with_in_sync_scope,
        shape_with_store_called_in_run,
        shape_with_store_called_after_enter_with,
        shape_tokio_with_called_in_sync_scope,
        shape_run,
        shape_tokio_sync_scope,
        shape_run_calling,
        shape_run_4,
        shape_run_4_calling,
        shape_run_4_calling_last,
        shape_run_16_calling,
        shape_tokio_sync_scope_calling,
        shape_enter_scope,
        shape_snapshot_run,
        shape_enter_with,
        shape_bound_call,
    ]);
    // tracing's peers, under a registry subscriber made once: the shapes then count only what
    // each span costs, not the subscriber's construction.
    tracing::subscriber::with_default(tracing_subscriber::registry(), || {
        run_shapes(&[
            shape_lifecycle_tracing_registry,
            shape_repoll_tracing_registry,
        ])
    });
}
