//! Panics inside polled instrumented futures, `run`/`exit`/`Snapshot::run`/`run_in_async_scope`,
//! `bind!` closures and a store's `Drop`: the context is restored, `after` fires, `destroy` fires
//! exactly once, and later operations on the same thread behave.

mod support;
use support::events;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_hooks::{
    AsyncId, AsyncLocalStorage, AsyncResource, BindContext, Snapshot, async_resource, bind,
    execution_async_id, trigger_async_id,
};
use events::{Ev, destroys_of, events_of};
use support::futures::{PendingN, poll_once};
use support::serial;

static STORE: AsyncLocalStorage<u32> = AsyncLocalStorage::new();
static OTHER: AsyncLocalStorage<u32> = AsyncLocalStorage::new();

fn panics(f: impl FnOnce()) -> bool {
    catch_unwind(AssertUnwindSafe(f)).is_err()
}

/// The thread is back at the top level with `store` current, and still works: a new resource
/// gets the root as trigger and sees `store`, nested runs restore.
fn assert_top_level_sane(store: Option<u32>) {
    assert_eq!(execution_async_id(), AsyncId::ROOT);
    assert_eq!(trigger_async_id(), AsyncId::NONE);
    assert_eq!(STORE.get_store().as_deref().copied(), store);
    let r = AsyncResource::new("After");
    assert_eq!(r.trigger_async_id(), AsyncId::ROOT);
    r.run_in_async_scope(|| {
        assert_eq!(execution_async_id(), r.async_id());
        assert_eq!(STORE.get_store().as_deref().copied(), store);
    });
    STORE.run(77, || assert_eq!(STORE.get_store().as_deref(), Some(&77)));
    assert_eq!(STORE.get_store().as_deref().copied(), store);
    assert_eq!(execution_async_id(), AsyncId::ROOT);
}

#[async_resource]
async fn panics_on_second_poll(at: u32) -> u32 {
    STORE.enter_with(at);
    PendingN(1).await;
    assert_eq!(STORE.get_store().as_deref(), Some(&at));
    panic!("boom in poll {at}");
}

#[test]
fn panic_in_a_polled_async_resource_restores_context_and_fires_after_and_one_destroy() {
    let _serial = serial();
    let _hook = events::record();
    STORE.run(1, || {
        let mut fut = Box::pin(panics_on_second_poll(5));
        let id = events::last_init();
        assert!(poll_once(fut.as_mut()).is_pending());
        assert_eq!(
            STORE.get_store().as_deref(),
            Some(&1),
            "enter_with stays inside"
        );
        assert!(panics(|| {
            let _ = poll_once(fut.as_mut());
        }));
        assert_eq!(execution_async_id(), AsyncId::ROOT);
        assert_eq!(STORE.get_store().as_deref(), Some(&1));
        // `after` fired for the panicking poll, no `promise_resolve`, no `destroy` yet.
        assert_eq!(
            events_of(id),
            [Ev::Init, Ev::Before, Ev::After, Ev::Before, Ev::After]
        );
        drop(fut);
        assert_eq!(destroys_of(id), 1);
        assert_eq!(events_of(id).last(), Some(&Ev::Destroy));
    });
    assert_top_level_sane(None);
}

#[test]
fn panic_in_a_poll_on_the_first_poll_and_nested_in_another_resource() {
    let _serial = serial();
    let _hook = events::record();
    let outer = AsyncResource::new("Outer");
    let mut inner_id = AsyncId::NONE;
    let caught = panics(|| {
        outer.run_in_async_scope(|| {
            STORE.run(3, || {
                let fut = async {
                    STORE.enter_with(4);
                    panic!("first poll");
                }
                .bind_context();
                inner_id = fut.async_id();
                assert_eq!(fut.trigger_async_id(), outer.async_id());
                let mut fut = pin!(fut);
                let _ = poll_once(fut.as_mut());
            })
        })
    });
    assert!(caught);
    // Both scopes unwound: `after` for each, the future (dropped by the unwinding) destroyed once.
    assert_eq!(
        events_of(inner_id),
        [Ev::Init, Ev::Before, Ev::After, Ev::Destroy]
    );
    assert_eq!(
        events_of(outer.async_id()),
        [Ev::Init, Ev::Before, Ev::After]
    );
    let outer_id = outer.async_id();
    drop(outer);
    assert_eq!(destroys_of(outer_id), 1);
    assert_top_level_sane(None);
}

