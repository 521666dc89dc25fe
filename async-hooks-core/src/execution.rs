//! Entering a resource's execution: for the length of one call the thread runs as the resource
//! (its identity and its storage frame), between its `before` and `after` hooks; afterwards,
//! also on panic, `after` fires and the caller's execution is back.
//!
//! Each kind of entry is its own function: a future's poll keeps a frame the code inside enters
//! (`enter_with`) for its next poll, a resource's scope starts from its captured frame every
//! time, and a future's drop runs in its context without hooks.

use std::marker::PhantomData;

use crate::context::{AsCurrent, ThreadState};
use crate::hooks::{self, Kind};
use crate::resource::Identity;
use crate::storage::{AroundFrame, CapturedFrame, Switching};

/// A poll of an instrumented future: `before` and `after` fire around `f`, and a frame that the
/// code inside put in place of the future's becomes the future's own (its execution continues
/// at the next poll).
#[inline(always)]
pub(crate) fn poll<R>(
    state: &ThreadState,
    identity: &Identity,
    frame: &mut CapturedFrame,
    f: impl FnOnce() -> R,
) -> R {
    let around = Execution::<WithHooks>::new(identity);
    state.frame.enter_keeping(frame, around, f)
}

/// The drop of an instrumented future's inner future, in its context and without hooks.
#[inline(always)]
pub(crate) fn drop_inside<R>(
    state: &ThreadState,
    identity: &Identity,
    frame: &mut CapturedFrame,
    f: impl FnOnce() -> R,
) -> R {
    let around = Execution::<Silently>::new(identity);
    state.frame.enter_keeping(frame, around, f)
}

/// A scope of an `AsyncResource`: `before` and `after` fire around `f`, which starts from the
/// captured frame; what the code inside enters ends with the scope.
#[inline(always)]
pub(crate) fn scope<R>(
    state: &ThreadState,
    identity: &Identity,
    frame: &CapturedFrame,
    f: impl FnOnce() -> R,
) -> R {
    let around = Execution::<WithHooks>::new(identity);
    state.frame.enter_scope(frame, around, f)
}

/// Whether an entry fires `before` and `after`.
trait Hooks {
    const FIRE: bool;
}

/// `before` on entry, `after` on exit.
struct WithHooks;

impl Hooks for WithHooks {
    const FIRE: bool = true;
}

/// No hooks: a future's drop.
struct Silently;

impl Hooks for Silently {
    const FIRE: bool = false;
}

/// The execution's part of the switch, which the frame module runs right after switching the
/// frame and right before switching it back: the running identity and the hooks.
struct Execution<'a, H: Hooks> {
    current: AsCurrent<'a>,
    _hooks: PhantomData<H>,
}

impl<'a, H: Hooks> Execution<'a, H> {
    #[inline(always)]
    fn new(identity: &'a Identity) -> Execution<'a, H> {
        Execution {
            current: AsCurrent::new(identity),
            _hooks: PhantomData,
        }
    }
}

impl<H: Hooks> AroundFrame for Execution<'_, H> {
    #[inline(always)]
    fn enter(&mut self, switching: &Switching) {
        self.current.enter(switching);
        // Cannot unwind (see `hooks::dispatch_id`).
        if H::FIRE {
            hooks::emit_current(Kind::Before);
        }
    }

    #[inline(always)]
    fn leave(self, switching: &Switching) {
        if H::FIRE {
            hooks::emit_current(Kind::After);
        }
        // The identity before the frame: a frame the code inside replaced is released after
        // this, and a store's `Drop` may panic; the caller's execution must be back by then.
        self.current.leave(switching);
    }
}
