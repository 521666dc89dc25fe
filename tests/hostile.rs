//! Hostile use: hooks that enable/disable other hooks and create resources inside callbacks
//! (also from several threads at once), 10 000-deep nesting of scopes, runs and polls, and a
//! storage dropped while its values are still captured. (A hook that panics is fatal by design;
//! `tests/hooks.rs` checks that in a child process.)

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;

use async_hooks::{
    AsyncHook, AsyncId, AsyncLocalStorage, AsyncResource, BindContext, Hooks, Snapshot,
    create_hook, execution_async_id, trigger_async_id,
};
use support::futures::poll_once;
use support::{lock, serial};

type Log = Arc<Mutex<Vec<String>>>;

fn named_recorder(name: &'static str, log: &Log) -> Hooks {
    let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
    Hooks::new()
        .init(move |id, ty, _, _| lock(&l1).push(format!("{name} init {ty} {id}")))
        .before(move |id| lock(&l2).push(format!("{name} before {id}")))
        .destroy(move |id| lock(&l3).push(format!("{name} destroy {id}")))
}

#[test]
fn hooks_that_toggle_hooks_and_create_resources_inside_callbacks() {
    let _serial = serial();
    let log: Log = Log::default();
    let b: AsyncHook = create_hook(named_recorder("B", &log));
    let nested_id: Arc<OnceLock<AsyncId>> = Arc::default();

    // A: on `init` of a "Trigger", creates a resource (a nested event) and enables B; on
    // `destroy` of a "Trigger", disables B.
    let (la, lb) = (log.clone(), log.clone());
    let (b_on, b_off) = (b.clone(), b.clone());
    let (nested_set, trigger_ids) = (nested_id.clone(), Arc::new(Mutex::new(Vec::new())));
    let trigger_ids_destroy = trigger_ids.clone();
    let a = create_hook(
        Hooks::new()
            .init(move |id, ty, trigger, _| {
                lock(&la).push(format!("A init {ty} {id}"));
                if ty == "Trigger" {
                    lock(&trigger_ids).push(id);
                    // Inside init, the creator's context is current.
                    assert_eq!(execution_async_id(), trigger);
                    let nested = AsyncResource::new("Nested");
                    assert_eq!(nested.trigger_async_id(), trigger);
                    let _ = nested_set.set(nested.async_id());
                    nested
                        .run_in_async_scope(|| assert_eq!(execution_async_id(), nested.async_id()));
                    b_on.enable();
                }
            })
            .destroy(move |id| {
                lock(&lb).push(format!("A destroy {id}"));
                if lock(&trigger_ids_destroy).contains(&id) {
                    b_off.disable();
                }
            }),
    )
    .enable();

    let trigger = AsyncResource::new("Trigger");
    let tid = trigger.async_id();
    let nid = *nested_id.get().unwrap();
    // B was enabled inside the dispatch: it saw neither the Trigger's init nor the nested ones.
    assert_eq!(
        std::mem::take(&mut *lock(&log)),
        [
            format!("A init Trigger {tid}"),
            format!("A init Nested {nid}"),
            format!("A destroy {nid}"),
        ]
    );
    assert!(b.is_enabled());
    // After the outermost dispatch returned, B sees events.
    trigger.run_in_async_scope(|| {});
    let later = AsyncResource::new("Later");
    let lid = later.async_id();
    drop(later);
    // Destroying the Trigger disables B inside A's callback: B still receives that destroy.
    drop(trigger);
    assert!(!b.is_enabled());
    drop(AsyncResource::new("Unseen"));
    a.disable();
    let log = std::mem::take(&mut *lock(&log));
    assert_eq!(
        log.iter()
            .filter(|l| l.starts_with('B'))
            .collect::<Vec<_>>(),
        [
            &format!("B before {tid}"),
            &format!("B init Later {lid}"),
            &format!("B destroy {lid}"),
            &format!("B destroy {tid}"),
        ]
    );
    assert_eq!(execution_async_id(), AsyncId::ROOT);
}

#[test]
fn hooks_toggled_from_callbacks_on_several_threads_at_once() {
    let _serial = serial();
    let inits = Arc::new(AtomicUsize::new(0));
    let destroys = Arc::new(AtomicUsize::new(0));
    let (i, d) = (inits.clone(), destroys.clone());
    let counter = create_hook(
        Hooks::new()
            .init(move |_, _, _, _| {
                i.fetch_add(1, Ordering::Relaxed);
            })
            .destroy(move |_| {
                d.fetch_add(1, Ordering::Relaxed);
            }),
    );
    let victim = create_hook(Hooks::new().init(|_, _, _, _| {}).before(|_| {}));
    let flip = Arc::new(AtomicBool::new(false));
    let (v, f) = (victim.clone(), flip.clone());
    // A toggler: every init flips the victim, and sometimes creates a resource inside.
    let toggler = create_hook(Hooks::new().init(move |_, ty, _, _| {
        if f.fetch_xor(true, Ordering::Relaxed) {
            v.enable();
        } else {
            v.disable();
        }
        if ty == "Outer" {
            drop(AsyncResource::new("InsideInit"));
        }
    }))
    .enable();
    counter.enable();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for n in 0..2_000 {
                    let r = AsyncResource::new(if n % 3 == 0 { "Outer" } else { "Plain" });
                    r.run_in_async_scope(|| {
                        let mut fut = Box::pin(std::future::ready(n).bind_context());
                        assert_eq!(poll_once(fut.as_mut()), Poll::Ready(n));
                    });
                }
            });
        }
    });
    counter.disable();
    toggler.disable();
    victim.disable();
    // Per thread: 2 000 resources, 2 000 futures, and one nested resource per "Outer".
    let expected = 4 * (2_000 + 2_000 + 667);
    assert_eq!(inits.load(Ordering::Relaxed), expected);
    assert_eq!(destroys.load(Ordering::Relaxed), expected);
}

