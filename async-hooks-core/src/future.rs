//! Instrumented futures: a future that is an async resource.
//!
//! # Safety
//!
//! [`Instrumented`] projects its pin by hand: of [`Running`]'s fields only `future` is
//! structurally pinned, polled and dropped in place and never moved; it is dropped exactly once,
//! which the identity's finished flag records, and the identity and frame are dropped by hand
//! once after it (`Ending`).

use std::fmt;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::context::{ThreadState, thread_state, with_state};
use crate::execution;
use crate::hooks::{self, Kind};
use crate::resource::{Identity, ResourceType};
use crate::storage::CapturedFrame;

/// The type of resources made by `bind!` and [`BindContext::bind_context`] without a type name.
#[doc(hidden)]
pub static BOUND_TYPE: ResourceType = ResourceType::new("bound-anonymous-fn");

pin_project_lite::pin_project! {
    /// A future that is an async resource: what `#[async_resource]` fns return, and what
    /// `bind!(async { … })` and [`BindContext::bind_context`] make.
    ///
    /// The resource is created with the wrapper (id allocated, trigger = the creator's execution,
    /// storage captured, `init` fired). Every poll runs in the resource's context between
    /// `before` and `after`; the poll that returns `Ready` fires `promise_resolve`; dropping the
    /// wrapper — completed, cancelled mid-flight or never polled — fires `destroy` once. The
    /// inner future is dropped inside the resource's context, so its destructors see the right
    /// store.
    ///
    /// An `enter_with` inside a poll stays for the later polls of the same future, as Node keeps
    /// it across `await`.
    ///
    /// ```
    /// use async_hooks::{BindContext, Hooks, create_hook, execution_async_id};
    /// use std::sync::{Arc, Mutex};
    ///
    /// let log = Arc::new(Mutex::new(Vec::new()));
    /// let (l1, l2) = (log.clone(), log.clone());
    /// let hook = create_hook(
    ///     Hooks::new()
    ///         .init(move |id, ty, _, _| l1.lock().unwrap().push(format!("init {ty}({id})")))
    ///         .destroy(move |id| l2.lock().unwrap().push(format!("destroy {id}"))),
    /// )
    /// .enable();
    /// let fut = async { execution_async_id() }.bind_context_as("Task"); // init fires here
    /// let id = fut.async_id();
    /// assert_eq!(futures::executor::block_on(fut), id); // polled in its own context; dropped
    /// hook.disable();
    /// assert_eq!(*log.lock().unwrap(), [format!("init Task({id})"), format!("destroy {id}")]);
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct Instrumented<F> {
        // The resource and its future in one field, whose own `Drop` ends them: a plain
        // `#[inline]` drop. pin-project-lite's `PinnedDrop` wraps the body in a function that
        // takes no attributes, which LLVM left out of line in some builds (a call more per
        // lifecycle).
        #[pin]
        running: Running<F>,
    }
}

/// An instrumented future's resource and the future itself.
///
/// Only `future` is structurally pinned: it is polled and dropped in place, never moved. The
/// identity and the frame are never pinned (a poll may replace the frame).
struct Running<F> {
    // Dropped by hand, inside the resource's context: when the poll that returns `Ready` ends,
    // or when the wrapper is dropped. `identity`'s finished flag says which, so no `Option` tag
    // is needed.
    future: ManuallyDrop<F>,
    // Dropped by hand too, by `Ending`, after `destroy`. Had they drop glue of their own, each
    // could unwind into the other's, and the landing pads made the wrapper's drop too large for
    // LLVM to inline.
    identity: ManuallyDrop<Identity>,
    // The resource's storage frame; during a poll the thread points at it, or at its one entry
    // copied to the poll's stack (and an `enter_with` inside replaces it, for the rest of the
    // future's life).
    frame: ManuallyDrop<CapturedFrame>,
}

impl<F> Drop for Running<F> {
    // Always inlined, with no closure inside (see `thread_state`): the whole lifecycle of a
    // future that completes inlines into its caller, as a plain future's does.
    #[inline(always)]
    fn drop(&mut self) {
        // `destroy` and the release come after the future is dropped, and from a guard, so that
        // they happen exactly once even if that drop panics.
        let ending = Ending(self);
        let running = &mut *ending.0;
        if !running.identity.is_finished() {
            running.identity.set_finished();
            let future = &mut running.future;
            execution::drop_inside(
                thread_state(),
                &running.identity,
                &mut running.frame,
                || {
                    // SAFETY: the future was not dropped yet (not finished) and is never touched
                    // again (now finished); dropping a pinned value in place, before its memory
                    // goes, keeps the pinning guarantee.
                    #[allow(unsafe_code)]
                    unsafe {
                        ManuallyDrop::drop(future)
                    };
                },
            );
        }
    }
}

