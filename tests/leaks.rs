//! Leak counting over many lifecycles: 100 000 per test by default, 1 000 000 with
//! `ASYNC_HOOKS_LONG=1`. Every lifecycle makes resources of each kind (an `#[async_resource]`
//! future polled to completion, a bound future cancelled mid-flight, an `AsyncResource` with a
//! scope, a `bind!` closure, storage `run`/`enter_with`/`exit`, a snapshot) with and without a
//! hook and with stores that count their live instances. Afterwards: no live store, every
//! `init` matched by exactly one `destroy`. Allocation counts per lifecycle are in
//! `tests/leaks_allocations.rs` (a separate binary: it installs a counting allocator).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use async_hooks::{
    AsyncLocalStorage, AsyncResource, BindContext, Hooks, Snapshot, async_resource, bind,
    create_hook,
};
use support::futures::{PendingN, poll_once};
use support::serial;

fn lifecycles() -> u64 {
    if std::env::var_os("ASYNC_HOOKS_LONG").is_some() {
        1_000_000
    } else {
        100_000
    }
}

static LIVE: AtomicI64 = AtomicI64::new(0);

/// A store that counts live instances in `LIVE`.
struct Counted(#[allow(dead_code)] u64);

impl Counted {
    fn new(v: u64) -> Counted {
        LIVE.fetch_add(1, Ordering::Relaxed);
        Counted(v)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

static REQUEST: AsyncLocalStorage<Counted> = AsyncLocalStorage::new();
static USER: AsyncLocalStorage<Counted> = AsyncLocalStorage::new();

#[async_resource]
async fn handler(i: u64) -> u64 {
    USER.enter_with(Counted::new(i));
    PendingN(1).await;
    i
}

/// One lifecycle of every kind; returns the number of resources it made.
fn lifecycle(i: u64, with_stores: bool) -> u64 {
    let body = || {
        // An instrumented future polled to completion.
        let mut fut = Box::pin(handler(i));
        assert!(poll_once(fut.as_mut()).is_pending());
        assert_eq!(poll_once(fut.as_mut()), std::task::Poll::Ready(i));
        drop(fut);
        // A bound future cancelled mid-flight.
        let mut cancelled = Box::pin(PendingN(2).bind_context());
        assert!(poll_once(cancelled.as_mut()).is_pending());
        drop(cancelled);
        // An embedder resource and a bound closure.
        let resource = AsyncResource::new("LeakJob");
        resource.run_in_async_scope(|| USER.enter_with(Counted::new(i)));
        let bound = bind!(move || i + 1);
        assert_eq!(bound(), i + 1);
        drop(bound);
        drop(resource);
        // A snapshot run and an exit.
        let snapshot = Snapshot::capture();
        USER.exit(|| snapshot.run(|| USER.enter_with(Counted::new(i))));
        4
    };
    if with_stores {
        REQUEST.run(Counted::new(i), || {
            USER.run(Counted::new(i), || {
                REQUEST.enter_with(Counted::new(i));
                body()
            })
        })
    } else {
        body()
    }
}

fn run_lifecycles(with_stores: bool) -> u64 {
    let n = lifecycles();
    let made: u64 = (0..n).map(|i| lifecycle(i, with_stores)).sum();
    assert_eq!(
        LIVE.load(Ordering::Relaxed),
        0,
        "live stores after {n} lifecycles"
    );
    assert!(REQUEST.get_store().is_none() && USER.get_store().is_none());
    made
}

#[test]
fn lifecycles_without_hooks_leave_nothing_alive() {
    let _serial = serial();
    run_lifecycles(false);
    run_lifecycles(true);
    // A store entered at the top level is released by `disable()`.
    USER.enter_with(Counted::new(0));
    assert_eq!(LIVE.load(Ordering::Relaxed), 1);
    USER.disable();
    assert_eq!(LIVE.load(Ordering::Relaxed), 0);
}

#[test]
fn lifecycles_with_a_hook_balance_init_and_destroy() {
    let _serial = serial();
    let inits = Arc::new(AtomicU64::new(0));
    let destroys = Arc::new(AtomicU64::new(0));
    let (i, d) = (inits.clone(), destroys.clone());
    let hook = create_hook(
        Hooks::new()
            .init(move |_, _, _, _| {
                i.fetch_add(1, Ordering::Relaxed);
            })
            .destroy(move |_| {
                d.fetch_add(1, Ordering::Relaxed);
            }),
    )
    .enable();
    let made = run_lifecycles(false) + run_lifecycles(true);
    hook.disable();
    let (inits, destroys) = (
        inits.load(Ordering::Relaxed),
        destroys.load(Ordering::Relaxed),
    );
    assert_eq!(inits, made);
    assert_eq!(
        destroys,
        inits,
        "live resources after the run: {}",
        inits - destroys
    );
    eprintln!("leaks: {made} resources, {inits} init, {destroys} destroy, 0 live stores");
}

#[test]
fn stores_left_at_a_threads_top_level_are_released_when_it_exits() {
    let _serial = serial();
    let live_before = LIVE.load(Ordering::Relaxed);
    // Nothing restores a top-level `enter_with`. The thread's frame cell has no destructor of its
    // own; the thread-exit release that `enter_with` registers must drop the stores.
    std::thread::spawn(move || {
        USER.enter_with(Counted::new(1));
        REQUEST.enter_with(Counted::new(2));
        assert_eq!(USER.get_store().map(|c| c.0), Some(1));
        assert_eq!(REQUEST.get_store().map(|c| c.0), Some(2));
        assert_eq!(LIVE.load(Ordering::Relaxed), live_before + 2);
    })
    .join()
    .unwrap();
    assert_eq!(LIVE.load(Ordering::Relaxed), live_before);
    // And the same thread-local state keeps working for a resource dropped while the thread's
    // locals are torn down (a future held by another thread-local).
    struct Holder(
        #[allow(dead_code)] Option<std::pin::Pin<Box<dyn std::future::Future<Output = u64>>>>,
    );
    thread_local! {
        static HELD: std::cell::RefCell<Holder> = const { std::cell::RefCell::new(Holder(None)) };
    }
    std::thread::spawn(|| {
        let fut = REQUEST.run(Counted::new(3), || Box::pin(handler(3)));
        HELD.with(|held| held.borrow_mut().0 = Some(fut));
    })
    .join()
    .unwrap();
    assert_eq!(LIVE.load(Ordering::Relaxed), live_before);
}
