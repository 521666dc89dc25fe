//! Instrumented futures: a future that is an async resource.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::context::{Entered, ExecContext, ThreadState, try_with_state, with_state};
use crate::hooks::{self, Kind};
use crate::resource::ResourceType;

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
        #[pin]
        inner: Option<F>,
        // The resource's context; during a poll it holds the caller's instead (swapped).
        ctx: ExecContext,
    }

    impl<F> PinnedDrop for Instrumented<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            // `destroy` comes after the inner future is dropped, and from a guard, so that it is
            // emitted exactly once even if that drop panics.
            let _destroy = DestroyOnDrop(this.ctx.async_id);
            if this.inner.is_some() {
                let dropped_in_context = try_with_state(|state| {
                    let _entered = Entered::enter(state, this.ctx, false);
                    this.inner.set(None);
                });
                if dropped_in_context.is_none() {
                    this.inner.set(None);
                }
            }
        }
    }
}

/// Emits `destroy` for a resource when dropped, also while unwinding.
struct DestroyOnDrop(crate::AsyncId);

impl Drop for DestroyOnDrop {
    fn drop(&mut self) {
        hooks::emit_destroy(self.0);
    }
}

impl<F> Instrumented<F> {
    /// Makes `future` a resource of type `ty`. Used by the macros, which declare `ty` as a static.
    #[doc(hidden)]
    #[inline]
    pub fn new(ty: &'static ResourceType, future: F) -> Instrumented<F> {
        with_state(|state| Instrumented::create(state, ty, future))
    }

    #[inline(always)]
    fn create(state: &ThreadState, ty: &'static ResourceType, future: F) -> Instrumented<F> {
        Instrumented {
            inner: Some(future),
            ctx: ExecContext::create(state, ty, None),
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
        self.ctx.async_id
    }

    /// The id of the execution that created this resource.
    ///
    /// ```
    /// use async_hooks::{AsyncId, BindContext};
    ///
    /// assert_eq!(async { 1 }.bind_context().trigger_async_id(), AsyncId::ROOT);
    /// ```
    pub fn trigger_async_id(&self) -> crate::AsyncId {
        self.ctx.trigger_id
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
            let _entered = Entered::enter(state, this.ctx, true);
            let Some(inner) = this.inner.as_mut().as_pin_mut() else {
                unreachable!("checked above")
            };
            let poll = inner.poll(cx);
            if poll.is_ready() {
                hooks::emit_id(state, Kind::PromiseResolve, state.execution_async_id());
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
            .field("type", &self.ctx.ty.name())
            .field("async_id", &self.ctx.async_id)
            .field("trigger_async_id", &self.ctx.trigger_id)
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
            if type_name.is_empty() && hooks::wants(Kind::Init) {
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
