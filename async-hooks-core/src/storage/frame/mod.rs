//! Storage frames and the thread's cell that holds the current one.
//!
//! | the cell holds | it points at | who owns the frame | who frees it | what may happen next |
//! | --- | --- | --- | --- | --- |
//! | null | the empty frame | nobody | nobody | any other state |
//! | an untagged pointer (*heap-owned*) | a heap frame | the cell: one strong reference | whoever takes it out of the cell (`take`, `replace`, `set`), or the thread-exit release | lent, captured (one reference more), replaced, entered over |
//! | a tagged pointer to a stack frame (*owned up the stack*) | a [`StackFrame`] on a `run`'s stack | that `run`, up this thread's stack | nothing to free; the `run`'s end releases its store and its heap copy | kept inline by a capture if it has one entry with a store (a reference to the store), else promoted (its heap copy, with a reference of its own, goes in the cell), replaced by the code inside, left by the `run`'s end |
//! | a tagged pointer to an entered frame (*owned up the stack*) | an [`EnteredFrame`] (a header and one entry) on the stack of `enter_keeping` or `enter_scope`, for a [`CapturedFrame`] kept inline | that call, up this thread's stack | nothing to free: it keeps no heap copy, a promotion makes one for its caller alone | as for a `run`'s stack frame, left by the call's end |
//! | a tagged pointer to a spill block (*spilled*) | the header of a [`SpillBlock`] that a `run`'s stack frame keeps | that `run` | the `run`'s end frees the block | as for a stack frame |
//! | a tagged pointer to a heap frame (*lent*) | a heap frame | a [`LendGuard`] (`with_store`), or the [`CapturedFrame`] of an execution entered up the stack | that owner | taken out by the code inside (the taker gets a reference of its own), put back or released at the owner's end |
//!
//! A [`SharedFrame`] is an immutable, reference-counted sorted map from storage key to store, in
//! one allocation with its header. A synchronous `run` builds its frame on its own stack, and
//! only code that keeps the frame beyond the scope (a resource created inside, a snapshot)
//! *promotes* it to a heap frame, once per scope, unless it has one entry with a store: a
//! [`CapturedFrame`] keeps that entry inline, and entering it builds a one-entry frame again on
//! the entering call's stack. A reader (`with_store`) borrows the cell's
//! reference for as long as its closure runs instead of cloning it.
//!
//! # Safety
//!
//! The crate's only `unsafe` memory management is here. Everything this module exports is safe
//! to call; these invariants hold inside it:
//!
//! 1. The cell is in one of the states of the table. A tagged pointer is never null (the empty
//!    frame is never tagged), and its owner is alive higher up the same thread's stack: owners
//!    are made only by this module's closure-scoped operations (`run_with_entry`,
//!    `run_with_borrowed_entry`, `enter_keeping`, `enter_scope`) and by [`LendGuard`]s, which
//!    nest strictly because the cell is thread-local and each puts the cell's previous pointer
//!    back as it ends, also while unwinding. A forgotten lend guard leaks its frame, which keeps
//!    the cell's pointer valid.
//! 2. A heap frame is never changed after it is built. Its count works as `Arc`'s does
//!    (relaxed increments, a release decrement, an acquire fence before the free).
//! 3. A stack frame's or spill block's entries are bitwise copies that hold no reference: they
//!    borrow the previous frame's, which outlives the scope, and the scope's own store, which
//!    the scope holds (for an [`EnteredFrame`], the [`CapturedFrame`]'s store, borrowed for the
//!    call). Only the spill block's own entry holds a reference, handed back at the end.
//!    Whatever keeps the frame beyond the scope takes references of its own: a capture of one
//!    entry with a store, to that store; any other keeper, to a heap copy.
//! 4. Every entry under a key holds a store of the one type of the [`StorageKey<T>`] that minted
//!    the key (keys are never reused), so a typed read needs no check at run time.
//! 5. The thread counts every reference it adds to a store ([`Recycled`]'s `shares`), a capture
//!    kept inline included; a scope whose store was fresh and whose count did not move holds
//!    the store's only reference.
//! 6. A [`PositionHint`] is always some entry's byte offset: one below a frame's `end` is an
//!    entry of that frame.
//!
//! The core's unit tests exercise every state and transition, and run under Miri in CI (on a
//! 64-bit, a 32-bit and a big-endian target).

mod cell;
mod heap;
mod stack;
mod value;

#[cfg(test)]
mod tests;

pub(crate) use cell::{AroundFrame, CapturedFrame, CurrentFrame, Switching};
pub(crate) use heap::{FrameView, PositionHint, SharedFrame};
pub(crate) use value::{FreshValue, KeptValue, Key, SavedEntry, StorageKey, StoreSource};

use cell::*;
use heap::*;
use stack::*;
use value::*;
