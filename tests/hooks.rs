//! Hook registry and dispatch: exact event sequences.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;

use async_hooks::{
    AsyncHook, AsyncId, AsyncResource, AsyncResourceOptions, BindContext, EventMask, HookCallbacks,
    Hooks, Resource, create_hook, execution_async_id, execution_async_resource, trigger_async_id,
};
use support::{Log, recorder, serial};

#[test]
fn enable_and_disable_are_idempotent_and_chain() {
    let _serial = serial();
    let log = Log::default();
    let hook = recorder("A", &log).enable();
    let same = hook.enable(); // a second enable is a no-op
    assert!(hook.is_enabled() && same.is_enabled());

    let r = AsyncResource::new("Job");
    let rid = r.async_id();
    drop(r);
    assert_eq!(
        log.take(),
        [
            format!("A init Job({rid}) trigger=1"),
            format!("A destroy {rid}")
        ]
    );

    // Disabling through the returned handle disables the same hook; twice is a no-op.
    let disabled = same.disable();
    assert!(!hook.is_enabled());
    disabled.disable();
    drop(AsyncResource::new("Job"));
    assert_eq!(log.take(), Vec::<String>::new());

    // `create_hook(..).enable()` chains, and re-enabling after disable works.
    let chained = recorder("B", &log).enable().disable().enable();
    let r = AsyncResource::new("Again");
    let rid = r.async_id();
    drop(r);
    chained.disable();
    assert_eq!(
        log.take(),
        [
            format!("B init Again({rid}) trigger=1"),
            format!("B destroy {rid}")
        ]
    );
}

#[test]
fn dispatch_follows_enable_order_and_reenable_appends() {
    let _serial = serial();
    let log = Log::default();
    let a = recorder("A", &log).enable();
    let b = recorder("B", &log).enable();
    let r = AsyncResource::new("Job");
    let rid = r.async_id();
    r.run_in_async_scope(|| {});
    assert_eq!(
        log.take(),
        [
            format!("A init Job({rid}) trigger=1"),
            format!("B init Job({rid}) trigger=1"),
            format!("A before {rid}"),
            format!("B before {rid}"),
            format!("A after {rid}"),
            format!("B after {rid}"),
        ]
    );
    a.disable();
    a.enable(); // now after B
    drop(r);
    a.disable();
    b.disable();
    assert_eq!(
        log.take(),
        [format!("B destroy {rid}"), format!("A destroy {rid}")]
    );
}

#[test]
fn hook_enabled_inside_init_sees_neither_that_event_nor_nested_ones() {
    let _serial = serial();
    let log = Log::default();
    let late = recorder("late", &log);
    let nested_id = Arc::new(Mutex::new(None));
    let (late2, log2, nested2) = (late.clone(), log.clone(), nested_id.clone());
    let enabling = create_hook(Hooks::new().init(move |id, ty, _, _| {
        log2.push(format!("first init {ty}({id})"));
        if ty == "Outer" {
            late2.enable();
            // A nested event raised inside the callback is dispatched, but not to `late`.
            let nested = AsyncResource::new("Nested");
            *nested2.lock().unwrap() = Some(nested.async_id());
            std::mem::forget(nested);
        }
    }))
    .enable();
    let outer = AsyncResource::new("Outer");
    let nested = nested_id.lock().unwrap().unwrap();
    assert_eq!(
        log.take(),
        [
            format!("first init Outer({})", outer.async_id()),
            format!("first init Nested({nested})")
        ]
    );

    // The change applied when the outermost dispatch returned.
    let next = AsyncResource::new("Next");
    enabling.disable();
    late.disable();
    assert_eq!(
        log.take(),
        [
            format!("first init Next({})", next.async_id()),
            format!("late init Next({}) trigger=1", next.async_id()),
        ]
    );
    assert!(!late.is_enabled());
}