/// Ends a resource whose future is gone, when dropped (also while unwinding): emits `destroy`,
/// then releases the identity and the frame.
struct Ending<'a, F>(&'a mut Running<F>);

impl<F> Drop for Ending<'_, F> {
    #[inline(always)]
    fn drop(&mut self) {
        let running = &mut *self.0;
        hooks::emit_destroy(running.identity.async_id);
        if running.identity.owns_handle() {
            return release_with_handle(&mut running.identity, &mut running.frame);
        }
        // SAFETY: `Ending` runs once, from `Running`'s drop, and nothing touches the fields
        // after. The identity owns no handle, so skipping its drop skips nothing; the frame's
        // drop is the last thing here, so its unwinding has nothing left to clean up.
        #[allow(unsafe_code)]
        unsafe {
            ManuallyDrop::drop(&mut running.frame)
        };
    }
}

/// [`Ending`]'s release of an identity that owns a handle (made for `execution_async_resource`
/// or an `init` hook): out of line, with ordinary drops.
#[cold]
#[inline(never)]
fn release_with_handle(
    identity: &mut ManuallyDrop<Identity>,
    frame: &mut ManuallyDrop<CapturedFrame>,
) {
    // SAFETY: as in `Ending`: called once from it, the fields are never touched after.
    #[allow(unsafe_code)]
    let (identity, frame) = unsafe { (ManuallyDrop::take(identity), ManuallyDrop::take(frame)) };
    drop(identity);
    drop(frame);
}

impl<F> Instrumented<F> {
    /// Makes `future` a resource of type `ty`. Used by the macros, which declare `ty` as a static.
    #[doc(hidden)]
    #[inline(always)]
    pub fn new(ty: &'static ResourceType, future: F) -> Instrumented<F> {
        Instrumented::create(thread_state(), ty, future)
    }

    #[inline(always)]
    fn create(state: &ThreadState, ty: &'static ResourceType, future: F) -> Instrumented<F> {
        let frame = state.capture_resource_frame();
        Instrumented {
            running: Running {
                future: ManuallyDrop::new(future),
                identity: ManuallyDrop::new(Identity::create(state, ty, None)),
                frame: ManuallyDrop::new(frame),
            },
        }
    }

    /// This resource's async id.
    ///
    /// ```
    /// use async_hooks::{AsyncId, BindContext};
    ///
    /// let fut = async { 1 }.bind_context();
    /// assert!(fut.async_id() > AsyncId::ROOT);
    /// ```
    pub fn async_id(&self) -> crate::AsyncId {
        self.running.identity.async_id
    }

    /// The id of the execution that created this resource.
    ///
    /// ```
    /// use async_hooks::{AsyncId, BindContext};
    ///
    /// assert_eq!(async { 1 }.bind_context().trigger_async_id(), AsyncId::ROOT);
    /// ```
    pub fn trigger_async_id(&self) -> crate::AsyncId {
        self.running.identity.trigger_id
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    // Always inlined, with no closure inside (see `thread_state`), like the drop.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: of `Running`'s fields only `future` is structurally pinned, and it is only
        // ever polled and dropped in place, through the pin made below (see `Running`).
        #[allow(unsafe_code)]
        let running = unsafe { self.project().running.get_unchecked_mut() };
        if running.identity.is_finished() {
            polled_after_ready();
        }
        let future = &mut running.future;
        let identity = &running.identity;
        execution::poll(thread_state(), identity, &mut running.frame, || {
            // SAFETY: pinned in place (see above); `ManuallyDrop` is `repr(transparent)`.
            #[allow(unsafe_code)]
            let poll = unsafe { Pin::new_unchecked(&mut **future) }.poll(cx);
            if poll.is_ready() {
                hooks::emit_current(Kind::PromiseResolve);
                // Drop the finished state machine now, inside the resource's context. Marked
                // first, so that a panicking destructor is not run twice.
                identity.set_finished();
                // SAFETY: not dropped before (it was just polled), never touched again (now
                // finished); dropped in place, as pinning requires.
                #[allow(unsafe_code)]
                unsafe {
                    ManuallyDrop::drop(future)
                };
            }
            poll
        })
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn polled_after_ready() -> ! {
    panic!("`Instrumented` future polled after it returned `Poll::Ready`")
}

impl<F> fmt::Debug for Instrumented<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instrumented")
            .field("type", &self.running.identity.ty().name())
            .field("async_id", &self.running.identity.async_id)
            .field("trigger_async_id", &self.running.identity.trigger_id)
            .finish_non_exhaustive()
    }
}

