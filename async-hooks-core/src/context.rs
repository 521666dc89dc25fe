//! The per-thread execution context: which resource is running (a pointer to its [`Identity`])
//! and the storage frame. `crate::execution` switches both for the length of a call to enter a
//! resource, putting them back also on panic.
//!
//! # Safety
//!
//! The thread state is a `const`-initialised thread-local with no destructor, so a reference to
//! it is valid for as long as any code of its thread runs. Its running-identity pointer is
//! `ROOT_IDENTITY` or an identity that an [`AsCurrent`] borrows for an execution entered higher
//! up this thread's stack; the frame module calls its `enter` and `leave` in pairs, strictly
//! nested, so the pointer is put back before that borrow ends.
//!
//! The thread's state is a `const`-initialised `thread_local!` with no destructor, so reaching it
//! compiles to a plain thread-pointer-relative access: no lazy registration, no "already
//! destroyed" check, and it stays usable while the thread's other locals are torn down. Entering
//! an execution stores one pointer and points the thread at the resource's frame without taking
//! it over; nothing is copied and no reference count changes.

use std::cell::Cell;
use std::ptr;

use crate::hooks;
use crate::id::{AsyncId, IdBlock};
use crate::resource::{Identity, ROOT_IDENTITY, Resource};
use crate::storage::{AroundFrame, CapturedFrame, CurrentFrame, SharedFrame, Switching};

pub(crate) struct ThreadState {
    pub(crate) ids: IdBlock,
    /// The running resource's identity: [`ROOT_IDENTITY`], or one that an [`AsCurrent`] of an
    /// entered execution further up this thread's stack borrows (it puts the previous pointer
    /// back before that borrow ends).
    current: Cell<*const Identity>,
    /// The storage frame of the running execution.
    pub(crate) frame: CurrentFrame,
    /// Orders the thread's storage guards against the scopes they are made in.
    pub(crate) guard_clock: GuardClock,
    /// The event whose hook callbacks are running on this thread (the innermost, when callbacks
    /// raise events of their own), on its dispatch's stack; null when none is. It says both
    /// whether a dispatch is the outermost and, for the fatal-panic report, which event.
    pub(crate) dispatching: Cell<*const hooks::Dispatching>,
    /// The thread's view of the hook registry: the word checked by every event lives here, next
    /// to the rest of the hot state.
    #[cfg(not(async_hooks_loom))]
    pub(crate) hooks: hooks::ThreadHooks,
}

// The fast access above depends on this: a thread-local with drop glue is reached through a
// lazily registering accessor instead.
const _: () = assert!(!std::mem::needs_drop::<ThreadState>());

thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            ids: IdBlock::new(),
            current: Cell::new(&ROOT_IDENTITY),
            frame: CurrentFrame::new(),
            guard_clock: GuardClock(Cell::new(0)),
            dispatching: Cell::new(ptr::null()),
            #[cfg(not(async_hooks_loom))]
            hooks: hooks::ThreadHooks::new(),
        }
    };
}

/// This thread's state.
///
/// A reference rather than a closure argument (as [`with_state`] passes it), so that hot paths
/// that must inline whole (a poll, a drop) have no closure body for LLVM to leave out of line.
#[inline(always)]
pub(crate) fn thread_state<'a>() -> &'a ThreadState {
    // Only the pointer is taken inside `with`, so that the access always inlines to a
    // thread-pointer-relative address (a large closure inside `with` made LLVM keep the generic
    // accessor call).
    let state = STATE.with(ptr::from_ref);
    // SAFETY: a `const`-initialised thread-local without drop glue is never destroyed before its
    // thread ends, so the pointer is valid for as long as any code of this thread runs; the
    // reference cannot leave the thread (`ThreadState` is `!Sync`, so `&ThreadState` is `!Send`).
    #[allow(unsafe_code)]
    unsafe {
        &*state
    }
}

/// Runs `f` with this thread's state.
#[inline(always)]
pub(crate) fn with_state<R>(f: impl FnOnce(&ThreadState) -> R) -> R {
    f(thread_state())
}

impl ThreadState {
    /// The running resource's identity, for as long as `f` runs.
    #[inline(always)]
    fn with_current<R>(&self, f: impl FnOnce(&Identity) -> R) -> R {
        // SAFETY: `current` is `ROOT_IDENTITY` (a static) or borrowed by an `AsCurrent` that an
        // entered execution higher up this thread's stack holds, which outlives this call.
        #[allow(unsafe_code)]
        f(unsafe { &*self.current.get() })
    }

    #[inline(always)]
    pub(crate) fn execution_async_id(&self) -> AsyncId {
        self.with_current(|identity| identity.async_id)
    }

    #[inline(always)]
    pub(crate) fn trigger_async_id(&self) -> AsyncId {
        self.with_current(|identity| identity.trigger_id)
    }

    /// The running resource's handle, made on first use and kept by the resource (so it stays
    /// the same handle for the rest of the resource's life).
    pub(crate) fn current_resource(&self) -> Resource {
        self.with_current(Identity::handle)
    }

    /// A reference to the current storage frame, for a resource or a snapshot to keep (O(1):
    /// one refcount increment, none when empty).
    #[inline(always)]
    pub(crate) fn capture_resource_frame(&self) -> CapturedFrame {
        self.frame.capture()
    }

    /// Replaces the current frame, dropping the old one only after the new one is in place (a
    /// store's `Drop` may look at the context).
    #[inline]
    pub(crate) fn set_frame(&self, frame: SharedFrame) {
        self.frame.set(frame);
    }
}

/// This thread's count of storage guards made (`AsyncLocalStorage::enter_scope`), which only
/// grows: a scope reads it when it begins, and a guard made on this thread during the scope has
/// a higher mark.
pub(crate) struct GuardClock(Cell<u64>);

impl GuardClock {
    /// The count now.
    #[inline(always)]
    pub(crate) fn now(&self) -> u64 {
        self.0.get()
    }

    /// Counts a new guard, and returns its mark.
    pub(crate) fn tick(&self) -> u64 {
        let mark = self.0.get() + 1;
        self.0.set(mark);
        mark
    }
}

/// Makes an identity the running resource's while an execution's frame is entered (see
/// `crate::execution`), and puts the previous one back when it is left.
pub(crate) struct AsCurrent<'a> {
    // No thread state kept: it is two instructions to recompute, and one register fewer is
    // held across the execution.
    identity: &'a Identity,
    /// The running identity before; set by `enter`.
    previous: *const Identity,
}

impl<'a> AsCurrent<'a> {
    #[inline(always)]
    pub(crate) fn new(identity: &'a Identity) -> AsCurrent<'a> {
        AsCurrent {
            identity,
            previous: ptr::null(),
        }
    }
}

impl AroundFrame for AsCurrent<'_> {
    #[inline(always)]
    fn enter(&mut self, _: &Switching) {
        self.previous = thread_state().current.replace(self.identity);
    }

    #[inline(always)]
    fn leave(self, _: &Switching) {
        // The frame module calls `leave` once after `enter`, and strictly nested: `previous`
        // is the identity of the execution this one runs inside.
        thread_state().current.set(self.previous);
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
    with_state(ThreadState::execution_async_id)
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
    with_state(ThreadState::trigger_async_id)
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
    with_state(ThreadState::current_resource)
}