#[test]
fn hook_disabled_inside_init_still_receives_events_being_dispatched() {
    let _serial = serial();
    let log = Log::default();
    let victim = recorder("victim", &log);
    let victim2 = victim.clone();
    let disabling = create_hook(Hooks::new().init(move |_, ty, _, _| {
        if ty == "Outer" {
            victim2.disable();
            // Nested event inside the dispatch: the victim still gets it.
            drop(AsyncResource::new("Nested"));
        }
    }))
    .enable();
    victim.enable();
    let outer = AsyncResource::new("Outer");
    let outer_id = outer.async_id();
    let lines = log.take();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("victim init Nested("), "{lines:?}");
    assert!(lines[1].starts_with("victim destroy "), "{lines:?}");
    assert_eq!(lines[2], format!("victim init Outer({outer_id}) trigger=1"));
    assert!(!victim.is_enabled());

    // After the dispatch returned, the victim gets nothing.
    drop(outer);
    disabling.disable();
    assert_eq!(log.take(), Vec::<String>::new());
}

#[test]
fn hook_enabled_inside_before_gets_after_and_destroy_only() {
    let _serial = serial();
    let log = Log::default();
    let late = recorder("late", &log);
    let late2 = late.clone();
    let enabler = create_hook(Hooks::new().before(move |_| {
        late2.enable();
    }))
    .enable();
    let r = AsyncResource::new("Job");
    let rid = r.async_id();
    r.run_in_async_scope(|| {});
    enabler.disable();
    drop(r);
    late.disable();
    assert_eq!(
        log.take(),
        [format!("late after {rid}"), format!("late destroy {rid}")]
    );
}

#[test]
fn nested_events_raised_by_callbacks_are_dispatched() {
    let _serial = serial();
    let log = Log::default();
    let log2 = log.clone();
    let hook = create_hook(Hooks::new().init(move |id, ty, trigger, _| {
        log2.push(format!(
            "init {ty}({id}) trigger={trigger} exec={}",
            execution_async_id()
        ));
        if ty == "Parent" {
            // Creating a resource inside init: its init is dispatched too, in the creator's context.
            std::mem::forget(AsyncResource::new("Child"));
        }
    }))
    .enable();
    let creator = AsyncResource::new("Creator");
    let parent = creator.run_in_async_scope(|| AsyncResource::new("Parent"));
    hook.disable();
    let c = creator.async_id();
    let lines = log.take();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0], format!("init Creator({c}) trigger=1 exec=1"));
    // The callback logs before it creates the child, so the parent's line comes first.
    assert_eq!(
        lines[1],
        format!("init Parent({}) trigger={c} exec={c}", parent.async_id())
    );
    assert!(
        lines[2].starts_with("init Child(") && lines[2].ends_with(&format!("trigger={c} exec={c}")),
        "{lines:?}"
    );
}

#[test]
fn hooks_see_events_from_other_threads() {
    let _serial = serial();
    let log = Log::default();
    let hook = recorder("A", &log).enable();
    let (rid, trigger) = std::thread::spawn(|| {
        let r = AsyncResource::new("Remote");
        r.run_in_async_scope(|| {});
        (r.async_id(), r.trigger_async_id())
    })
    .join()
    .unwrap();
    hook.disable();
    assert_eq!(trigger, AsyncId::ROOT);
    assert_eq!(
        log.take(),
        [
            format!("A init Remote({rid}) trigger=1"),
            format!("A before {rid}"),
            format!("A after {rid}"),
            format!("A destroy {rid}"),
        ]
    );
}

