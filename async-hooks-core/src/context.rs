//! The per-thread execution context: which resource is running, its trigger, its handle and the
//! storage frame, switched in and out by RAII guards that also restore on panic.
//!
//! Everything the hot paths touch lives in one `thread_local!` with a `const` initialiser, so a
//! context switch or a `get_store` costs one TLS access and a few `Cell` reads and writes.

use std::cell::Cell;

use crate::hooks::ThreadHooks;
use crate::id::{AsyncId, IdBlock};
use crate::resource::{ROOT_TYPE, Resource, ResourceType};
use crate::storage::Frame;

/// The identity of an execution: what `execution_async_id()` and friends report.
#[derive(Clone, Copy)]
pub(crate) struct ExecIds {
    pub(crate) async_id: AsyncId,
    pub(crate) trigger_id: AsyncId,
    pub(crate) ty: &'static ResourceType,
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
    pub(crate) frame: Cell<Frame>,
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
            frame: Cell::new(Frame::EMPTY),
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

/// What a scope saved on entry and puts back on exit.
pub(crate) struct Saved {
    exec: ExecIds,
    resource: Option<Resource>,
    frame: Frame,
}

impl ThreadState {
    #[inline]
    pub(crate) fn exec(&self) -> ExecIds {
        ExecIds {
            async_id: self.async_id.get(),
            trigger_id: self.trigger_id.get(),
            ty: self.ty.get(),
        }
    }

    #[inline]
    pub(crate) fn execution_async_id(&self) -> AsyncId {
        self.async_id.get()
    }

    #[inline]
    fn set_exec(&self, exec: ExecIds) {
        self.async_id.set(exec.async_id);
        self.trigger_id.set(exec.trigger_id);
        self.ty.set(exec.ty);
    }

    /// Switches the thread to another execution; the returned [`Saved`] must be given back to
    /// [`ThreadState::leave`].
    #[inline]
    pub(crate) fn enter(&self, exec: ExecIds, resource: Option<Resource>, frame: Frame) -> Saved {
        let previous = self.exec();
        self.set_exec(exec);
        Saved {
            exec: previous,
            resource: self.resource.replace(resource),
            frame: self.frame.replace(frame),
        }
    }

    /// Switches back to `saved`, returning the handle and frame the scope ended with (the handle
    /// may have been materialised, the frame changed by `enter_with`, during the scope).
    #[inline]
    pub(crate) fn leave(&self, saved: Saved) -> (Option<Resource>, Frame) {
        self.set_exec(saved.exec);
        (
            self.resource.replace(saved.resource),
            self.frame.replace(saved.frame),
        )
    }

    /// The running resource's handle, materialised on first use and kept for the rest of the
    /// scope (and given back to the resource when the scope ends, so it stays the same handle).
    pub(crate) fn current_resource(&self) -> Resource {
        let handle = match self.resource.take() {
            Some(handle) => handle,
            None => {
                let exec = self.exec();
                if exec.async_id == AsyncId::ROOT {
                    Resource::root()
                } else {
                    Resource::new(exec)
                }
            }
        };
        self.resource.set(Some(handle.clone()));
        handle
    }

    /// A clone of the current storage frame (O(1): one refcount increment, none when empty).
    #[inline]
    pub(crate) fn capture_frame(&self) -> Frame {
        let frame = self.frame.take();
        let copy = frame.clone();
        self.frame.set(frame);
        copy
    }

    /// Replaces the current frame, dropping the old one only after the new one is in place (a
    /// store's `Drop` may look at the context).
    #[inline]
    pub(crate) fn set_frame(&self, frame: Frame) {
        drop(self.frame.replace(frame));
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
