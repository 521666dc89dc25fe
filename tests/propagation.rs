//! The propagation kit: `async_hooks::tokio`, `async_hooks::thread`, `async_hooks::rayon` and
//! `Snapshot::{empty, wrap}`. Each helper's work sees the spawner's store on the thread that
//! runs it, is one resource (`init` with the spawner as trigger, `before`/`after`, exactly one
//! `destroy`, also when cancelled), and leaves no context behind on the thread.

mod support;

use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::thread::{self, ThreadId};
use std::time::Duration;

use async_hooks::rayon::ParallelIteratorExt;
use async_hooks::thread::BuilderExt;
use async_hooks::tokio::JoinSetExt;
use async_hooks::{
    AsyncHook, AsyncId, AsyncLocalStorage, AsyncResource, Hooks, Snapshot, create_hook,
    execution_async_id,
};
use rayon::prelude::*;
use support::{Log, recorder, serial};
use tokio::task::{JoinSet, LocalSet};

static REQUEST: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
static USER: AsyncLocalStorage<String> = AsyncLocalStorage::new();

fn request() -> Option<u64> {
    REQUEST.get_store().map(|r| *r)
}

fn user() -> Option<String> {
    USER.get_store().map(|u| (*u).clone())
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Takes the lock that serialises hook tests and enables a recorder hook logging to a new log.
fn recording() -> (MutexGuard<'static, ()>, Log, AsyncHook) {
    let serial = serial();
    let (log, hook) = start_recording();
    (serial, log, hook)
}

/// A recorder hook logging to a new log, enabled (the caller holds the lock).
fn start_recording() -> (Log, AsyncHook) {
    let log = Log::default();
    let hook = recorder("h", &log).enable();
    (log, hook)
}

/// One recorded event: `("init", "Type", trigger)`, or `(event, "", NONE)` for the others.
fn parse(line: &str) -> (AsyncId, String) {
    // "{hook} {event} {id}" or "{hook} init {ty}({id}) trigger={trigger}"
    let mut words = line.split(' ').skip(1);
    let event = words.next().unwrap();
    let rest = words.next().unwrap();
    if event == "init" {
        let (ty, id) = rest.trim_end_matches(')').split_once('(').unwrap();
        let trigger = words.next().unwrap();
        (id_of(id), format!("init {ty} {trigger}"))
    } else {
        (id_of(rest), event.to_string())
    }
}

fn id_of(s: &str) -> AsyncId {
    AsyncId::from_u64(s.parse().unwrap())
}

/// The ids of the resources of type `ty` whose `init` names `trigger`, in creation order.
fn inits(log: &[String], ty: &str, trigger: AsyncId) -> Vec<AsyncId> {
    let want = format!("init {ty} trigger={trigger}");
    log.iter()
        .map(|l| parse(l))
        .filter(|(_, e)| *e == want)
        .map(|(id, _)| id)
        .collect()
}

/// The events of resource `id`, in order.
fn events_of(log: &[String], id: AsyncId) -> Vec<String> {
    log.iter()
        .map(|l| parse(l))
        .filter(|(i, _)| *i == id)
        .map(|(_, e)| e)
        .collect()
}

/// Checks the whole life of resource `id`: `init` of type `ty` triggered by `trigger`, then
/// `polls` or more `before`/`after` pairs (a `resolve` may sit inside the last one), then exactly
/// one `destroy`, and nothing after it.
fn assert_lifecycle(log: &[String], id: AsyncId, ty: &str, trigger: AsyncId, polls: usize) {
    let events = events_of(log, id);
    let shape = events[1..].join(" ");
    assert_eq!(
        events[0],
        format!("init {ty} trigger={trigger}"),
        "{id}: {events:?}"
    );
    let (body, last) = shape.rsplit_once(' ').unwrap_or(("", &shape));
    assert_eq!(last, "destroy", "{id}: {events:?}");
    let pairs = body
        .replace("before resolve after", "before after")
        .split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|pair| {
            assert_eq!(pair, ["before", "after"], "{id}: {events:?}");
        })
        .count();
    assert!(
        pairs >= polls,
        "{id}: {pairs} polls, want {polls}+: {events:?}"
    );
}