/// A thread's events are checked against its own word of wanted kinds: one that raised events
/// before any hook was enabled (and so wants none) gets a hook enabled later from another thread
/// at its next event, and none after it is disabled.
#[test]
fn a_thread_that_saw_no_hooks_gets_one_enabled_later_by_another_thread() {
    let _serial = serial();
    let (to_thread, from_main) = std::sync::mpsc::channel::<bool>();
    let (to_main, from_thread) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        // Events with no hook enabled: the thread joins the registry with no kind wanted.
        drop(AsyncResource::new("Before"));
        to_main.send(None).unwrap();
        while let Ok(enabled) = from_main.recv() {
            let r = AsyncResource::new(if enabled { "Seen" } else { "Unseen" });
            r.run_in_async_scope(|| {});
            let id = r.async_id();
            drop(r);
            to_main.send(Some(id)).unwrap();
        }
    });
    let log = Log::default();
    assert_eq!(from_thread.recv().unwrap(), None);
    let hook = recorder("A", &log).enable();
    to_thread.send(true).unwrap();
    let seen = from_thread.recv().unwrap().unwrap();
    hook.disable();
    to_thread.send(false).unwrap();
    from_thread.recv().unwrap().unwrap();
    drop(to_thread);
    thread.join().unwrap();
    assert_eq!(
        log.take(),
        [
            format!("A init Seen({seen}) trigger=1"),
            format!("A before {seen}"),
            format!("A after {seen}"),
            format!("A destroy {seen}"),
        ]
    );
}

/// Many short-lived threads join the registry with their first event and leave it when they
/// exit, while hooks are enabled and disabled: every event raised while a hook was enabled
/// throughout reaches it, exactly once.
#[test]
fn threads_joining_and_leaving_while_hooks_toggle_lose_no_event() {
    let _serial = serial();
    let inits = Arc::new(AtomicUsize::new(0));
    let counted = inits.clone();
    let steady = create_hook(Hooks::new().init(move |_, ty, _, _| {
        if ty == "Churn" {
            counted.fetch_add(1, Ordering::Relaxed);
        }
    }))
    .enable();
    let toggled = create_hook(Hooks::new().before(|_| {}).promise_resolve(|_| {}));
    let stop = Arc::new(AtomicBool::new(false));
    let toggler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                toggled.enable();
                toggled.disable();
            }
        })
    };
    const THREADS: usize = 200;
    const EACH: usize = 10;
    for _ in 0..THREADS / 10 {
        let batch: Vec<_> = (0..10)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..EACH {
                        AsyncResource::new("Churn").run_in_async_scope(|| {});
                    }
                })
            })
            .collect();
        for thread in batch {
            thread.join().unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    toggler.join().unwrap();
    steady.disable();
    assert_eq!(inits.load(Ordering::Relaxed), THREADS * EACH);
}

#[test]
fn execution_async_resource_is_the_handle_given_to_init() {
    let _serial = serial();
    let seen: Arc<Mutex<Vec<(AsyncId, Resource)>>> = Arc::default();
    let checks = Arc::new(AtomicUsize::new(0));
    let (seen_init, seen_before, seen_after) = (seen.clone(), seen.clone(), seen.clone());
    let (checks_before, checks_after) = (checks.clone(), checks.clone());
    let find = |seen: &Arc<Mutex<Vec<(AsyncId, Resource)>>>, id: AsyncId| {
        seen.lock()
            .unwrap()
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, r)| r.clone())
    };
    let hook = create_hook(
        Hooks::new()
            .init(move |id, _, _, resource| seen_init.lock().unwrap().push((id, resource.clone())))
            .before(move |id| {
                assert_eq!(Some(execution_async_resource()), find(&seen_before, id));
                checks_before.fetch_add(1, Ordering::Relaxed);
            })
            .after(move |id| {
                assert_eq!(Some(execution_async_resource()), find(&seen_after, id));
                checks_after.fetch_add(1, Ordering::Relaxed);
            }),
    )
    .enable();

    let r = AsyncResource::new("Job");
    let inside = r.run_in_async_scope(execution_async_resource);
    assert_eq!(Some(inside.clone()), find(&seen, r.async_id()));
    assert_eq!(inside, r.resource());
    assert_eq!(inside.async_id(), r.async_id());

    // The same for an instrumented future, across two polls.
    let mut polls = 0;
    let fut = std::future::poll_fn(move |cx| {
        polls += 1;
        let current = execution_async_resource();
        if polls < 2 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(current)
    })
    .bind_context();
    let fid = fut.async_id();
    let from_poll = futures::executor::block_on(fut);
    hook.disable();
    assert_eq!(Some(from_poll), find(&seen, fid));
    assert_eq!(checks.load(Ordering::Relaxed), 2 + 4);
}

