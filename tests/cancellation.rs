//! Cancellation: futures dropped mid-flight, never polled, dropped on another thread, losers of
//! `tokio::select!`, aborted tasks and tasks dropped by a runtime shutdown. Each resource gets
//! `destroy` exactly once and every store it captured is released (live-object counters).

mod support;
use support::events;

use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use async_hooks::{AsyncId, AsyncLocalStorage, BindContext, async_resource, bind};
use events::{Ev, destroys_of, events_of, last_init, record};
use support::futures::{PendingN, poll_once};
use support::serial;

/// A store that counts live instances.
struct Counted(Arc<AtomicIsize>);

impl Counted {
    fn new(live: &Arc<AtomicIsize>) -> Counted {
        live.fetch_add(1, Ordering::SeqCst);
        Counted(live.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

static STORE: AsyncLocalStorage<Counted> = AsyncLocalStorage::new();

fn live() -> Arc<AtomicIsize> {
    Arc::new(AtomicIsize::new(0))
}

fn count(live: &Arc<AtomicIsize>) -> isize {
    live.load(Ordering::SeqCst)
}

#[async_resource]
async fn waits(n: u32, live: Arc<AtomicIsize>) {
    STORE.enter_with(Counted::new(&live));
    PendingN(n).await;
}

#[test]
fn never_polled_futures_destroy_once_and_release_their_stores() {
    let _serial = serial();
    let _hook = record();
    let counter = live();
    let (bound, annotated, annotated_id) = STORE.run(Counted::new(&counter), || {
        let bound = async {}.bind_context();
        let annotated = waits(1, counter.clone());
        (bound, annotated, last_init())
    });
    assert_eq!(count(&counter), 1, "captured by both futures");
    let bound_id = bound.async_id();
    drop(bound);
    drop(annotated);
    assert_eq!(count(&counter), 0);
    assert_eq!(events_of(bound_id), [Ev::Init, Ev::Destroy]);
    assert_eq!(events_of(annotated_id), [Ev::Init, Ev::Destroy]);
}

#[test]
fn futures_dropped_mid_flight_here_or_on_another_thread() {
    let _serial = serial();
    let _hook = record();
    let counter = live();
    let mut ids = Vec::new();
    for on_other_thread in [false, true] {
        let mut fut = STORE.run(Counted::new(&counter), || {
            Box::pin(waits(3, counter.clone()))
        });
        let id = last_init();
        ids.push(id);
        assert!(poll_once(fut.as_mut()).is_pending());
        assert!(poll_once(fut.as_mut()).is_pending());
        // The enter_with replaced the captured store in the future's own frame.
        assert_eq!(count(&counter), 1, "the enter_with store");
        if on_other_thread {
            std::thread::spawn(move || drop(fut)).join().unwrap();
        } else {
            drop(fut);
        }
        assert_eq!(count(&counter), 0);
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
    }
    // A bound future polled on one thread, dropped on a third.
    let fut = STORE.run(Counted::new(&counter), || {
        bind!(async move {
            PendingN(5).await;
        })
    });
    let id = fut.async_id();
    let mut fut = Box::pin(fut);
    let fut = std::thread::spawn(move || {
        assert!(poll_once(fut.as_mut()).is_pending());
        fut
    })
    .join()
    .unwrap();
    std::thread::spawn(move || drop(fut)).join().unwrap();
    assert_eq!(count(&counter), 0);
    assert_eq!(destroys_of(id), 1);
}

#[test]
fn select_losers_are_destroyed_once() {
    let _serial = serial();
    let _hook = record();
    let counter = live();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut losers = Vec::new();
    let mut winners = Vec::new();
    rt.block_on(async {
        for i in 0..100u32 {
            let (slow, fast) = STORE.run(Counted::new(&counter), || {
                let slow = async { pending::<u32>().await }.bind_context();
                let fast = async move {
                    tokio::task::yield_now().await;
                    i
                }
                .bind_context();
                (slow, fast)
            });
            losers.push(slow.async_id());
            winners.push(fast.async_id());
            let got = tokio::select! {
                v = slow => v,
                v = fast => v,
            };
            assert_eq!(got, i);
        }
    });
    drop(rt);
    assert_eq!(count(&counter), 0);
    for id in losers {
        let events = events_of(id);
        assert_eq!(destroys_of(id), 1, "{events:?}");
        assert!(!events.contains(&Ev::Resolve), "{events:?}");
    }
    for id in winners {
        let events = events_of(id);
        assert_eq!(destroys_of(id), 1, "{events:?}");
        assert_eq!(events.iter().filter(|e| **e == Ev::Resolve).count(), 1);
    }
}

#[test]
fn aborted_tasks_and_tasks_dropped_by_runtime_shutdown() {
    let _serial = serial();
    let _hook = record();
    let counter = live();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let mut ids: Vec<AsyncId> = Vec::new();
    let (aborted, completed) = rt.block_on(async {
        let mut handles = Vec::new();
        for i in 0..200u32 {
            let fut = STORE.run(Counted::new(&counter), || {
                bind!(async move {
                    if i % 2 == 0 {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    tokio::task::yield_now().await;
                    i
                })
            });
            ids.push(fut.async_id());
            handles.push(tokio::spawn(fut));
        }
        tokio::task::yield_now().await;
        let mut aborted = 0;
        let mut completed = 0;
        for (i, handle) in handles.into_iter().enumerate() {
            if i % 2 == 0 {
                handle.abort();
                assert!(handle.await.unwrap_err().is_cancelled());
                aborted += 1;
            } else {
                assert_eq!(handle.await.unwrap(), i as u32);
                completed += 1;
            }
        }
        (aborted, completed)
    });
    assert_eq!((aborted, completed), (100, 100));
    assert_eq!(
        count(&counter),
        0,
        "aborted and completed tasks released their stores"
    );

    // Tasks still pending when the runtime shuts down are dropped by it.
    let mut pending_ids = Vec::new();
    rt.block_on(async {
        for _ in 0..50 {
            let fut = STORE.run(Counted::new(&counter), || {
                bind!(async move { pending::<()>().await })
            });
            pending_ids.push(fut.async_id());
            tokio::spawn(fut);
        }
        tokio::task::yield_now().await;
    });
    assert_eq!(count(&counter), 50);
    drop(rt);
    assert_eq!(count(&counter), 0);
    for id in ids.iter().chain(&pending_ids) {
        assert_eq!(destroys_of(*id), 1, "{id}: {:?}", events_of(*id));
        assert_eq!(events_of(*id).last(), Some(&Ev::Destroy));
    }
}
