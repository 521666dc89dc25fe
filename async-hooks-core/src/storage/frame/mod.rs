//! Storage frames and the thread's cell that holds the current one.
//!
//! A [`SharedFrame`] is an immutable, `Arc`-shared sorted map from storage key to store. The thread's
//! current frame lives in a [`CurrentFrame`], which can *lend* its own strong reference to a reader
//! (`with_store`) for the duration of a closure: the reader then sees the store with no refcount
//! traffic, and whatever takes the frame out of the cell meanwhile gets a clone of its own.
//!
//! A synchronous `run` needs a frame only for as long as its closure runs, so it builds a
//! [`StackFrame`] on its own stack instead: the cell points at it, reads go through it like
//! through any frame, and only code that keeps the frame beyond the scope (a resource created
//! inside, a snapshot) *promotes* it to a heap frame, once per scope.
//!
//! This is the one module of the core with `unsafe` code; its tests run under Miri.

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