#[test]
fn typed_slots_carry_state_along_a_chain_of_resources() {
    let _serial = serial();
    // Node's executionAsyncResource()[sym] pattern: copy state from the creator to each new resource.
    #[derive(Debug, PartialEq)]
    struct RequestState(u32);
    let hook = create_hook(Hooks::new().init(|_, _, _, resource| {
        if let Some(state) = execution_async_resource().get::<RequestState>() {
            resource.insert(RequestState(state.0));
        }
    }))
    .enable();
    let request = AsyncResource::new("Request");
    request.resource().insert(RequestState(7));
    let seen = request.run_in_async_scope(|| {
        let a = AsyncResource::new("A");
        a.run_in_async_scope(|| {
            let b = AsyncResource::new("B");
            b.run_in_async_scope(|| execution_async_resource().get::<RequestState>())
        })
    });
    let unrelated = AsyncResource::new("Unrelated");
    hook.disable();
    assert_eq!(seen.as_deref(), Some(&RequestState(7)));
    assert_eq!(unrelated.resource().get::<RequestState>(), None);
    assert_eq!(
        request.resource().remove::<RequestState>().as_deref(),
        Some(&RequestState(7))
    );
    assert_eq!(request.resource().get::<RequestState>(), None);
}

#[test]
fn thousand_deep_nested_scopes_balance_and_restore() {
    let _serial = serial();
    let befores = Arc::new(AtomicUsize::new(0));
    let afters = Arc::new(AtomicUsize::new(0));
    let (b2, a2) = (befores.clone(), afters.clone());
    let hook = create_hook(
        Hooks::new()
            .before(move |_| {
                b2.fetch_add(1, Ordering::Relaxed);
            })
            .after(move |_| {
                a2.fetch_add(1, Ordering::Relaxed);
            }),
    )
    .enable();
    fn nest(depth: usize, parent: AsyncId) -> usize {
        if depth == 0 {
            return 0;
        }
        let r = AsyncResource::new("Level");
        assert_eq!(r.trigger_async_id(), parent);
        r.run_in_async_scope(|| {
            assert_eq!(execution_async_id(), r.async_id());
            assert_eq!(trigger_async_id(), parent);
            1 + nest(depth - 1, r.async_id())
        })
    }
    // A thread with a known stack size keeps the test independent of the harness's default.
    let depth = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(|| nest(1000, AsyncId::ROOT))
        .unwrap()
        .join()
        .unwrap();
    hook.disable();
    assert_eq!(depth, 1000);
    assert_eq!(befores.load(Ordering::Relaxed), 1000);
    assert_eq!(afters.load(Ordering::Relaxed), 1000);
    assert_eq!(execution_async_id(), AsyncId::ROOT);
}

#[test]
fn panic_inside_run_in_async_scope_fires_after_and_restores() {
    let _serial = serial();
    let log = Log::default();
    let hook = recorder("A", &log).enable();
    let r = AsyncResource::new("Job");
    let rid = r.async_id();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        r.run_in_async_scope(|| {
            assert_eq!(execution_async_id(), rid);
            panic!("boom");
        })
    }));
    assert!(result.is_err());
    assert_eq!(execution_async_id(), AsyncId::ROOT);
    assert_eq!(trigger_async_id(), AsyncId::NONE);
    assert_eq!(execution_async_resource().type_name(), "ROOT");
    // The thread still works: a new scope nests and restores normally.
    r.run_in_async_scope(|| assert_eq!(execution_async_id(), rid));
    hook.disable();
    assert_eq!(
        log.take(),
        [
            format!("A init Job({rid}) trigger=1"),
            format!("A before {rid}"),
            format!("A after {rid}"),
            format!("A before {rid}"),
            format!("A after {rid}"),
        ]
    );
}

