//! The per-thread execution context: which resource is running (a pointer to its [`Identity`])
//! and the storage frame, switched in and out by RAII guards that also restore on panic.
//!
//! The thread's state is a `const`-initialised `thread_local!` with no destructor, so reaching it
//! compiles to a plain thread-pointer-relative access: no lazy registration, no "already
//! destroyed" check, and it stays usable while the thread's other locals are torn down. Entering
//! an execution stores one pointer and points the thread at the resource's frame without taking
//! it over; nothing is copied and no reference count changes.

use std::cell::Cell;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ptr::{self, NonNull};

use crate::hooks::{self, Kind};
use crate::id::{AsyncId, IdBlock};
use crate::resource::{Identity, ROOT_IDENTITY, Resource};
use crate::storage::{Frame, FrameCell, FrameData, ResourceFrame};

pub(crate) struct ThreadState {
    pub(crate) ids: IdBlock,
    /// The running resource's identity: [`ROOT_IDENTITY`], or one that an [`Entered`] guard
    /// further up this thread's stack borrows (the guard puts the previous pointer back before
    /// that borrow ends).
    current: Cell<*const Identity>,
    /// The storage frame of the running execution.
    pub(crate) frame: FrameCell,
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
            frame: FrameCell::new(),
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
        // SAFETY: `current` is `ROOT_IDENTITY` (a static) or borrowed by a live `Entered` guard
        // higher up this thread's stack, which outlives this call: `f` cannot end that guard,
        // since guards end in the scope that made them (strictly nested).
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
    pub(crate) fn capture_resource_frame(&self) -> ResourceFrame {
        self.frame.capture()
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

/// A running execution: the thread points at the resource's identity and its frame, and (with
/// `EVENTS`) `before` has fired; [`Entered::leave`] fires `after` and switches back, and so does
/// dropping the guard while a panic unwinds. Without `EVENTS` the switch is silent (dropping a
/// future inside its own context).
///
/// With `KEEPS`, a frame that the code inside put in place of the resource's (`enter_with`)
/// becomes the resource's own (a future's execution continues at its next poll); without, it
/// ends with the scope (an `AsyncResource`'s scopes each start from its captured frame).
pub(crate) struct Entered<'a, const EVENTS: bool, const KEEPS: bool = true> {
    // Neither the thread state nor the identity kept: the state is two instructions to
    // recompute, the events read the identity's id from the thread, and every field is a
    // register held across the poll.
    /// The thread's running identity before, put back as it was.
    previous: *const Identity,
    /// The resource's frame, which the thread points at while entered: from a
    /// `&'a mut ResourceFrame` with `KEEPS`, else from a `&'a ResourceFrame`.
    frame: NonNull<ResourceFrame>,
    /// The thread's frame pointer before, put back as it was.
    previous_frame: *const FrameData,
    /// The thread's frame pointer while entered: unchanged at the end, the code inside left
    /// the frame as it was.
    installed: *const FrameData,
    _borrows: PhantomData<(&'a Identity, &'a mut ResourceFrame)>,
}

impl<'a, const EVENTS: bool> Entered<'a, EVENTS, true> {
    /// Enters a resource that keeps the frame its code leaves behind.
    #[inline(always)]
    pub(crate) fn enter(
        state: &ThreadState,
        identity: &'a Identity,
        frame: &'a mut ResourceFrame,
    ) -> Entered<'a, EVENTS, true> {
        Entered::enter_raw(state, identity, NonNull::from(frame))
    }
}

impl<'a, const EVENTS: bool> Entered<'a, EVENTS, false> {
    /// Enters a scope of a resource whose frame stays as captured.
    #[inline(always)]
    pub(crate) fn enter_scope(
        state: &ThreadState,
        identity: &'a Identity,
        frame: &'a ResourceFrame,
    ) -> Entered<'a, EVENTS, false> {
        Entered::enter_raw(state, identity, NonNull::from(frame))
    }
}

impl<'a, const EVENTS: bool, const KEEPS: bool> Entered<'a, EVENTS, KEEPS> {
    #[inline(always)]
    fn enter_raw(
        state: &ThreadState,
        identity: &'a Identity,
        frame: NonNull<ResourceFrame>,
    ) -> Entered<'a, EVENTS, KEEPS> {
        let previous = state.current.replace(identity);
        // SAFETY: `frame` comes from a reference that lives for `'a`.
        #[allow(unsafe_code)]
        let (previous_frame, installed) = state.frame.enter(unsafe { frame.as_ref() });
        // Cannot unwind (see `hooks::dispatch_id`), so the guard needs to exist only after it.
        if EVENTS {
            hooks::emit_current(Kind::Before);
        }
        Entered {
            previous,
            frame,
            previous_frame,
            installed,
            _borrows: PhantomData,
        }
    }
}

impl<const EVENTS: bool, const KEEPS: bool> Entered<'_, EVENTS, KEEPS> {
    /// Ends the execution: fires `after` and switches back.
    ///
    /// Scopes end with this call rather than with the guard's drop, which only runs while
    /// unwinding. That drop is then a single out-of-line call taking the fields by value, which
    /// LLVM inlines into the landing pads, so the guard can live in registers: when the drop
    /// did the switch itself, LLVM kept it out of line and the guard's four fields were stored
    /// to the stack on every poll just for the landing pad to read.
    #[inline(always)]
    pub(crate) fn leave(self) {
        let this = ManuallyDrop::new(self);
        Self::switch_back(
            this.previous,
            this.frame,
            this.previous_frame,
            this.installed,
        );
    }

    #[inline(always)]
    fn switch_back(
        previous: *const Identity,
        frame: NonNull<ResourceFrame>,
        previous_frame: *const FrameData,
        installed: *const FrameData,
    ) {
        if EVENTS {
            hooks::emit_current(Kind::After);
        }
        let state = thread_state();
        // The identity first: a frame the code inside replaced is released below, and a store's
        // `Drop` may panic; the caller's execution must be back by then, or the thread would
        // keep pointing at this one after it is gone.
        state.current.set(previous);
        if KEEPS {
            // SAFETY: with `KEEPS` the pointer comes from a `&'a mut ResourceFrame` that this
            // guard holds exclusively for `'a`.
            #[allow(unsafe_code)]
            state
                .frame
                .leave(installed, unsafe { &mut *frame.as_ptr() }, previous_frame);
        } else {
            state.frame.leave_scope(installed, previous_frame);
        }
    }

    /// [`Entered::leave`] for a guard dropped while unwinding.
    #[cold]
    #[inline(never)]
    fn switch_back_unwinding(
        previous: *const Identity,
        frame: NonNull<ResourceFrame>,
        previous_frame: *const FrameData,
        installed: *const FrameData,
    ) {
        Self::switch_back(previous, frame, previous_frame, installed);
    }
}

impl<const EVENTS: bool, const KEEPS: bool> Drop for Entered<'_, EVENTS, KEEPS> {
    /// Reached only while unwinding: every scope ends with [`Entered::leave`]. (Dropping the
    /// guard anywhere else would still switch back, just out of line.)
    #[inline(always)]
    fn drop(&mut self) {
        Self::switch_back_unwinding(
            self.previous,
            self.frame,
            self.previous_frame,
            self.installed,
        );
    }
}