/// [`assert_lifecycle`] for a resource entered by several threads at once (a parallel
/// iterator's): `init`, then `before`s and `after`s that pair up per thread, so they interleave
/// in the log but never have more `after`s than `before`s so far, then exactly one `destroy`.
fn assert_shared_lifecycle(log: &[String], id: AsyncId, ty: &str, trigger: AsyncId) {
    let events = events_of(log, id);
    assert_eq!(events[0], format!("init {ty} trigger={trigger}"), "{id}");
    assert_eq!(events.last().unwrap(), "destroy", "{id}");
    let mut open = 0usize;
    let mut polls = 0;
    for event in &events[1..events.len() - 1] {
        match event.as_str() {
            "before" => (open, polls) = (open + 1, polls + 1),
            "after" => open = open.checked_sub(1).expect("an after with no before"),
            other => panic!("{id}: unexpected {other}: {events:?}"),
        }
    }
    assert_eq!(open, 0, "{id}: a before with no after");
    assert!(polls >= 1, "{id}: never entered");
}

/// Runs `f` inside a fresh resource of type `Spawner`, with `REQUEST` = `request`; returns the
/// spawner's id and `f`'s result.
fn from_spawner<R>(request: u64, f: impl FnOnce() -> R) -> (AsyncId, R) {
    let spawner = AsyncResource::new("Spawner");
    let r = spawner.run_in_async_scope(|| REQUEST.run(request, f));
    (spawner.async_id(), r)
}

/// What a piece of spawned work saw.
#[derive(Debug, PartialEq)]
struct Seen {
    request: Option<u64>,
    id: AsyncId,
    thread: ThreadId,
}

fn seen() -> Seen {
    Seen {
        request: request(),
        id: execution_async_id(),
        thread: thread::current().id(),
    }
}

fn tokio_spawn_on(rt: tokio::runtime::Runtime, other_thread: bool) {
    let (_serial, log, hook) = recording();
    let (spawner, seen) = rt.block_on(async {
        let (spawner, task) = from_spawner(7, || {
            async_hooks::tokio::spawn(async {
                tokio::task::yield_now().await;
                seen()
            })
        });
        // Outside the `run`: the task keeps its own context.
        assert_eq!(request(), None);
        (spawner, task.await.unwrap())
    });
    drop(rt);
    hook.disable();
    let log = log.take();
    assert_eq!(seen.request, Some(7));
    assert_eq!(seen.thread != thread::current().id(), other_thread);
    assert_eq!(inits(&log, "TokioTask", spawner), [seen.id]);
    assert_lifecycle(&log, seen.id, "TokioTask", spawner, 2);
}

#[test]
fn tokio_spawn_multi_thread_runs_on_a_worker_in_the_spawners_context() {
    tokio_spawn_on(multi_thread(), true);
}

#[test]
fn tokio_spawn_current_thread_runs_in_the_spawners_context() {
    tokio_spawn_on(current_thread(), false);
}

#[test]
fn tokio_spawn_blocking_runs_on_the_blocking_pool_in_the_spawners_context() {
    let _serial = serial();
    for rt in [current_thread(), multi_thread()] {
        let (log, hook) = start_recording();
        let (spawner, seen) = rt.block_on(async {
            let (spawner, job) = from_spawner(8, || async_hooks::tokio::spawn_blocking(seen));
            (spawner, job.await.unwrap())
        });
        drop(rt);
        hook.disable();
        let log = log.take();
        assert_eq!(seen.request, Some(8));
        assert_ne!(seen.thread, thread::current().id());
        assert_eq!(inits(&log, "TokioBlocking", spawner), [seen.id]);
        assert_lifecycle(&log, seen.id, "TokioBlocking", spawner, 1);
    }
}

