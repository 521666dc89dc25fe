//! Instrumented futures: a future that is an async resource.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::context::{ExecIds, Saved, ThreadState, try_with_state, with_state};
use crate::hooks::{self, Event, Kind};
use crate::resource::{Resource, ResourceCore, ResourceType};
use crate::storage::Frame;

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
    #[must_use = "futures do nothing unless polled"]
    pub struct Instrumented<F> {
        #[pin]
        inner: Option<F>,
        exec: ExecIds,
        frame: Frame,
        handle: Option<Resource>,
    }

    impl<F> PinnedDrop for Instrumented<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if this.inner.is_some() {
                let dropped_in_context = try_with_state(|state| {
                    let _switch = Switch::enter(state, *this.exec, this.handle, this.frame, false);
                    this.inner.set(None);
                });
                if dropped_in_context.is_none() {
                    this.inner.set(None);
                }
            }
            hooks::emit_from_drop(Event::Destroy(this.exec.async_id));
        }
    }
}

impl<F> Instrumented<F> {
    /// Makes `future` a resource of type `ty`. Used by the macros, which declare `ty` as a static.
    #[doc(hidden)]
    #[inline]
    pub fn new(ty: &'static ResourceType, future: F) -> Instrumented<F> {
        with_state(|state| Instrumented::create(state, ty, future))
    }

    #[inline]
    fn create(state: &ThreadState, ty: &'static ResourceType, future: F) -> Instrumented<F> {
        let (core, handle) = ResourceCore::create(state, ty, None);
        Instrumented {
            inner: Some(future),
            exec: core.exec,
            frame: core.frame,
            handle,
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
        self.exec.async_id
    }

    /// The id of the execution that created this resource.
    ///
    /// ```
    /// use async_hooks::{AsyncId, BindContext};
    ///
    /// assert_eq!(async { 1 }.bind_context().trigger_async_id(), AsyncId::ROOT);
    /// ```
    pub fn trigger_async_id(&self) -> crate::AsyncId {
        self.exec.trigger_id
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        if this.inner.is_none() {
            panic!("`Instrumented` future polled after it returned `Poll::Ready`");
        }
        with_state(|state| {
            let _switch = Switch::enter(state, *this.exec, this.handle, this.frame, true);
            let Some(inner) = this.inner.as_mut().as_pin_mut() else {
                unreachable!("checked above")
            };
            let poll = inner.poll(cx);
            if poll.is_ready() {
                hooks::emit(state, Event::PromiseResolve(this.exec.async_id));
                // Drop the finished state machine now, inside the resource's context.
                this.inner.set(None);
            }
            poll
        })
    }
}

impl<F> fmt::Debug for Instrumented<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instrumented")
            .field("type", &self.exec.ty.name())
            .field("async_id", &self.exec.async_id)
            .field("trigger_async_id", &self.exec.trigger_id)
            .finish_non_exhaustive()
    }
}

/// The thread switched to a future's resource for one poll (or its drop). The future's handle and
/// frame move into the thread and back, so a poll costs no refcount traffic, and what the poll
/// did to them (a handle materialised, an `enter_with`) stays with the future.
struct Switch<'a> {
    state: &'a ThreadState,
    async_id: crate::AsyncId,
    handle: &'a mut Option<Resource>,
    frame: &'a mut Frame,
    saved: Option<Saved>,
    events: bool,
}

impl<'a> Switch<'a> {
    #[inline]
    fn enter(
        state: &'a ThreadState,
        exec: ExecIds,
        handle: &'a mut Option<Resource>,
        frame: &'a mut Frame,
        events: bool,
    ) -> Switch<'a> {
        let saved = state.enter(exec, handle.take(), std::mem::take(frame));
        if events {
            hooks::emit(state, Event::Before(exec.async_id));
        }
        Switch {
            state,
            async_id: exec.async_id,
            handle,
            frame,
            saved: Some(saved),
            events,
        }
    }
}

impl Drop for Switch<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.events {
            hooks::emit(self.state, Event::After(self.async_id));
        }
        if let Some(saved) = self.saved.take() {
            let (handle, frame) = self.state.leave(saved);
            *self.handle = handle;
            *self.frame = frame;
        }
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
            if type_name.is_empty() && hooks::wants(state, Kind::Init) {
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
