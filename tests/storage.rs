//! AsyncLocalStorage, Snapshot and frames: exact values.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use async_hooks::{AsyncLocalStorage, AsyncResource, BindContext, Snapshot};

/// Counts live instances, to prove stores are freed.
struct Tracked(Arc<AtomicUsize>, u32);

impl Tracked {
    fn new(live: &Arc<AtomicUsize>, value: u32) -> Tracked {
        live.fetch_add(1, Ordering::SeqCst);
        Tracked(live.clone(), value)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn request_logger_interleaves_and_each_request_logs_its_own_id() {
    static REQUEST_ID: AsyncLocalStorage<u32> = AsyncLocalStorage::new();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log_line = |log: &Arc<std::sync::Mutex<Vec<String>>>, msg: &str| {
        let id = REQUEST_ID
            .get_store()
            .map_or("-".to_string(), |id| id.to_string());
        log.lock().unwrap().push(format!("{id}: {msg}"));
    };
    let request = |n: u32| {
        let log = log.clone();
        REQUEST_ID.run(n, || {
            async move {
                log_line(&log, "start");
                // Yield once so the two requests interleave.
                let mut yielded = false;
                std::future::poll_fn(|cx| {
                    if yielded {
                        Poll::Ready(())
                    } else {
                        yielded = true;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                })
                .await;
                log_line(&log, "finish");
            }
            .bind_context()
        })
    };
    futures::executor::block_on(futures::future::join(request(0), request(1)));
    assert_eq!(
        *log.lock().unwrap(),
        ["0: start", "1: start", "0: finish", "1: finish"]
    );
}

#[test]
fn nested_run_shadows_and_exit_hides() {
    let store = AsyncLocalStorage::new().with_name("nested");
    assert_eq!(store.name(), Some("nested"));
    assert_eq!(store.get_store(), None);
    store.run("outer", || {
        assert_eq!(store.get_store().as_deref(), Some(&"outer"));
        store.run("inner", || {
            assert_eq!(store.get_store().as_deref(), Some(&"inner"))
        });
        assert_eq!(store.get_store().as_deref(), Some(&"outer"));
        store.exit(|| {
            assert_eq!(store.get_store(), None);
            store.run("again", || {
                assert_eq!(store.get_store().as_deref(), Some(&"again"))
            });
            assert_eq!(store.get_store(), None);
        });
        assert_eq!(store.get_store().as_deref(), Some(&"outer"));
    });
    assert_eq!(store.get_store(), None);
}

#[test]
fn exit_gives_none_not_the_default() {
    let store = AsyncLocalStorage::new().with_default(0u32);
    assert_eq!(store.get_store().as_deref(), Some(&0));
    store.with_store(|v| assert_eq!(v, Some(&0)));
    store.run(5, || {
        assert_eq!(store.get_store().as_deref(), Some(&5));
        store.exit(|| {
            assert_eq!(store.get_store(), None);
            // Created inside exit: still None, not the default.
            let job = AsyncResource::new("Job");
            assert_eq!(job.run_in_async_scope(|| store.get_store()), None);
        });
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_are_independent_across_timers() {
    static USER: AsyncLocalStorage<&'static str> = AsyncLocalStorage::new();
    static TRACE: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
    let task = |user: &'static str, trace: u64, delay: u64| {
        USER.run(user, || {
            TRACE.run(trace, || {
                tokio::spawn(
                    async move {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        let first = (*USER.get_store().unwrap(), *TRACE.get_store().unwrap());
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        let second = (*USER.get_store().unwrap(), *TRACE.get_store().unwrap());
                        (first, second)
                    }
                    .bind_context(),
                )
            })
        })
    };
    let a = task("ada", 1, 20);
    let b = task("bob", 2, 5);
    assert_eq!(USER.get_store(), None);
    assert_eq!(TRACE.get_store(), None);
    assert_eq!(a.await.unwrap(), (("ada", 1), ("ada", 1)));
    assert_eq!(b.await.unwrap(), (("bob", 2), ("bob", 2)));
}

#[test]
fn run_restores_only_its_own_storage() {
    let a = AsyncLocalStorage::new();
    let b = AsyncLocalStorage::new();
    a.run(1, || {
        b.enter_with("entered inside a's run");
        assert_eq!(a.get_store().as_deref(), Some(&1));
    });
    assert_eq!(a.get_store(), None);
    assert_eq!(b.get_store().as_deref(), Some(&"entered inside a's run"));
    // The same for exit and a guard.
    a.exit(|| b.enter_with("inside exit"));
    assert_eq!(b.get_store().as_deref(), Some(&"inside exit"));
    {
        let _guard = a.enter_scope(2);
        b.enter_with("inside guard");
    }
    assert_eq!(a.get_store(), None);
    assert_eq!(b.get_store().as_deref(), Some(&"inside guard"));
    // enter_with of the same storage inside a run ends with the run.
    a.run(3, || a.enter_with(4));
    assert_eq!(a.get_store(), None);
    b.disable();
}

#[test]
fn enter_with_inside_a_resource_scope_stays_inside() {
    let store = AsyncLocalStorage::new();
    let job = AsyncResource::new("Job");
    job.run_in_async_scope(|| {
        store.enter_with(1);
        assert_eq!(store.get_store().as_deref(), Some(&1));
    });
    assert_eq!(store.get_store(), None);
    // The resource's own captured context is unchanged for the next call.
    assert_eq!(job.run_in_async_scope(|| store.get_store()), None);
    // A sibling thread never sees it either.
    store.run(2, || {
        job.run_in_async_scope(|| store.enter_with(3));
        assert_eq!(store.get_store().as_deref(), Some(&2));
    });
}

#[test]
fn enter_with_persists_across_polls_of_the_same_future_only() {
    let store = AsyncLocalStorage::new();
    let mut step = 0;
    let fut = std::future::poll_fn(|cx| {
        step += 1;
        match step {
            1 => {
                store.enter_with("set in poll 1");
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            _ => Poll::Ready(store.get_store()),
        }
    })
    .bind_context();
    let mut fut = Box::pin(fut);
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert_eq!(
        store.get_store(),
        None,
        "enter_with must not leak out of the poll"
    );
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(seen) => assert_eq!(seen.as_deref(), Some(&"set in poll 1")),
        Poll::Pending => panic!("expected Ready"),
    }
}

#[test]
fn disable_exits_every_context_until_the_next_run() {
    let live = Arc::new(AtomicUsize::new(0));
    let store = AsyncLocalStorage::new();
    // A continuation captured before disable.
    let continuation = store.run(Tracked::new(&live, 1), || {
        AsyncResource::new("Continuation")
    });
    store.enter_with(Tracked::new(&live, 2));
    assert_eq!(store.with_store(|t| t.map(|t| t.1)), Some(2));
    assert_eq!(live.load(Ordering::SeqCst), 2);

    store.disable();
    assert!(store.get_store().is_none());
    assert_eq!(store.with_store(|t| t.map(|t| t.1)), None);
    assert!(
        continuation
            .run_in_async_scope(|| store.get_store())
            .is_none()
    );
    assert_eq!(
        continuation.run_in_async_scope(|| store.with_store(|t| t.map(|t| t.1))),
        None
    );
    // This thread's frame let go of its store at once; the continuation still holds its own.
    assert_eq!(live.load(Ordering::SeqCst), 1);
    drop(continuation);
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "stores are freed once nothing holds them"
    );

    // A later run works.
    store.run(Tracked::new(&live, 3), || {
        assert_eq!(store.with_store(|t| t.map(|t| t.1)), Some(3))
    });
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

/// Node v20 revives the old store for such a resource once the storage is used again; here a
/// disabled store is gone for good (docs/semantics.md, "Differences from Node").
#[test]
fn resources_created_before_disable_never_see_the_old_store_again() {
    let store = AsyncLocalStorage::new();
    let early = store.run(1u32, || AsyncResource::new("Early"));
    store.disable();
    assert_eq!(early.run_in_async_scope(|| store.get_store()), None);
    store.run(2, || assert_eq!(store.get_store().as_deref(), Some(&2)));
    store.enter_with(3);
    assert_eq!(early.run_in_async_scope(|| store.get_store()), None);
    let late = store.run(4, || AsyncResource::new("Late"));
    assert_eq!(
        late.run_in_async_scope(|| store.get_store()).as_deref(),
        Some(&4)
    );
    assert_eq!(early.run_in_async_scope(|| store.get_store()), None);
}

#[test]
fn stores_are_freed_when_the_last_frame_holding_them_goes() {
    let live = Arc::new(AtomicUsize::new(0));
    let store = AsyncLocalStorage::new();
    let (job, snapshot) = store.run(Tracked::new(&live, 1), || {
        (AsyncResource::new("Job"), Snapshot::capture())
    });
    assert_eq!(
        live.load(Ordering::SeqCst),
        1,
        "the resource and the snapshot hold the store"
    );
    drop(job);
    assert_eq!(
        live.load(Ordering::SeqCst),
        1,
        "the snapshot still holds it"
    );
    assert_eq!(
        snapshot.run(|| store.with_store(|t| t.map(|t| t.1))),
        Some(1)
    );
    drop(snapshot);
    assert_eq!(live.load(Ordering::SeqCst), 0);

    let fut = store.run(Tracked::new(&live, 2), || async {}.bind_context());
    assert_eq!(live.load(Ordering::SeqCst), 1);
    futures::executor::block_on(fut);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

#[test]
fn each_run_drops_its_store_when_it_ends_and_kept_stores_stay_intact() {
    // `run` reuses the allocation of the thread's previous store of the storage when nothing
    // else holds that store: every store must still be dropped when its `run` ends, and one that
    // is still held must never be overwritten by a later `run`.
    let live = Arc::new(AtomicUsize::new(0));
    let store = AsyncLocalStorage::new();
    let mut kept = Vec::new();
    for i in 0..20 {
        let seen = store.run(Tracked::new(&live, i), || {
            // A nested `run` of the same storage, and one of another storage with the same
            // layout, in between.
            store.run(Tracked::new(&live, 100 + i), || {
                assert_eq!(store.with_store(|t| t.map(|t| t.1)), Some(100 + i))
            });
            let other = AsyncLocalStorage::new();
            other.run(Tracked::new(&live, 200 + i), || {
                assert_eq!(other.with_store(|t| t.map(|t| t.1)), Some(200 + i))
            });
            if i % 3 == 0 {
                kept.push(store.get_store().expect("in run"));
            }
            store.with_store(|t| t.map(|t| t.1))
        });
        assert_eq!(seen, Some(i));
        assert_eq!(live.load(Ordering::SeqCst), kept.len(), "after run {i}");
    }
    let values: Vec<u32> = kept.iter().map(|t| t.1).collect();
    assert_eq!(values, [0, 3, 6, 9, 12, 15, 18]);
    drop(kept);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

#[test]
fn snapshot_returns_the_captured_store_inside_another_run() {
    let store = AsyncLocalStorage::new();
    let other = AsyncLocalStorage::new();
    let snapshot = store.run(1, || other.run('x', AsyncLocalStorage::<u8>::snapshot));
    store.run(2, || {
        let inside = snapshot.run(|| (store.get_store(), other.get_store()));
        assert_eq!(inside.0.as_deref(), Some(&1));
        assert_eq!(inside.1.as_deref(), Some(&'x'));
        assert_eq!(store.get_store().as_deref(), Some(&2));
        assert_eq!(other.get_store(), None);
    });
}

#[test]
fn a_resource_sees_the_store_of_its_creation() {
    let store = AsyncLocalStorage::new();
    let job = store.run("S1", || AsyncResource::new("Job"));
    store.run("S2", || {
        assert_eq!(
            job.run_in_async_scope(|| store.get_store()).as_deref(),
            Some(&"S1")
        );
        assert_eq!(store.get_store().as_deref(), Some(&"S2"));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_keeps_the_store_across_awaits_and_thread_hops() {
    static REQUEST: AsyncLocalStorage<u32> = AsyncLocalStorage::new();
    let handles: Vec<_> = (0..8u32)
        .map(|n| {
            tokio::spawn(REQUEST.scope(n, async move {
                let mut seen = Vec::new();
                for _ in 0..20 {
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    seen.push((*REQUEST.get_store().unwrap(), std::thread::current().id()));
                }
                seen
            }))
        })
        .collect();
    let mut threads = std::collections::HashSet::new();
    for (n, handle) in handles.into_iter().enumerate() {
        for (value, thread) in handle.await.unwrap() {
            assert_eq!(value, n as u32);
            threads.insert(thread);
        }
    }
    assert!(REQUEST.get_store().is_none());
    // Tasks ran on more than one worker thread, so the store followed them across threads.
    assert!(
        threads.len() >= 2,
        "tasks ran on {} thread(s)",
        threads.len()
    );
}

#[test]
fn thousand_deep_nested_run() {
    fn nest(store: &AsyncLocalStorage<usize>, depth: usize) {
        if depth == 0 {
            return;
        }
        store.run(depth, || {
            assert_eq!(*store.get_store().unwrap(), depth);
            nest(store, depth - 1);
            assert_eq!(*store.get_store().unwrap(), depth);
        });
    }
    let store = AsyncLocalStorage::new();
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            nest(&store, 1000);
            assert_eq!(store.get_store(), None);
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn panic_inside_run_restores() {
    let store = AsyncLocalStorage::new();
    store.run(1, || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.run(2, || panic!("boom"));
        }));
        assert!(result.is_err());
        assert_eq!(store.get_store().as_deref(), Some(&1));
    });
    assert_eq!(store.get_store(), None);
}

#[test]
fn enter_scope_guard_restores_the_previous_store() {
    let store = AsyncLocalStorage::new();
    store.run(1, || {
        let outer = store.enter_scope(2);
        assert_eq!(store.get_store().as_deref(), Some(&2));
        let inner = store.enter_scope(3);
        assert_eq!(store.get_store().as_deref(), Some(&3));
        drop(inner);
        assert_eq!(store.get_store().as_deref(), Some(&2));
        drop(outer);
        assert_eq!(store.get_store().as_deref(), Some(&1));
    });
}

#[test]
fn guards_of_one_storage_dropped_out_of_order_end_as_nested_scopes() {
    let live = Arc::new(AtomicUsize::new(0));
    let store = AsyncLocalStorage::new();
    let other = AsyncLocalStorage::new();
    store.run(Tracked::new(&live, 1), || {
        let outer = store.enter_scope(Tracked::new(&live, 2));
        other.enter_with(7);
        let inner = store.enter_scope(Tracked::new(&live, 3));
        // The older guard ends inside the younger one's scope: nothing changes.
        drop(outer);
        assert_eq!(store.with_store(|s| s.map(|t| t.1)), Some(3));
        assert_eq!(other.get_store().as_deref(), Some(&7));
        // Store 2 is held until the younger guard ends (its frame from before holds it).
        assert_eq!(live.load(Ordering::SeqCst), 3);
        // The younger one puts back what was current before both (not the older one's store),
        // and leaves the other storage's `enter_with` alone.
        drop(inner);
        assert_eq!(store.with_store(|s| s.map(|t| t.1)), Some(1));
        assert_eq!(other.get_store().as_deref(), Some(&7));
        assert_eq!(live.load(Ordering::SeqCst), 1);
    });
    assert_eq!(store.with_store(|s| s.map(|t| t.1)), None);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

#[test]
fn three_guards_dropped_oldest_first_and_middle_first() {
    let store = AsyncLocalStorage::new();
    let a = store.enter_scope(1);
    let b = store.enter_scope(2);
    let c = store.enter_scope(3);
    drop(b);
    assert_eq!(store.get_store().as_deref(), Some(&3));
    drop(a);
    assert_eq!(store.get_store().as_deref(), Some(&3));
    drop(c);
    assert_eq!(store.get_store(), None);

    let a = store.enter_scope(1);
    let b = store.enter_scope(2);
    let c = store.enter_scope(3);
    drop(b);
    drop(c);
    // `b` handed its previous store (1) to `c`.
    assert_eq!(store.get_store().as_deref(), Some(&1));
    drop(a);
    assert_eq!(store.get_store(), None);
}

#[test]
fn guards_dropped_out_of_order_around_a_disable() {
    let store = AsyncLocalStorage::new();
    let older = store.enter_scope(1);
    store.disable();
    let younger = store.enter_scope(2);
    drop(older);
    assert_eq!(store.get_store().as_deref(), Some(&2));
    drop(younger);
    // Not store 1: `disable` ended it.
    assert_eq!(store.get_store(), None);
}

#[test]
fn guards_of_different_storages_dropped_out_of_order_are_independent() {
    let first = AsyncLocalStorage::new();
    let second = AsyncLocalStorage::new();
    let a = first.enter_scope(1);
    let b = second.enter_scope(2);
    drop(a);
    assert_eq!(first.get_store(), None);
    assert_eq!(second.get_store().as_deref(), Some(&2));
    drop(b);
    assert_eq!(second.get_store(), None);
}

#[test]
fn a_guard_returned_out_of_a_resource_scope_changes_nothing_when_dropped() {
    let store = AsyncLocalStorage::new();
    let resource = store.run(1, || AsyncResource::new("Job"));
    let guard = resource.run_in_async_scope(|| {
        let guard = store.enter_scope(2);
        assert_eq!(store.get_store().as_deref(), Some(&2));
        guard
    });
    assert_eq!(store.get_store(), None);
    store.run(3, || {
        drop(guard);
        // Not the resource's store (1), which the guard would have put back.
        assert_eq!(store.get_store().as_deref(), Some(&3));
    });
    assert_eq!(
        resource.run_in_async_scope(|| store.get_store()).as_deref(),
        Some(&1)
    );
}

#[test]
fn a_guard_returned_out_of_run_exit_or_snapshot_run_changes_nothing_when_dropped() {
    let live = Arc::new(AtomicUsize::new(0));
    let store = AsyncLocalStorage::new();
    let other = AsyncLocalStorage::new();

    let guard = store.run(Tracked::new(&live, 1), || {
        store.enter_scope(Tracked::new(&live, 2))
    });
    assert_eq!(store.with_store(|s| s.map(|t| t.1)), None);
    // Store 1 must not come back (it would have: the guard's previous store).
    drop(guard);
    assert_eq!(store.with_store(|s| s.map(|t| t.1)), None);
    assert_eq!(live.load(Ordering::SeqCst), 0);

    // Two of them, dropped in creation order, after an `enter_with` inside.
    let (older, younger) = store.exit(|| {
        store.enter_with(Tracked::new(&live, 3));
        (
            store.enter_scope(Tracked::new(&live, 4)),
            store.enter_scope(Tracked::new(&live, 5)),
        )
    });
    store.run(Tracked::new(&live, 6), || {
        drop(older);
        drop(younger);
        assert_eq!(store.with_store(|s| s.map(|t| t.1)), Some(6));
    });
    assert_eq!(live.load(Ordering::SeqCst), 0);

    // A guard of another storage outlives a `run` (which restores only its own storage), as an
    // `enter_with` does, and still puts back its storage's previous store when dropped.
    let guard = store.run(Tracked::new(&live, 7), || other.enter_scope(8));
    assert_eq!(other.get_store().as_deref(), Some(&8));
    drop(guard);
    assert_eq!(other.get_store(), None);

    // `Snapshot::run` restores every storage: a guard of any of them ends with it.
    let snapshot = store.run(Tracked::new(&live, 9), Snapshot::capture);
    let guard = snapshot.run(|| other.enter_scope(10));
    assert_eq!(other.get_store(), None);
    other.run(11, || {
        drop(guard);
        assert_eq!(other.get_store().as_deref(), Some(&11));
    });
    drop(snapshot);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

#[test]
fn guards_kept_across_polls_of_one_future_nest_out_of_order_too() {
    let store = AsyncLocalStorage::<u32>::new();
    let seen = std::sync::Mutex::new(Vec::new());
    let record = || seen.lock().unwrap().push(store.get_store().map(|s| *s));
    let mut polls = 0;
    let mut held = (None, None);
    let future = std::future::poll_fn(|_| {
        polls += 1;
        match polls {
            1 => held.0 = Some(store.enter_scope(1)),
            2 => held.1 = Some(store.enter_scope(2)),
            3 => held.0 = None, // the older one first
            _ => {
                record();
                held.1 = None;
                record();
                return Poll::Ready(());
            }
        }
        record();
        Poll::Pending
    })
    .bind_context();
    let mut future = Box::pin(future);
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    while future.as_mut().poll(&mut cx).is_pending() {
        // Between polls, outside the future's execution: never any of its guards' stores.
        assert_eq!(store.get_store(), None);
    }
    drop(future);
    assert_eq!(
        *seen.lock().unwrap(),
        [Some(1), Some(2), Some(2), Some(2), None]
    );
}

#[test]
fn a_guard_made_in_one_poll_of_a_scope_future_ends_with_that_poll() {
    let store = AsyncLocalStorage::<u32>::new();
    let mut polls = 0;
    let mut guard = None;
    let inner = std::future::poll_fn(|_| {
        polls += 1;
        if polls == 1 {
            guard = Some(store.enter_scope(2));
            assert_eq!(store.get_store().as_deref(), Some(&2));
            return Poll::Pending;
        }
        // The scope put its store back at the end of the first poll, ending the guard.
        let before = store.get_store().map(|s| *s);
        guard = None;
        Poll::Ready((before, store.get_store().map(|s| *s)))
    });
    let mut future = Box::pin(store.scope(5, inner));
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(future.as_mut().poll(&mut cx).is_pending());
    assert_eq!(store.get_store(), None);
    assert_eq!(
        future.as_mut().poll(&mut cx),
        Poll::Ready((Some(5), Some(5)))
    );
    assert_eq!(store.get_store(), None);
}

#[test]
fn a_guard_kept_in_a_scope_future_dropped_outside_changes_nothing() {
    let store = AsyncLocalStorage::<u32>::new();
    let mut future = Box::pin(store.scope(1, async {
        let _guard = store.enter_scope(2);
        assert_eq!(store.get_store().as_deref(), Some(&2));
        std::future::pending::<()>().await;
    }));
    let waker = futures::task::noop_waker();
    assert!(
        future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
            .is_pending()
    );
    assert_eq!(store.get_store(), None);
    // Dropping the future drops the guard after the poll it was made in has ended (inside the
    // scope's own drop, which makes the store current again for the inner future's
    // destructors): the scope's store (the guard's previous one) must not stay current.
    drop(future);
    assert_eq!(store.get_store(), None);
}

/// As tokio's `scope` does, the inner future is dropped with the store current: a destructor of
/// a value held across an `.await` sees it, on whatever thread drops the future.
#[test]
fn a_scope_future_drops_its_inner_future_inside_the_scope() {
    static STORE: AsyncLocalStorage<u32> = AsyncLocalStorage::new();
    struct SeesStore(Arc<std::sync::Mutex<Vec<Option<u32>>>>);
    impl Drop for SeesStore {
        fn drop(&mut self) {
            self.0.lock().unwrap().push(STORE.get_store().map(|s| *s));
        }
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let waker = futures::task::noop_waker();
    let pending = |value: u32| {
        let held = SeesStore(seen.clone());
        let mut future = Box::pin(STORE.scope(value, async move {
            let _held = held;
            std::future::pending::<()>().await;
        }));
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(future.as_mut().poll(&mut cx).is_pending());
        future
    };
    // Dropped pending here, inside another run of the storage, and never polled.
    drop(pending(1));
    STORE.run(9, || drop(pending(2)));
    drop(STORE.scope(3, std::future::ready(SeesStore(seen.clone()))));
    // Dropped on another thread.
    let future = pending(4);
    std::thread::spawn(move || drop(future)).join().unwrap();
    // Completed: the output is the caller's, dropped outside.
    let output = futures::executor::block_on(STORE.scope(5, async { SeesStore(seen.clone()) }));
    drop(output);
    assert_eq!(
        *seen.lock().unwrap(),
        [Some(1), Some(2), Some(3), Some(4), None]
    );
    assert_eq!(STORE.get_store(), None);
}

#[test]
fn guards_held_across_polls_of_two_interleaved_futures_stay_in_their_own() {
    let store = AsyncLocalStorage::<u32>::new();
    // Each future makes a guard in its first poll and drops it in its second.
    let future = |value: u32| {
        let store = &store;
        let mut guard = None;
        let mut polls = 0;
        std::future::poll_fn(move |_| {
            polls += 1;
            if polls == 1 {
                guard = Some(store.enter_scope(value));
                return Poll::Pending;
            }
            let before = store.get_store().map(|s| *s);
            drop(guard.take());
            Poll::Ready((before, store.get_store().map(|s| *s)))
        })
        .bind_context()
    };
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut first = Box::pin(future(1));
    let mut second = Box::pin(future(2));
    assert!(first.as_mut().poll(&mut cx).is_pending());
    assert!(second.as_mut().poll(&mut cx).is_pending());
    assert_eq!(store.get_store(), None);
    // The older guard (the first future's) is dropped first, in its own execution: it is not out
    // of order with the second future's.
    assert_eq!(first.as_mut().poll(&mut cx), Poll::Ready((Some(1), None)));
    assert_eq!(second.as_mut().poll(&mut cx), Poll::Ready((Some(2), None)));
    assert_eq!(store.get_store(), None);
}

#[test]
fn with_store_and_get_store_agree_with_many_storages() {
    let storages: Vec<AsyncLocalStorage<usize>> =
        (0..100).map(|_| AsyncLocalStorage::new()).collect();
    fn enter_all(storages: &[AsyncLocalStorage<usize>], i: usize, check: &dyn Fn()) {
        match storages.get(i) {
            Some(s) => s.run(i * 10, || enter_all(storages, i + 1, check)),
            None => check(),
        }
    }
    enter_all(&storages, 0, &|| {
        for (i, s) in storages.iter().enumerate() {
            assert_eq!(s.get_store().as_deref(), Some(&(i * 10)));
            assert_eq!(s.with_store(|v| v.copied()), Some(i * 10));
        }
    });
    assert!(storages.iter().all(|s| s.get_store().is_none()));
}

/// Past four storages a `run`'s frame no longer fits on its stack and spills to the heap: the
/// same semantics there, and every store freed when the last frame holding it goes.
#[test]
fn runs_over_many_storages_keep_their_semantics_and_free_their_stores() {
    let live = Arc::new(AtomicUsize::new(0));
    let storages: Vec<AsyncLocalStorage<Tracked>> =
        (0..12).map(|_| AsyncLocalStorage::new()).collect();
    let other = AsyncLocalStorage::<u32>::new();
    fn nest(
        storages: &[AsyncLocalStorage<Tracked>],
        live: &Arc<AtomicUsize>,
        i: usize,
        innermost: &mut dyn FnMut(),
    ) -> Vec<AsyncResource> {
        let Some(storage) = storages.get(i) else {
            innermost();
            return Vec::new();
        };
        storage.run(Tracked::new(live, i as u32), || {
            // A resource at every depth captures the frame of that depth.
            let here = AsyncResource::new("Depth");
            // A nested `run` of the outermost storage shadows it and puts it back.
            storages[0].run(Tracked::new(live, 100 + i as u32), || {
                assert_eq!(storages[0].get_store().map(|s| s.1), Some(100 + i as u32));
            });
            assert_eq!(storages[0].get_store().map(|s| s.1), Some(0), "depth {i}");
            let mut inner = nest(storages, live, i + 1, innermost);
            inner.push(here);
            inner
        })
    }
    let resources = nest(&storages, &live, 0, &mut || {
        for (i, storage) in storages.iter().enumerate() {
            assert_eq!(storage.with_store(|s| s.map(|s| s.1)), Some(i as u32));
        }
        // Another storage's `enter_with` inside survives the runs around it.
        other.enter_with(7);
        // `exit` of one storage inside the deepest frame.
        storages[5].exit(|| assert!(storages[5].get_store().is_none()));
        assert_eq!(storages[5].get_store().map(|s| s.1), Some(5));
    });
    assert_eq!(other.get_store().as_deref(), Some(&7));
    assert!(storages.iter().all(|s| s.get_store().is_none()));
    // Every shadowing store is gone; the twelve stores live on in the resources' frames.
    assert_eq!(live.load(Ordering::SeqCst), 12);
    // The resource made at depth d (pushed in reverse) sees the d + 1 outer stores.
    for (depth, resource) in resources.iter().rev().enumerate() {
        resource.run_in_async_scope(|| {
            for (i, storage) in storages.iter().enumerate() {
                let expected = (i <= depth).then_some(i as u32);
                assert_eq!(storage.get_store().map(|s| s.1), expected, "depth {depth}");
            }
        });
    }
    drop(resources);
    assert_eq!(live.load(Ordering::SeqCst), 0);

    // A panic deep inside puts every frame back and frees every store.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        nest(&storages, &live, 0, &mut || panic!("deep inside"))
    }));
    assert!(caught.is_err());
    assert!(storages.iter().all(|s| s.get_store().is_none()));
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

#[test]
fn a_storage_dropped_while_values_are_captured_frees_them_later() {
    let live = Arc::new(AtomicUsize::new(0));
    let store = Box::new(AsyncLocalStorage::new());
    let job = store.run(Tracked::new(&live, 1), || AsyncResource::new("Job"));
    drop(store);
    assert_eq!(live.load(Ordering::SeqCst), 1);
    job.run_in_async_scope(|| {});
    drop(job);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

/// Regression (model test, RELIABILITY.md finding 1): a `disable()` inside a `run`/`exit` of the
/// same storage must not let a later `enter_with` inside it outlive the `run`/`exit`.
#[test]
fn enter_with_after_disable_ends_with_the_enclosing_run_or_exit() {
    let store = AsyncLocalStorage::<u32>::new();
    store.exit(|| {
        store.disable();
        store.enter_with(7);
        assert_eq!(store.get_store().as_deref(), Some(&7));
    });
    assert_eq!(store.get_store(), None);

    let store = AsyncLocalStorage::<u32>::new();
    store.run(1, || {
        store.disable();
        store.enter_with(7);
    });
    assert_eq!(store.get_store(), None);

    // The same through a guard; and a later run still works.
    let store = AsyncLocalStorage::<u32>::new();
    {
        let _guard = store.enter_scope(1);
        store.disable();
        store.enter_with(7);
    }
    assert_eq!(store.get_store(), None);
    store.run(2, || assert_eq!(store.get_store().as_deref(), Some(&2)));
}

/// Regression (model test, RELIABILITY.md finding 3): `scope` keeps its store in every poll,
/// also after `disable()` and from the same caller frame.
#[test]
fn scope_after_disable_keeps_its_store_in_every_poll() {
    static S: AsyncLocalStorage<u32> = AsyncLocalStorage::new();
    let mut seen = Vec::new();
    let mut polls = 0;
    let inner = std::future::poll_fn(|_| {
        seen.push(S.get_store().as_deref().copied());
        polls += 1;
        if polls == 2 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    let mut fut = Box::pin(S.scope(1, inner));
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    S.disable();
    assert!(fut.as_mut().poll(&mut cx).is_ready());
    drop(fut);
    assert_eq!(seen, [Some(1), Some(1)]);
    assert_eq!(S.get_store(), None);
}
