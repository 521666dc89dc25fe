//! The per-thread execution context: which resource is running, its trigger, its handle and the
//! storage frame, switched in and out by RAII guards that also restore on panic.
//!
//! Everything the hot paths touch lives in one `thread_local!` with a `const` initialiser, so a
//! context switch or a `get_store` costs one TLS access and a few `Cell` reads and writes.

use std::cell::Cell;

use crate::hooks::{self, Kind, ThreadHooks};
use crate::id::{AsyncId, IdBlock};
use crate::resource::{ROOT_TYPE, Resource, ResourceType};
use crate::storage::{Frame, FrameCell};

/// The whole context of an execution: what `execution_async_id()` and friends report, the
/// resource handle (if materialised) and the storage frame.
///
/// A future keeps its own `ExecContext` and *swaps* it with the thread's on entering and leaving
/// a poll: no copy of the caller's context is made, and what the poll did (a handle materialised,
/// an `enter_with`) stays with the future.
#[derive(Clone)]
pub(crate) struct ExecContext {
    pub(crate) async_id: AsyncId,
    pub(crate) trigger_id: AsyncId,
    pub(crate) ty: &'static ResourceType,
    pub(crate) handle: Option<Resource>,
    pub(crate) frame: Frame,
}

pub(crate) struct ThreadState {
    pub(crate) ids: IdBlock,
    // The ids and type live in separate 8-byte cells: moving a 24-byte struct through a `Cell`
    // on every switch cost store-forwarding stalls.
    async_id: Cell<AsyncId>,
    trigger_id: Cell<AsyncId>,
    ty: Cell<&'static ResourceType>,
    /// The running resource's handle, if one was materialised (by an `init` hook or by
    /// `execution_async_resource()`); created lazily so that resources cost no allocation while
    /// nobody looks at them.
    resource: Cell<Option<Resource>>,
    /// The storage frame of the running execution.
    pub(crate) frame: FrameCell,
    pub(crate) hooks: ThreadHooks,
}

thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            ids: IdBlock::new(),
            async_id: Cell::new(AsyncId::ROOT),
            trigger_id: Cell::new(AsyncId::NONE),
            ty: Cell::new(&ROOT_TYPE),
            resource: Cell::new(None),
            frame: FrameCell::new(),
            hooks: ThreadHooks::new(),
        }
    };
}

/// Runs `f` with this thread's state. Panics only if called while the thread's locals are being
/// destroyed; drop paths use [`try_with_state`] instead.
#[inline]
pub(crate) fn with_state<R>(f: impl FnOnce(&ThreadState) -> R) -> R {
    STATE.with(f)
}

/// Like [`with_state`], but `None` while the thread's locals are being destroyed.
#[inline]
pub(crate) fn try_with_state<R>(f: impl FnOnce(&ThreadState) -> R) -> Option<R> {
    STATE.try_with(f).ok()
}

impl ThreadState {
    #[inline]
    pub(crate) fn execution_async_id(&self) -> AsyncId {
        self.async_id.get()
    }

    /// Exchanges the thread's context with `ctx`, field by field in place: called once to enter
    /// an execution and once more to leave it.
    #[inline]
    pub(crate) fn swap(&self, ctx: &mut ExecContext) {
        ctx.async_id = self.async_id.replace(ctx.async_id);
        ctx.trigger_id = self.trigger_id.replace(ctx.trigger_id);
        ctx.ty = self.ty.replace(ctx.ty);
        ctx.handle = self.resource.replace(ctx.handle.take());
        ctx.frame = self.frame.replace(std::mem::take(&mut ctx.frame));
    }

    /// The running resource's handle, materialised on first use and kept for the rest of the
    /// scope (and given back to the resource when the scope ends, so it stays the same handle).
    pub(crate) fn current_resource(&self) -> Resource {
        let handle = match self.resource.take() {
            Some(handle) => handle,
            None => {
                let async_id = self.async_id.get();
                if async_id == AsyncId::ROOT {
                    Resource::root()
                } else {
                    Resource::new(async_id, self.trigger_id.get(), self.ty.get())
                }
            }
        };
        self.resource.set(Some(handle.clone()));
        handle
    }

    /// A clone of the current storage frame (O(1): one refcount increment, none when empty).
    #[inline(always)]
    pub(crate) fn capture_frame(&self) -> Frame {
        self.frame.get()
    }

    /// Replaces the current frame, dropping the old one only after the new one is in place (a
    /// store's `Drop` may look at the context).
    #[inline]
    pub(crate) fn set_frame(&self, frame: Frame) {
        self.frame.set(frame);
    }
}

/// The id of the resource whose callback or poll is running on this thread; [`AsyncId::ROOT`]
/// outside every resource.
///
/// ```
/// use async_hooks::{AsyncId, AsyncResource, execution_async_id};
///
/// assert_eq!(execution_async_id(), AsyncId::ROOT);
/// let resource = AsyncResource::new("Job");
/// resource.run_in_async_scope(|| assert_eq!(execution_async_id(), resource.async_id()));
/// assert_eq!(execution_async_id(), AsyncId::ROOT);
/// ```
#[inline]
pub fn execution_async_id() -> AsyncId {
    try_with_state(|s| s.async_id.get()).unwrap_or(AsyncId::ROOT)
}

/// The trigger id of the running resource: the execution that created it. [`AsyncId::NONE`] at
/// the top level.
///
/// ```
/// use async_hooks::{AsyncId, AsyncResource, trigger_async_id};
///
/// assert_eq!(trigger_async_id(), AsyncId::NONE);
/// let resource = AsyncResource::new("Job");
/// resource.run_in_async_scope(|| assert_eq!(trigger_async_id(), AsyncId::ROOT));
/// ```
#[inline]
pub fn trigger_async_id() -> AsyncId {
    try_with_state(|s| s.trigger_id.get()).unwrap_or(AsyncId::NONE)
}

/// A handle to the running resource: the very handle passed to `init` hooks for it. Outside every
/// resource, the root resource (always the same handle).
///
/// Data can ride on it with [`Resource::insert`] / [`Resource::get`], Node's
/// `executionAsyncResource()[sym] = …` pattern.
///
/// ```
/// use async_hooks::{AsyncResource, execution_async_resource};
///
/// assert_eq!(execution_async_resource(), execution_async_resource());
/// let job = AsyncResource::new("Job");
/// job.run_in_async_scope(|| {
///     let current = execution_async_resource();
///     assert_eq!(current, job.resource());
///     assert_eq!(current.type_name(), "Job");
/// });
/// ```
pub fn execution_async_resource() -> Resource {
    try_with_state(ThreadState::current_resource).unwrap_or_else(Resource::root)
}

/// A running execution: the thread is switched to a context (swapped in) and `before` has fired;
/// dropping it fires `after` and swaps the caller's context back — also during a panic.
pub(crate) struct Entered<'a> {
    state: &'a ThreadState,
    ctx: &'a mut ExecContext,
    events: bool,
}

impl<'a> Entered<'a> {
    /// Enters `ctx`. With `events`, `before`/`after` fire (a poll or a scoped call); without, the
    /// switch is silent (dropping a future inside its own context).
    #[inline]
    pub(crate) fn enter(
        state: &'a ThreadState,
        ctx: &'a mut ExecContext,
        events: bool,
    ) -> Entered<'a> {
        state.swap(ctx);
        if events {
            hooks::emit_id(state, Kind::Before, state.async_id.get());
        }
        Entered { state, ctx, events }
    }
}

impl Drop for Entered<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.events {
            hooks::emit_id(self.state, Kind::After, self.state.async_id.get());
        }
        self.state.swap(self.ctx);
    }
}