#[test]
fn async_resource_bind_runs_each_call_in_scope_and_destroys_on_drop() {
    let _serial = serial();
    let log = Log::default();
    let hook = recorder("A", &log).enable();
    let r = AsyncResource::new("Callback");
    let rid = r.async_id();
    let mut calls = 0;
    let mut bound = r.bind(|| {
        calls += 1;
        (execution_async_id(), trigger_async_id())
    });
    assert_eq!(bound(), (rid, AsyncId::ROOT));
    assert_eq!(bound(), (rid, AsyncId::ROOT));
    drop(bound);
    assert_eq!(calls, 2);
    assert_eq!(execution_async_id(), AsyncId::ROOT);

    let emitted = AsyncResource::new("Each");
    let eid = emitted.async_id();
    emitted.emit_destroy().unwrap();
    let doubled: Vec<u64> = [1, 2]
        .into_iter()
        .map(emitted.bind1(|x: u64| {
            assert_eq!(execution_async_id(), eid);
            x * 2
        }))
        .collect();
    assert_eq!(doubled, [2, 4]);
    hook.disable();
    assert_eq!(
        log.take(),
        [
            format!("A init Callback({rid}) trigger=1"),
            format!("A before {rid}"),
            format!("A after {rid}"),
            format!("A before {rid}"),
            format!("A after {rid}"),
            format!("A destroy {rid}"),
            format!("A init Each({eid}) trigger=1"),
            format!("A destroy {eid}"),
            format!("A before {eid}"),
            format!("A after {eid}"),
            format!("A before {eid}"),
            format!("A after {eid}"),
        ]
    );
}

#[test]
fn destroy_on_drop_once_and_manual_destroy() {
    let _serial = serial();
    let log = Log::default();
    let hook = create_hook(Hooks::new().destroy({
        let log = log.clone();
        move |id| log.push(format!("destroy {id}"))
    }))
    .enable();

    let dropped = AsyncResource::new("Dropped");
    let dropped_id = dropped.async_id();
    drop(dropped);

    let emitted = AsyncResource::new("Emitted");
    let emitted_id = emitted.async_id();
    emitted.emit_destroy().unwrap();
    let again = emitted.emit_destroy().unwrap_err();
    assert_eq!(again.code(), "ERR_INVALID_STATE");
    assert!(again.to_string().contains("at most once"), "{again}");
    drop(emitted); // already destroyed: nothing more

    let manual = AsyncResource::with_options(
        "Manual",
        AsyncResourceOptions {
            require_manual_destroy: true,
            ..Default::default()
        },
    )
    .unwrap();
    drop(manual); // no destroy

    let manual = AsyncResource::with_options(
        "Manual",
        AsyncResourceOptions {
            require_manual_destroy: true,
            ..Default::default()
        },
    )
    .unwrap();
    let manual_id = manual.async_id();
    manual.emit_destroy().unwrap();
    drop(manual);
    hook.disable();
    assert_eq!(
        log.take(),
        [
            format!("destroy {dropped_id}"),
            format!("destroy {emitted_id}"),
            format!("destroy {manual_id}")
        ]
    );
}

#[test]
fn empty_type_name_is_an_error_only_while_an_init_hook_is_enabled() {
    let _serial = serial();
    assert!(AsyncResource::with_options("", AsyncResourceOptions::default()).is_ok());
    let destroy_only = create_hook(Hooks::new().destroy(|_| {})).enable();
    assert!(AsyncResource::with_options("", AsyncResourceOptions::default()).is_ok());
    destroy_only.disable();

    let hook = create_hook(Hooks::new().init(|_, _, _, _| {})).enable();
    let err = AsyncResource::with_options("", AsyncResourceOptions::default()).unwrap_err();
    let panicked = std::panic::catch_unwind(|| AsyncResource::new("")).unwrap_err();
    hook.disable();
    // The thread's word still has `init` until its next dispatch: the check is exact anyway.
    assert!(AsyncResource::with_options("", AsyncResourceOptions::default()).is_ok());
    assert_eq!(err.code(), "ERR_ASYNC_TYPE");
    assert!(err.to_string().contains("non-empty type name"), "{err}");
    let message = panicked.downcast_ref::<String>().unwrap();
    assert!(message.contains("ERR_ASYNC_TYPE"), "{message}");
}