/// Binds any future to the context it is bound in: [`bind_context`](BindContext::bind_context)
/// makes it an [`Instrumented`] resource created now, so the storage and ids current here follow
/// it to whatever thread or task polls it.
///
/// ```
/// use async_hooks::{AsyncLocalStorage, BindContext};
///
/// static REQUEST: AsyncLocalStorage<u32> = AsyncLocalStorage::new();
///
/// let fut = REQUEST.run(42, || async { *REQUEST.get_store().unwrap() }.bind_context());
/// // Polled outside the `run`, it still sees request 42.
/// assert_eq!(futures::executor::block_on(fut), 42);
/// ```
pub trait BindContext: Future + Sized {
    /// Makes this future a resource of type `bound-anonymous-fn`, bound to the current context.
    ///
    /// ```
    /// use async_hooks::{BindContext, execution_async_id};
    ///
    /// let fut = async { execution_async_id() }.bind_context();
    /// let id = fut.async_id();
    /// assert_eq!(futures::executor::block_on(fut), id);
    /// ```
    fn bind_context(self) -> Instrumented<Self> {
        Instrumented::new(&BOUND_TYPE, self)
    }

    /// Like [`bind_context`](BindContext::bind_context) with a resource type name of your own.
    ///
    /// # Panics
    ///
    /// If `type_name` is empty while an `init` hook is enabled (`ERR_ASYNC_TYPE`).
    ///
    /// ```
    /// use async_hooks::{BindContext, execution_async_resource};
    ///
    /// let fut = async { execution_async_resource().type_name() }.bind_context_as("Fetch");
    /// assert_eq!(futures::executor::block_on(fut), "Fetch");
    /// ```
    fn bind_context_as(self, type_name: &str) -> Instrumented<Self> {
        with_state(|state| {
            if type_name.is_empty() && hooks::would_reach_a_hook(Kind::Init) {
                panic!(
                    "{}",
                    crate::Error::new(
                        crate::ErrorKind::AsyncType,
                        "bind_context_as(\"\"): the resource type name is empty; pass a non-empty name such as \"Fetch\"",
                    )
                );
            }
            Instrumented::create(state, ResourceType::intern(type_name), self)
        })
    }
}

impl<F: Future> BindContext for F {}

#[cfg(test)]
mod tests {
    //! The instrumented future's `unsafe` parts under Miri: the thread's pointer to the running
    //! resource (nested, across panics), the identity's tagged word (a handle made lazily while
    //! the future runs, then released with it) and the inner future's in-place drop (on `Ready`,
    //! on drop while pending, never twice when its destructor panics).
    use super::*;
    use crate::context::{execution_async_id, execution_async_resource, trigger_async_id};
    use crate::id::AsyncId;
    use crate::resource::AsyncResource;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Waker;

    fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
        fut.poll(&mut Context::from_waker(Waker::noop()))
    }

    /// Pending on its first poll, ready on the second.
    struct YieldOnce(bool);

    impl Future for YieldOnce {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    struct CountDrop(Arc<AtomicUsize>, bool);

    impl Drop for CountDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
            if self.1 {
                panic!("inner destructor panics");
            }
        }
    }

    #[test]
    fn nested_polls_point_at_each_resource_and_restore() {
        let outer = async {
            let outer_id = execution_async_id();
            let handle = execution_async_resource();
            let inner = async { (execution_async_id(), trigger_async_id()) }.bind_context();
            let inner_id = inner.async_id();
            let (seen, trigger) = inner.await;
            assert_eq!((seen, trigger), (inner_id, outer_id));
            assert_eq!(execution_async_id(), outer_id);
            // The lazily made handle is kept: the same one on a later poll.
            YieldOnce(false).await;
            assert_eq!(execution_async_resource(), handle);
            assert_eq!(handle.type_name(), "Outer");
            outer_id
        }
        .bind_context_as("Outer");
        let id = outer.async_id();
        let mut outer = std::pin::pin!(outer);
        assert!(poll_once(outer.as_mut()).is_pending());
        assert_eq!(execution_async_id(), AsyncId::ROOT);
        assert_eq!(poll_once(outer.as_mut()), Poll::Ready(id));
        assert_eq!(execution_async_id(), AsyncId::ROOT);
        assert_eq!(execution_async_resource().type_name(), "ROOT");
    }

    #[test]
    fn inner_future_is_dropped_once_in_its_context() {
        let drops = Arc::new(AtomicUsize::new(0));
        // Dropped on `Ready`, inside the poll.
        let guard = CountDrop(drops.clone(), false);
        let fut = async move {
            let _guard = guard;
        }
        .bind_context();
        let mut fut = std::pin::pin!(fut);
        assert!(poll_once(fut.as_mut()).is_ready());
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        // Dropped while pending, with a handle made inside (released with the identity).
        let guard = CountDrop(drops.clone(), false);
        let mut pending = Box::pin(
            async move {
                let _guard = guard;
                let _ = execution_async_resource();
                YieldOnce(false).await;
            }
            .bind_context(),
        );
        assert!(poll_once(pending.as_mut()).is_pending());
        drop(pending);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        // Never polled.
        drop(CountDrop(drops.clone(), false).into_future_never_polled());
        assert_eq!(drops.load(Ordering::SeqCst), 3);
    }

    impl CountDrop {
        fn into_future_never_polled(self) -> Instrumented<impl Future<Output = ()>> {
            async move {
                let _guard = self;
            }
            .bind_context()
        }
    }

    #[test]
    fn panics_in_poll_and_in_the_inner_destructor_restore_the_context() {
        let drops = Arc::new(AtomicUsize::new(0));
        let mut fut = Box::pin(async { panic!("inside the poll") }.bind_context());
        assert!(catch_unwind(AssertUnwindSafe(|| poll_once(fut.as_mut()))).is_err());
        assert_eq!(execution_async_id(), AsyncId::ROOT);
        drop(fut);
        // A destructor that panics when the finished future is dropped inside its poll: not
        // dropped a second time when the wrapper goes.
        let guard = CountDrop(drops.clone(), true);
        let mut fut = Box::pin(
            async move {
                let _guard = guard;
            }
            .bind_context(),
        );
        assert!(catch_unwind(AssertUnwindSafe(|| poll_once(fut.as_mut()))).is_err());
        assert_eq!(execution_async_id(), AsyncId::ROOT);
        drop(fut);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_wrapper_whose_future_panics_in_its_drop_still_ends_the_resource() {
        use crate::hooks::{Hooks, create_hook};
        use crate::storage::AsyncLocalStorage;
        use std::sync::Mutex;

        static STORE: AsyncLocalStorage<CountDrop> = AsyncLocalStorage::new();
        let store_drops = Arc::new(AtomicUsize::new(0));
        let inner_drops = Arc::new(AtomicUsize::new(0));
        // Hooks are process-wide and other tests run alongside: kept by id below.
        let destroyed = Arc::new(Mutex::new(Vec::new()));
        let seen = destroyed.clone();
        let hook =
            create_hook(Hooks::new().destroy(move |id| seen.lock().unwrap().push(id))).enable();
        let guard = CountDrop(inner_drops.clone(), true);
        // A captured storage value, and a handle made inside: both owned by the wrapper.
        let mut fut = STORE.run(CountDrop(store_drops.clone(), false), || {
            Box::pin(
                async move {
                    let _guard = guard;
                    let _ = execution_async_resource();
                    YieldOnce(false).await;
                }
                .bind_context(),
            )
        });
        let id = fut.async_id();
        assert!(poll_once(fut.as_mut()).is_pending());
        let handle_released = fut.running.identity.handle().released_probe();
        assert!(catch_unwind(AssertUnwindSafe(|| drop(fut))).is_err());
        hook.disable();
        assert_eq!(execution_async_id(), AsyncId::ROOT);
        assert_eq!(inner_drops.load(Ordering::SeqCst), 1);
        assert_eq!(
            store_drops.load(Ordering::SeqCst),
            1,
            "the captured frame was released"
        );
        assert!(handle_released(), "the handle was released");
        assert_eq!(
            destroyed
                .lock()
                .unwrap()
                .iter()
                .filter(|&&d| d == id)
                .count(),
            1
        );
    }

    #[test]
    fn a_handle_whose_data_panics_when_released_still_lets_the_frame_go() {
        use crate::storage::AsyncLocalStorage;

        static STORE: AsyncLocalStorage<CountDrop> = AsyncLocalStorage::new();
        let store_drops = Arc::new(AtomicUsize::new(0));
        let data_drops = Arc::new(AtomicUsize::new(0));
        let data = CountDrop(data_drops.clone(), true);
        let mut fut = STORE.run(CountDrop(store_drops.clone(), false), || {
            Box::pin(
                async move {
                    // Kept by the handle, which the wrapper's identity owns from here on.
                    execution_async_resource().insert(data);
                }
                .bind_context(),
            )
        });
        assert!(poll_once(fut.as_mut()).is_ready());
        assert_eq!(data_drops.load(Ordering::SeqCst), 0);
        // The handle goes with the wrapper, and its data's destructor panics.
        assert!(catch_unwind(AssertUnwindSafe(|| drop(fut))).is_err());
        assert_eq!(data_drops.load(Ordering::SeqCst), 1);
        assert_eq!(
            store_drops.load(Ordering::SeqCst),
            1,
            "the captured frame was released"
        );
        assert_eq!(execution_async_id(), AsyncId::ROOT);
    }

    #[test]
    fn a_store_that_panics_when_a_poll_replaces_it_still_restores_the_caller() {
        use crate::storage::AsyncLocalStorage;

        static STORE: AsyncLocalStorage<CountDrop> = AsyncLocalStorage::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let replacement = CountDrop(drops.clone(), false);
        // The wrapper's captured frame holds the only reference to a store whose destructor
        // panics; the poll's `enter_with` replaces that frame, which goes when the poll ends.
        let mut fut = STORE.run(CountDrop(drops.clone(), true), || {
            Box::pin(async move { STORE.enter_with(replacement) }.bind_context())
        });
        assert!(catch_unwind(AssertUnwindSafe(|| poll_once(fut.as_mut()))).is_err());
        assert_eq!(drops.load(Ordering::SeqCst), 1, "the replaced store went");
        // The caller's execution is back although the release unwound out of the poll.
        assert_eq!(execution_async_id(), AsyncId::ROOT);
        assert!(STORE.get_store().is_none());
        drop(fut);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            2,
            "the replacement went with the wrapper"
        );
        // The same for an `AsyncResource` scope, whose replaced frame ends with the scope.
        let resource = AsyncResource::new("Scope");
        let scoped = catch_unwind(AssertUnwindSafe(|| {
            resource.run_in_async_scope(|| STORE.enter_with(CountDrop(drops.clone(), true)))
        }));
        assert!(scoped.is_err());
        assert_eq!(drops.load(Ordering::SeqCst), 3);
        assert_eq!(execution_async_id(), AsyncId::ROOT);
    }

    #[test]
    fn threads_racing_to_make_a_shared_resources_handle_agree_on_one() {
        for _ in 0..if cfg!(miri) { 4 } else { 200 } {
            let resource = Arc::new(AsyncResource::new("Raced"));
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let other = {
                let (resource, barrier) = (resource.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    resource.run_in_async_scope(execution_async_resource)
                })
            };
            barrier.wait();
            let here = resource.resource();
            let there = other.join().unwrap();
            assert_eq!(here, there);
            assert_eq!(here.async_id(), resource.async_id());
            assert_eq!(resource.resource(), here);
        }
    }

    #[test]
    fn async_resource_scopes_share_one_handle_across_threads() {
        let resource = Arc::new(AsyncResource::new("Shared"));
        let handle = resource.resource();
        let other = {
            let resource = resource.clone();
            std::thread::spawn(move || resource.run_in_async_scope(execution_async_resource))
        };
        let here = resource.run_in_async_scope(|| {
            // Nested: a future polled inside the scope, then back to the resource.
            let mut fut = std::pin::pin!(async { execution_async_id() }.bind_context());
            assert!(poll_once(fut.as_mut()).is_ready());
            execution_async_resource()
        });
        assert_eq!(here, handle);
        assert_eq!(other.join().unwrap(), handle);
    }
}