const DEPTH: usize = 10_000;

/// Runs `f` on a thread with a big stack (debug builds use far more stack per frame).
fn with_big_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

static DEEP: AsyncLocalStorage<usize> = AsyncLocalStorage::new();

/// Stack bytes used by one level of `nested_scopes` (the test's frames plus the library's
/// `run_in_async_scope`, context switch and hook dispatch frames).
fn nested_scopes(level: usize, resources: &[AsyncResource]) -> usize {
    let here = 0u8;
    let here = std::ptr::addr_of!(here) as usize;
    if level == resources.len() {
        assert_eq!(execution_async_id(), resources[level - 1].async_id());
        return here;
    }
    let bottom = resources[level].run_in_async_scope(|| {
        assert_eq!(execution_async_id(), resources[level].async_id());
        assert_eq!(DEEP.get_store().as_deref(), Some(&level));
        let bottom = nested_scopes(level + 1, resources);
        assert_eq!(execution_async_id(), resources[level].async_id());
        bottom
    });
    if level == 0 {
        (here - bottom) / resources.len()
    } else {
        bottom
    }
}

#[test]
fn ten_thousand_nested_scopes_runs_and_polls() {
    let _serial = serial();
    with_big_stack(|| {
        // Resources created inside each other's scope: a 10 000-long trigger chain.
        let resources: Vec<AsyncResource> = (0..DEPTH)
            .map(|level| DEEP.run(level, || AsyncResource::new("Deep")))
            .collect();
        let per_level = nested_scopes(0, &resources);
        eprintln!("nested run_in_async_scope: {per_level} stack bytes per level");
        // Bounded and small: 10 000 levels fit in a few MiB even unoptimised.
        assert!(per_level < 2048, "{per_level} bytes per level");
        assert_eq!(execution_async_id(), AsyncId::ROOT);
        drop(resources);

        // 10 000 nested `run`s of the same storage, then of alternating storages.
        fn nested_runs(level: usize) {
            if level == DEPTH {
                return;
            }
            DEEP.run(level, || {
                nested_runs(level + 1);
                assert_eq!(DEEP.get_store().as_deref(), Some(&level));
            });
        }
        nested_runs(0);
        assert_eq!(DEEP.get_store(), None);

        // 10 000 instrumented futures polling each other (each one's poll polls the next).
        fn chain(level: usize) -> Pin<Box<dyn Future<Output = usize> + Send>> {
            Box::pin(
                async move {
                    let id = execution_async_id();
                    let below = if level + 1 == DEPTH {
                        0
                    } else {
                        let inner = chain(level + 1);
                        let value = inner.await;
                        assert_eq!(execution_async_id(), id);
                        value + 1
                    };
                    assert_ne!(trigger_async_id(), AsyncId::NONE);
                    below
                }
                .bind_context(),
            )
        }
        let mut top = chain(0);
        assert_eq!(poll_once(top.as_mut()), Poll::Ready(DEPTH - 1));
        drop(top);
        assert_eq!(execution_async_id(), AsyncId::ROOT);
        assert_eq!(trigger_async_id(), AsyncId::NONE);
    });
}

static LIVE: AtomicI64 = AtomicI64::new(0);

struct Counted;

impl Counted {
    fn new() -> Counted {
        LIVE.fetch_add(1, Ordering::SeqCst);
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn a_storage_dropped_while_its_values_are_captured() {
    let _serial = serial();
    let other: AsyncLocalStorage<u32> = AsyncLocalStorage::new();
    let storage = Box::new(AsyncLocalStorage::<Counted>::new());
    let (resource, snapshot, fut) = other.run(7, || {
        storage.run(Counted::new(), || {
            storage.enter_with(Counted::new());
            (
                AsyncResource::new("Holder"),
                Snapshot::capture(),
                Box::pin(async { 1 }.bind_context()),
            )
        })
    });
    assert_eq!(
        LIVE.load(Ordering::SeqCst),
        1,
        "the entered store, held by three captures"
    );
    drop(storage);
    // The captures still work, and a new storage (maybe at the same address) sees nothing.
    let fresh = Box::new(AsyncLocalStorage::<Counted>::new());
    resource.run_in_async_scope(|| {
        assert_eq!(other.get_store().as_deref(), Some(&7));
        assert!(fresh.get_store().is_none());
    });
    snapshot.run(|| {
        assert_eq!(other.get_store().as_deref(), Some(&7));
        assert!(fresh.get_store().is_none());
    });
    let mut fut = fut;
    assert_eq!(poll_once(fut.as_mut()), Poll::Ready(1));
    assert_eq!(LIVE.load(Ordering::SeqCst), 1);
    drop((resource, snapshot, fut));
    assert_eq!(
        LIVE.load(Ordering::SeqCst),
        0,
        "released with the last capture"
    );
    drop(fresh);
}