#[test]
fn trigger_ids_default_to_the_creator_and_can_be_explicit() {
    let _serial = serial();
    let log = Log::default();
    let hook = recorder("A", &log).enable();
    let parent = AsyncResource::new("Parent");
    let child = parent.run_in_async_scope(|| AsyncResource::new("Child"));
    let explicit = AsyncResource::with_options(
        "Explicit",
        AsyncResourceOptions {
            trigger_async_id: Some(child.async_id()),
            ..Default::default()
        },
    )
    .unwrap();
    hook.disable();
    assert_eq!(parent.trigger_async_id(), AsyncId::ROOT);
    assert_eq!(child.trigger_async_id(), parent.async_id());
    assert_eq!(explicit.trigger_async_id(), child.async_id());
    assert_eq!(explicit.resource().trigger_async_id(), child.async_id());
    let lines = log.take();
    assert_eq!(
        lines,
        [
            format!("A init Parent({}) trigger=1", parent.async_id()),
            format!("A before {}", parent.async_id()),
            format!(
                "A init Child({}) trigger={}",
                child.async_id(),
                parent.async_id()
            ),
            format!("A after {}", parent.async_id()),
            format!(
                "A init Explicit({}) trigger={}",
                explicit.async_id(),
                child.async_id()
            ),
        ]
    );

    let never = AsyncId::from_u64(u64::MAX - 1);
    let err = AsyncResource::with_options(
        "Bad",
        AsyncResourceOptions {
            trigger_async_id: Some(never),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.code(), "ERR_INVALID_ASYNC_ID");
}

#[test]
fn instrumented_future_lifecycle_events() {
    let _serial = serial();
    let log = Log::default();
    let hook = recorder("A", &log).enable();
    let mut polls = 0;
    let pending_twice = std::future::poll_fn(move |cx| {
        polls += 1;
        if polls <= 2 {
            cx.waker().wake_by_ref();
            Poll::Pending
        } else {
            Poll::Ready(polls)
        }
    });
    let fut = pending_twice.bind_context_as("Twice");
    let fid = fut.async_id();
    assert_eq!(futures::executor::block_on(fut), 3);

    let never_polled = async {}.bind_context();
    let never_id = never_polled.async_id();
    drop(never_polled);

    let mut pending = Box::pin(std::future::pending::<()>().bind_context());
    let pending_id = pending.async_id();
    let waker = futures::task::noop_waker();
    assert!(
        pending
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
            .is_pending()
    );
    drop(pending);
    hook.disable();
    assert_eq!(
        log.take(),
        [
            format!("A init Twice({fid}) trigger=1"),
            format!("A before {fid}"),
            format!("A after {fid}"),
            format!("A before {fid}"),
            format!("A after {fid}"),
            format!("A before {fid}"),
            format!("A resolve {fid}"),
            format!("A after {fid}"),
            format!("A destroy {fid}"),
            format!("A init bound-anonymous-fn({never_id}) trigger=1"),
            format!("A destroy {never_id}"),
            format!("A init bound-anonymous-fn({pending_id}) trigger=1"),
            format!("A before {pending_id}"),
            format!("A after {pending_id}"),
            format!("A destroy {pending_id}"),
        ]
    );
}

#[test]
fn trait_callbacks_with_an_event_mask_only_get_their_events() {
    let _serial = serial();
    struct DestroyCounter(Arc<AtomicUsize>, Arc<AtomicBool>);
    impl HookCallbacks for DestroyCounter {
        fn before(&self, _: AsyncId) {
            self.1.store(true, Ordering::Relaxed);
        }
        fn destroy(&self, _: AsyncId) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn events(&self) -> EventMask {
            EventMask::DESTROY
        }
    }
    let count = Arc::new(AtomicUsize::new(0));
    let before_called = Arc::new(AtomicBool::new(false));
    let hook = create_hook(DestroyCounter(count.clone(), before_called.clone())).enable();
    let r = AsyncResource::new("Job");
    r.run_in_async_scope(|| {});
    drop(r);
    hook.disable();
    assert_eq!(count.load(Ordering::Relaxed), 1);
    assert!(
        !before_called.load(Ordering::Relaxed),
        "before is outside the mask"
    );
}

#[test]
fn dropping_the_handle_of_an_enabled_hook_keeps_it_registered() {
    let _serial = serial();
    let count = Arc::new(AtomicUsize::new(0));
    static HANDLE: OnceLock<AsyncHook> = OnceLock::new();
    {
        let c = count.clone();
        let hook = create_hook(Hooks::new().init(move |_, _, _, _| {
            c.fetch_add(1, Ordering::Relaxed);
        }))
        .enable();
        HANDLE.set(hook.clone()).unwrap();
        drop(hook);
    }
    drop(AsyncResource::new("Job"));
    HANDLE.get().unwrap().disable();
    drop(AsyncResource::new("Job"));
    assert_eq!(count.load(Ordering::Relaxed), 1);
}

/// Runs the test `name` of this binary alone in a child process, with `switch` set so that it
/// does its work.
fn run_child(name: &str, switch: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(switch, "1")
        .output()
        .unwrap()
}

/// The child half of `a_panicking_hook_is_fatal`: does nothing unless asked to.
#[test]
fn fatal_hook_child() {
    if std::env::var_os("ASYNC_HOOKS_FATAL_CHILD").is_none() {
        return;
    }
    create_hook(Hooks::new().init(|_, ty, _, _| panic!("hook exploded on {ty}"))).enable();
    let _r = AsyncResource::new("Doomed");
    unreachable!("a panicking hook must end the process");
}

#[test]
fn a_panicking_hook_is_fatal() {
    let output = run_child("fatal_hook_child", "ASYNC_HOOKS_FATAL_CHILD");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.starts_with("Error: hook exploded on Doomed\n"),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains("`init` hook callback for async id"),
        "stderr: {stderr}"
    );
}