#[test]
fn tokio_spawn_local_in_a_local_set() {
    let _serial = serial();
    for rt in [current_thread(), multi_thread()] {
        let (log, hook) = start_recording();
        let local = LocalSet::new();
        let (spawner, seen) = local.block_on(&rt, async {
            let not_send = Rc::new(());
            let (spawner, task) = from_spawner(9, || {
                async_hooks::tokio::spawn_local(async move {
                    tokio::task::yield_now().await;
                    let _keep = not_send;
                    seen()
                })
            });
            (spawner, task.await.unwrap())
        });
        drop(local);
        drop(rt);
        hook.disable();
        let log = log.take();
        assert_eq!(seen.request, Some(9));
        assert_eq!(inits(&log, "TokioLocalTask", spawner), [seen.id]);
        assert_lifecycle(&log, seen.id, "TokioLocalTask", spawner, 2);
    }
}

#[test]
fn local_set_block_on_keeps_the_callers_context_but_raw_spawn_local_does_not() {
    let rt = current_thread();
    let local = LocalSet::new();
    let (inline, raw, bound) = REQUEST.run(1, || {
        local.block_on(&rt, async {
            let (raw, bound) = REQUEST.run(2, || {
                (
                    tokio::task::spawn_local(async { request() }),
                    async_hooks::tokio::spawn_local(async { request() }),
                )
            });
            (request(), raw.await.unwrap(), bound.await.unwrap())
        })
    });
    // The future given to block_on is polled inside the caller's `run`; a raw task is polled by
    // the LocalSet, which sees that same outer store, not its spawner's.
    assert_eq!((inline, raw, bound), (Some(1), Some(1), Some(2)));
}

#[test]
fn join_set_of_1000_bound_tasks_each_sees_its_own_store() {
    let (_serial, log, hook) = recording();
    let rt = multi_thread();
    let spawner = AsyncResource::new("Spawner");
    let results = rt.block_on(async {
        let mut set = JoinSet::new();
        spawner.run_in_async_scope(|| {
            for i in 0..1000u64 {
                REQUEST.run(i, || {
                    if i % 10 == 0 {
                        set.spawn_blocking_bound(move || (i, seen()));
                    } else {
                        set.spawn_bound(async move {
                            tokio::task::yield_now().await;
                            (i, seen())
                        });
                    }
                });
            }
        });
        set.join_all().await
    });
    drop(rt);
    hook.disable();
    let log = log.take();
    assert_eq!(results.len(), 1000);
    let mut ids = BTreeSet::new();
    for (i, seen) in &results {
        assert_eq!(seen.request, Some(*i));
        assert!(ids.insert(seen.id), "two tasks ran as {}", seen.id);
    }
    let tasks = inits(&log, "TokioTask", spawner.async_id());
    let blocking = inits(&log, "TokioBlocking", spawner.async_id());
    assert_eq!((tasks.len(), blocking.len()), (900, 100));
    for id in tasks {
        assert_lifecycle(&log, id, "TokioTask", spawner.async_id(), 2);
    }
    for id in blocking {
        assert_lifecycle(&log, id, "TokioBlocking", spawner.async_id(), 1);
    }
    assert_eq!(
        ids,
        inits(&log, "TokioTask", spawner.async_id())
            .into_iter()
            .chain(inits(&log, "TokioBlocking", spawner.async_id()))
            .collect()
    );
}

#[test]
fn aborted_tasks_and_dropped_join_sets_destroy_exactly_once() {
    let _serial = serial();
    for rt in [current_thread(), multi_thread()] {
        let (log, hook) = start_recording();
        let (spawner, dropped_set) = rt.block_on(async {
            let (spawner, (aborted, mut shut_down, dropped)) = from_spawner(1, || {
                let aborted = async_hooks::tokio::spawn(std::future::pending::<()>());
                let mut shut_down = JoinSet::new();
                let mut dropped = JoinSet::new();
                for _ in 0..10 {
                    shut_down.spawn_bound(std::future::pending::<()>());
                    dropped.spawn_bound(std::future::pending::<()>());
                }
                (aborted, shut_down, dropped)
            });
            // Let some of them start.
            tokio::task::yield_now().await;
            aborted.abort();
            assert!(aborted.await.unwrap_err().is_cancelled());
            shut_down.shutdown().await;
            (spawner, dropped)
        });
        // Dropping the set aborts its tasks; the runtime's drop drops them.
        drop(dropped_set);
        drop(rt);
        hook.disable();
        let log = log.take();
        let ids = inits(&log, "TokioTask", spawner);
        assert_eq!(ids.len(), 21);
        for id in ids {
            assert_lifecycle(&log, id, "TokioTask", spawner, 0);
        }
    }
}