#[test]
fn panic_inside_run_exit_snapshot_run_and_run_in_async_scope() {
    let _serial = serial();
    let _hook = events::record();
    STORE.run(1, || {
        // run: the store comes back; an enter_with of another storage inside survives (spec).
        assert!(panics(|| STORE.run(2, || {
            OTHER.enter_with(9);
            panic!("in run")
        })));
        assert_eq!(STORE.get_store().as_deref(), Some(&1));
        assert_eq!(OTHER.get_store().as_deref(), Some(&9));
        OTHER.disable();

        // exit
        assert!(panics(|| STORE.exit(|| {
            assert_eq!(STORE.get_store(), None);
            panic!("in exit")
        })));
        assert_eq!(STORE.get_store().as_deref(), Some(&1));

        // Snapshot::run restores the whole frame.
        let snapshot = STORE.run(5, Snapshot::capture);
        assert!(panics(|| snapshot.run(|| {
            STORE.enter_with(6);
            OTHER.enter_with(6);
            panic!("in snapshot")
        })));
        assert_eq!(STORE.get_store().as_deref(), Some(&1));
        assert_eq!(OTHER.get_store(), None);

        // run_in_async_scope: ids back, `after` fired, the resource still usable.
        let r = STORE.run(8, || AsyncResource::new("Scoped"));
        assert!(panics(|| r.run_in_async_scope(|| {
            assert_eq!(execution_async_id(), r.async_id());
            STORE.enter_with(10);
            panic!("in scope")
        })));
        assert_eq!(execution_async_id(), AsyncId::ROOT);
        assert_eq!(STORE.get_store().as_deref(), Some(&1));
        assert_eq!(events_of(r.async_id()), [Ev::Init, Ev::Before, Ev::After]);
        assert_eq!(r.run_in_async_scope(|| *STORE.get_store().unwrap()), 8);
        let id = r.async_id();
        drop(r);
        assert_eq!(
            events_of(id),
            [
                Ev::Init,
                Ev::Before,
                Ev::After,
                Ev::Before,
                Ev::After,
                Ev::Destroy
            ]
        );
    });
    assert_top_level_sane(None);
}

#[test]
fn panic_inside_a_bind_closure() {
    let _serial = serial();
    let _hook = events::record();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let bound = STORE.run(21, || {
        bind!(move |fail: bool| {
            counted.fetch_add(1, Ordering::Relaxed);
            assert_eq!(STORE.get_store().as_deref(), Some(&21));
            STORE.enter_with(22);
            if fail {
                panic!("in bound closure");
            }
            execution_async_id()
        })
    });
    assert!(panics(|| {
        bound(true);
    }));
    assert_eq!(execution_async_id(), AsyncId::ROOT);
    assert_eq!(STORE.get_store(), None);
    // The next call is fine and sees the bound context again, not the panicked call's enter_with.
    let id = bound(false);
    assert_ne!(id, AsyncId::ROOT);
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    drop(bound);
    assert_eq!(
        events_of(id),
        [
            Ev::Init,
            Ev::Before,
            Ev::After,
            Ev::Before,
            Ev::After,
            Ev::Destroy
        ]
    );
    assert_top_level_sane(None);
}

/// A store whose `Drop` panics (once).
struct PanicsOnDrop {
    armed: bool,
    dropped: Arc<AtomicUsize>,
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if self.armed && !std::thread::panicking() {
            panic!("store dropped");
        }
    }
}

static PANICKY: AsyncLocalStorage<PanicsOnDrop> = AsyncLocalStorage::new();

#[test]
fn panic_in_a_stores_drop_at_the_end_of_run_leaves_the_context_restored() {
    let _serial = serial();
    let dropped = Arc::new(AtomicUsize::new(0));
    STORE.run(1, || {
        let store = PanicsOnDrop {
            armed: true,
            dropped: dropped.clone(),
        };
        assert!(panics(|| PANICKY.run(store, || {
            assert!(PANICKY.get_store().is_some());
        })));
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        assert!(PANICKY.get_store().is_none());
        assert_eq!(STORE.get_store().as_deref(), Some(&1));
        assert_eq!(execution_async_id(), AsyncId::ROOT);

        // enter_with replaced by a later enter_with: the old store drops (and panics) after the
        // new one is in place.
        PANICKY.enter_with(PanicsOnDrop {
            armed: true,
            dropped: dropped.clone(),
        });
        assert!(panics(|| PANICKY.enter_with(PanicsOnDrop {
            armed: false,
            dropped: dropped.clone(),
        })));
        assert_eq!(dropped.load(Ordering::Relaxed), 2);
        assert!(PANICKY.get_store().is_some_and(|s| !s.armed));
        PANICKY.disable();
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
    });
    assert_top_level_sane(None);
}

#[test]
fn panic_in_a_stores_drop_when_a_captured_resource_is_destroyed() {
    let _serial = serial();
    let _hook = events::record();
    let dropped = Arc::new(AtomicUsize::new(0));
    let r = PANICKY.run(
        PanicsOnDrop {
            armed: true,
            dropped: dropped.clone(),
        },
        || AsyncResource::new("Holder"),
    );
    let id = r.async_id();
    assert_eq!(
        dropped.load(Ordering::Relaxed),
        0,
        "the resource holds the store"
    );
    // The last holder is the resource's frame: its drop panics inside the resource's drop.
    assert!(panics(|| drop(r)));
    assert_eq!(dropped.load(Ordering::Relaxed), 1);
    assert_eq!(destroys_of(id), 1);
    assert_top_level_sane(None);
}