/// Regression (RELIABILITY.md finding 2): `destroy` fires once even when dropping the cancelled
/// future's state panics.
#[test]
fn destroy_fires_when_the_inner_drop_panics() {
    let _serial = serial();
    struct PanicsOnDrop;
    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            panic!("store dropped");
        }
    }
    let log = Log::default();
    let hook = recorder("A", &log).enable();
    let held = PanicsOnDrop;
    let mut fut = Box::pin(
        async move {
            std::future::pending::<()>().await;
            drop(held);
        }
        .bind_context(),
    );
    let fid = fut.async_id();
    let waker = futures::task::noop_waker();
    assert!(
        fut.as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
            .is_pending()
    );
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(fut)));
    hook.disable();
    assert!(result.is_err(), "the panic propagates");
    assert_eq!(execution_async_id(), AsyncId::ROOT);
    assert_eq!(
        log.take(),
        [
            format!("A init bound-anonymous-fn({fid}) trigger=1"),
            format!("A before {fid}"),
            format!("A after {fid}"),
            format!("A destroy {fid}"),
        ]
    );
}

#[test]
fn init_makes_the_handle_only_when_a_callback_keeps_or_uses_the_resource() {
    let _serial = serial();
    let kept: Arc<Mutex<Vec<Resource>>> = Arc::default();
    let kept_in_init = kept.clone();
    let hook = create_hook(Hooks::new().init(move |id, ty, trigger, resource| {
        // Reading the ids and the type needs no handle.
        assert_eq!(
            (resource.async_id(), resource.trigger_async_id()),
            (id, trigger)
        );
        assert_eq!(resource.type_name(), ty);
        if ty == "Kept" {
            // Kept from another thread while `init` runs: the resource keeps that handle.
            std::thread::scope(|s| {
                s.spawn(|| {
                    resource.insert(7u32);
                    kept_in_init.lock().unwrap().push(resource.clone());
                });
            });
            assert_eq!(resource, &kept_in_init.lock().unwrap()[0]);
        }
    }))
    .enable();
    let lazy = AsyncResource::new("Lazy");
    let kept_resource = AsyncResource::new("Kept");
    hook.disable();
    let from_init = kept.lock().unwrap().pop().expect("kept in init");
    assert_eq!(from_init, kept_resource.resource());
    assert_eq!(
        kept_resource
            .run_in_async_scope(|| execution_async_resource().get::<u32>())
            .as_deref(),
        Some(&7)
    );
    assert_eq!(from_init.async_id(), kept_resource.async_id());
    // The other one's handle, made on first use afterwards, is still one handle.
    assert_eq!(
        lazy.resource(),
        lazy.run_in_async_scope(execution_async_resource)
    );
    assert_eq!(lazy.resource().type_name(), "Lazy");
}