#[test]
fn block_in_place_keeps_the_tasks_context() {
    let (_serial, log, hook) = recording();
    let rt = multi_thread();
    let (spawner, (outer, inside, after, inner)) = rt.block_on(async {
        let (spawner, task) = from_spawner(5, || {
            async_hooks::tokio::spawn(async {
                let outer = seen();
                let (inside, inner) = tokio::task::block_in_place(|| {
                    // Spawned from inside block_in_place: triggered by the task.
                    (seen(), async_hooks::tokio::spawn(async { seen() }))
                });
                tokio::task::yield_now().await;
                let after = seen();
                (outer, inside, after, inner.await.unwrap())
            })
        });
        (spawner, task.await.unwrap())
    });
    drop(rt);
    hook.disable();
    let log = log.take();
    assert_eq!(outer.request, Some(5));
    assert_eq!((inside.request, inside.id), (Some(5), outer.id));
    assert_eq!((after.request, after.id), (Some(5), outer.id));
    assert_eq!(inner.request, Some(5));
    assert_lifecycle(&log, outer.id, "TokioTask", spawner, 2);
    assert_eq!(inits(&log, "TokioTask", outer.id), [inner.id]);
    assert_lifecycle(&log, inner.id, "TokioTask", outer.id, 1);
}

#[test]
fn std_thread_spawn_and_builder() {
    let (_serial, log, hook) = recording();
    let (spawner, (a, b)) = from_spawner(3, || {
        let a = async_hooks::thread::spawn(seen);
        let b = thread::Builder::new()
            .name("bound".into())
            .spawn_bound(|| (seen(), thread::current().name().map(String::from)))
            .unwrap();
        (a.join().unwrap(), b.join().unwrap())
    });
    hook.disable();
    let log = log.take();
    let (b, name) = b;
    assert_eq!(name.as_deref(), Some("bound"));
    for seen in [&a, &b] {
        assert_eq!(seen.request, Some(3));
        assert_ne!(seen.thread, thread::current().id());
        assert_lifecycle(&log, seen.id, "Thread", spawner, 1);
    }
    assert_eq!(inits(&log, "Thread", spawner), [a.id, b.id]);
}

#[test]
fn a_panicking_thread_still_destroys_its_resource() {
    let (_serial, log, hook) = recording();
    let (spawner, result) = from_spawner(3, || {
        async_hooks::thread::spawn(|| panic!("boom (expected by the test)")).join()
    });
    hook.disable();
    assert!(result.is_err());
    let log = log.take();
    let ids = inits(&log, "Thread", spawner);
    assert_eq!(ids.len(), 1);
    assert_lifecycle(&log, ids[0], "Thread", spawner, 1);
}

/// What every thread of rayon's global pool reads, at its own top level.
fn pool_threads_read() -> Vec<(Option<u64>, AsyncId)> {
    rayon::broadcast(|_| (request(), execution_async_id()))
}

fn assert_pool_threads_clean() {
    let all = pool_threads_read();
    assert!(!all.is_empty());
    assert!(
        all.iter().all(|r| *r == (None, AsyncId::ROOT)),
        "a pool thread kept a context: {all:?}"
    );
}

