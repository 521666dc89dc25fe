//! Allocations per lifecycle over many lifecycles (100 000; 1 000 000 with `ASYNC_HOOKS_LONG=1`),
//! counted per thread by a global allocator: the counts documented in `tests/allocations.rs` hold
//! on every lifecycle, not only on average, and the bytes still allocated afterwards are exactly
//! what they were before (nothing grows), with and without a hook.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use async_hooks::{
    AsyncLocalStorage, AsyncResource, BindContext, Hooks, async_resource, create_hook,
};

/// Counts the allocations and the net bytes of the current thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static NET_BYTES: Cell<i64> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    let _ = NET_BYTES.try_with(|n| n.set(n.get() + size as i64));
}

fn note_dealloc(size: usize) {
    let _ = NET_BYTES.try_with(|n| n.set(n.get() - size as i64));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: forwarded unchanged to the system allocator, with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_dealloc(layout.size());
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes through
        // this allocator, which forwards to `System`).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_dealloc(layout.size());
        note_alloc(new_size);
        // SAFETY: forwarded unchanged to the system allocator; same contract as `realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn lifecycles() -> u64 {
    if std::env::var_os("ASYNC_HOOKS_LONG").is_some() {
        1_000_000
    } else {
        100_000
    }
}

/// Hooks are process-wide: the test with a hook must not run beside the others.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` `lifecycles()` times after a warm-up; asserts every call allocates exactly
/// `per_call` times (when given) and that the net bytes allocated do not grow. Returns the
/// allocations of the last call.
fn measure(per_call: Option<u64>, mut f: impl FnMut(u64)) -> u64 {
    f(0);
    f(1);
    let net_before = NET_BYTES.with(Cell::get);
    let mut last = 0;
    for i in 0..lifecycles() {
        let before = ALLOCATIONS.with(Cell::get);
        f(i);
        last = ALLOCATIONS.with(Cell::get) - before;
        if let Some(expected) = per_call {
            assert_eq!(last, expected, "allocations in lifecycle {i}");
        }
    }
    assert_eq!(
        NET_BYTES.with(Cell::get) - net_before,
        0,
        "bytes still allocated after {} lifecycles",
        lifecycles()
    );
    last
}

fn poll_to_ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

#[async_resource]
async fn annotated(x: u64) -> u64 {
    x + 1
}

static STORE: AsyncLocalStorage<u64> = AsyncLocalStorage::new();

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
    measure(Some(3), |i| STORE.run(i, || ()));
    measure(Some(1), |_| {
        AsyncResource::new("Counted").run_in_async_scope(|| ())
    });
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
    hook.disable();
    eprintln!(
        "with an init hook: {instrumented} allocation(s) per #[async_resource] lifecycle, \
         {resource} per AsyncResource, {stored} per run + future"
    );
}