#[test]
fn a_threads_view_of_the_hooks_is_released_when_it_exits_and_teardown_events_are_skipped() {
    let _serial = serial();
    // Dropped with the hook's callbacks: counts the references the callbacks keep alive.
    let witness = Arc::new(());
    let seen = Arc::new(AtomicUsize::new(0));
    let (w, s) = (witness.clone(), seen.clone());
    let hook = create_hook(Hooks::new().destroy(move |_| {
        let _keep = &w;
        s.fetch_add(1, Ordering::Relaxed);
    }))
    .enable();
    // A resource dropped while the thread's locals are torn down, after its view of the hooks
    // may already be gone: no crash, and at most one event.
    use std::cell::RefCell;
    struct DropLate(#[allow(dead_code)] Option<AsyncResource>);
    thread_local! {
        static LATE: RefCell<DropLate> = const { RefCell::new(DropLate(None)) };
    }
    std::thread::spawn(|| {
        // The thread caches the table (with the hook) on its first dispatch.
        drop(AsyncResource::new("Job"));
        LATE.with(|late| late.borrow_mut().0 = Some(AsyncResource::new("Late")));
    })
    .join()
    .unwrap();
    let after_thread = seen.load(Ordering::Relaxed);
    assert!(
        (1..=2).contains(&after_thread),
        "destroy events: {after_thread}"
    );
    hook.disable();
    // This thread's cache is refreshed by its next dispatch; the exited thread's was released.
    drop(AsyncResource::new("Refresh"));
    drop(hook);
    assert_eq!(
        Arc::strong_count(&witness),
        1,
        "the hook's callbacks are still referenced"
    );
}

/// The child half of `a_panic_after_a_nested_event_is_reported_for_the_outer_event`.
#[test]
fn fatal_after_nested_child() {
    if std::env::var_os("ASYNC_HOOKS_FATAL_NESTED_CHILD").is_none() {
        return;
    }
    create_hook(Hooks::new().init(|_, _, _, _| {}).before(|id| {
        // A nested `init` dispatch runs and returns inside this callback...
        drop(AsyncResource::new("Nested"));
        // ...and the panic after it belongs to this `before`.
        panic!("before exploded for {id}");
    }))
    .enable();
    let r = AsyncResource::new("Outer");
    r.run_in_async_scope(|| {});
    unreachable!("a panicking hook must end the process");
}

#[test]
fn a_panic_after_a_nested_event_is_reported_for_the_outer_event() {
    let output = run_child("fatal_after_nested_child", "ASYNC_HOOKS_FATAL_NESTED_CHILD");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    let id = stderr
        .strip_prefix("Error: before exploded for ")
        .and_then(|rest| rest.split('\n').next())
        .unwrap_or_else(|| panic!("stderr: {stderr}"));
    assert!(
        stderr.contains(&format!("`before` hook callback for async id {id}\n")),
        "stderr: {stderr}"
    );
}