#[test]
fn rayon_spawn_join_scope_run_in_the_callers_context_and_leave_none_behind() {
    let (_serial, log, hook) = recording();
    // `rayon::spawn`'s closure sends its result before its resource is dropped: the test waits
    // for that `destroy` before it reads the log.
    let (destroyed_tx, destroyed) = mpsc::channel();
    let watch = create_hook(Hooks::new().destroy(move |id| {
        let _ = destroyed_tx.send(id);
    }))
    .enable();
    let main = thread::current().id();
    let (spawner, (spawned, joined, scoped)) = from_spawner(11, || {
        let (tx, rx) = mpsc::channel();
        async_hooks::rayon::spawn(move || tx.send(seen()).unwrap());
        let spawned = rx.recv().unwrap();
        let joined = async_hooks::rayon::join(seen, seen);
        let scoped = Mutex::new(Vec::new());
        let scope_seen = async_hooks::rayon::scope(|s| {
            for _ in 0..8 {
                s.spawn(|s| {
                    scoped.lock().unwrap().push(seen());
                    // Spawned from a spawned closure: still the caller's store.
                    s.spawn(|_| scoped.lock().unwrap().push(seen()));
                });
            }
            seen()
        });
        (spawned, joined, (scope_seen, scoped.into_inner().unwrap()))
    });
    while destroyed
        .recv_timeout(Duration::from_secs(60))
        .expect("the spawned closure's resource is destroyed")
        != spawned.id
    {}
    watch.disable();
    hook.disable();
    let log = log.take();
    assert_pool_threads_clean();

    let (scope_seen, scoped) = scoped;
    assert_eq!(scoped.len(), 16);
    let all = [&spawned, &joined.0, &joined.1, &scope_seen]
        .into_iter()
        .chain(&scoped);
    for seen in all {
        assert_eq!(seen.request, Some(11), "{seen:?}");
    }
    // Called from outside the pool, each closure ran on a pool thread.
    for seen in [&spawned, &joined.0, &joined.1, &scope_seen] {
        assert_ne!(seen.thread, main);
    }
    // spawn, join's two closures and the scope's closure are triggered by the spawner; the
    // first 8 scope spawns by the scope, the nested ones by the closure that spawned them.
    assert_eq!(
        inits(&log, "Rayon", spawner),
        [spawned.id, joined.0.id, joined.1.id, scope_seen.id]
    );
    for seen in [&spawned, &joined.0, &joined.1, &scope_seen] {
        assert_lifecycle(&log, seen.id, "Rayon", spawner, 1);
    }
    let outer = inits(&log, "Rayon", scope_seen.id);
    assert_eq!(outer.len(), 8);
    for id in &outer {
        assert_lifecycle(&log, *id, "Rayon", scope_seen.id, 1);
        let nested = inits(&log, "Rayon", *id);
        assert_eq!(nested.len(), 1);
        assert_lifecycle(&log, nested[0], "Rayon", *id, 1);
    }
    let scoped_ids: BTreeSet<AsyncId> = scoped.iter().map(|s| s.id).collect();
    assert_eq!(scoped_ids.len(), 16);
}

#[test]
fn rayon_par_iter_bind_context_runs_every_closure_in_the_callers_context() {
    let (_serial, log, hook) = recording();
    let main = thread::current().id();
    let (spawner, (mapped, sum, threads, folded)) = from_spawner(12, || {
        let mapped: Vec<Option<u64>> = (0..10_000u64)
            .into_par_iter()
            .bind_context()
            .map(|_| request())
            .collect();
        let sum: u64 = (0..10_000u64)
            .into_par_iter()
            .bind_context()
            .filter(|_| request() == Some(12))
            .map(|x| x + request().unwrap())
            .sum();
        let threads = Mutex::new(std::collections::HashSet::new());
        (0..10_000u64).into_par_iter().bind_context().for_each(|_| {
            assert_eq!(request(), Some(12));
            threads.lock().unwrap().insert(thread::current().id());
        });
        let folded: Vec<u64> = (0..1000u64)
            .into_par_iter()
            .bind_context()
            .fold(|| request().unwrap(), |acc, _| acc + request().unwrap())
            .collect();
        (mapped, sum, threads.into_inner().unwrap(), folded)
    });
    hook.disable();
    let log = log.take();
    assert_pool_threads_clean();
    assert!(mapped.iter().all(|r| *r == Some(12)));
    assert_eq!(mapped.len(), 10_000);
    assert_eq!(sum, (0..10_000u64).sum::<u64>() + 12 * 10_000);
    assert!(!threads.contains(&main), "ran on the caller's thread");
    // The identity closure runs once per chunk, each item adds 12.
    assert_eq!(
        folded.iter().sum::<u64>(),
        12 * (1000 + folded.len() as u64)
    );
    let ids = inits(&log, "Rayon", spawner);
    assert_eq!(ids.len(), 4, "one resource per bind_context()");
    for id in ids {
        assert_shared_lifecycle(&log, id, "Rayon", spawner);
    }
}

#[test]
fn a_pool_thread_running_unbound_work_after_bound_work_reads_none() {
    let _serial = serial();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let (bound, after) = pool.install(|| {
        let bound = REQUEST.run(13, || async_hooks::rayon::join(request, request));
        // The same single worker, outside any bound closure.
        let (tx, rx) = mpsc::channel();
        rayon::spawn(move || tx.send(seen()).unwrap());
        (bound, rx)
    });
    let after = after.recv().unwrap();
    assert_eq!(bound, (Some(13), Some(13)));
    assert_eq!((after.request, after.id), (None, AsyncId::ROOT));
    let all = pool.broadcast(|_| (request(), execution_async_id()));
    assert_eq!(all, [(None, AsyncId::ROOT)]);
}

#[test]
fn snapshot_empty_spawns_work_that_inherits_nothing() {
    let (_serial, log, hook) = recording();
    let rt = multi_thread();
    let (spawner, (task, inner, thread_seen, rayon_seen)) = rt.block_on(async {
        let (spawner, work) = from_spawner(14, || {
            USER.run("ada".to_string(), || {
                Snapshot::empty().run(|| {
                    assert_eq!((request(), user()), (None, None));
                    let task = async_hooks::tokio::spawn(async {
                        let here = (request(), user(), execution_async_id());
                        // Created inside the task: inherits nothing either.
                        let inner = REQUEST.run(1, || {
                            Snapshot::empty()
                                .run(|| async_hooks::tokio::spawn(async { (request(), user()) }))
                        });
                        (here, inner.await.unwrap())
                    });
                    let thread = async_hooks::thread::spawn(|| (request(), user()));
                    let rayon = async_hooks::rayon::join(|| (request(), user()), || ());
                    (task, thread.join().unwrap(), rayon.0)
                })
            })
        });
        let (task, thread_seen, rayon_seen) = work;
        let ((task_request, task_user, task_id), inner) = task.await.unwrap();
        (
            spawner,
            (
                (task_request, task_user, task_id),
                inner,
                thread_seen,
                rayon_seen,
            ),
        )
    });
    drop(rt);
    hook.disable();
    let log = log.take();
    assert_eq!((task.0, task.1.clone()), (None, None));
    assert_eq!(inner, (None, None));
    assert_eq!(thread_seen, (None, None));
    assert_eq!(rayon_seen, (None, None));
    // Hooks still see the work as resources, triggered by the spawner.
    assert_eq!(inits(&log, "TokioTask", spawner), [task.2]);
    assert_lifecycle(&log, task.2, "TokioTask", spawner, 1);
    assert_eq!(inits(&log, "Thread", spawner).len(), 1);
    assert_eq!(inits(&log, "TokioTask", task.2).len(), 1);
}

#[test]
fn snapshot_wrap_runs_each_call_in_the_captured_context() {
    let (greet, mut count, once) = REQUEST.run(21, || {
        let mut calls = 0;
        (
            Snapshot::wrap(request),
            Snapshot::wrap_mut(move || {
                calls += 1;
                (calls, request())
            }),
            Snapshot::wrap_once(seen),
        )
    });
    assert_eq!(request(), None);
    assert_eq!(greet(), Some(21));
    REQUEST.run(22, || assert_eq!(greet(), Some(21)));
    assert_eq!(request(), None, "the caller's context is back");
    assert_eq!((count(), count()), ((1, Some(21)), (2, Some(21))));
    // Fn + Send + Sync: shared with threads; FnOnce: handed to one.
    let greet = std::sync::Arc::new(greet);
    let from_threads: Vec<_> = (0..4)
        .map(|_| {
            let greet = greet.clone();
            thread::spawn(move || greet())
        })
        .collect();
    for t in from_threads {
        assert_eq!(t.join().unwrap(), Some(21));
    }
    let once = thread::spawn(once).join().unwrap();
    assert_eq!((once.request, once.id), (Some(21), AsyncId::ROOT));
    // Wrapped inside `Snapshot::empty()`: every call sees nothing.
    let nothing = REQUEST.run(23, || Snapshot::empty().run(|| Snapshot::wrap(request)));
    REQUEST.run(24, || assert_eq!(nothing(), None));
}
