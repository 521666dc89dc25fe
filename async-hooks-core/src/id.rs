//! Async ids and their allocation.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// The id of an async resource, Node's `asyncId`.
///
/// [`AsyncId::NONE`] (0) means "no context / not set", [`AsyncId::ROOT`] (1) is the top level of
/// every thread. Allocated ids start at 2, are unique for the life of the process, are never
/// reused, and increase on each thread.
///
/// ```
/// use async_hooks::{AsyncId, AsyncResource};
///
/// let a = AsyncResource::new("A");
/// let b = AsyncResource::new("B");
/// assert!(a.async_id() > AsyncId::ROOT);
/// assert!(b.async_id() > a.async_id());
/// assert_eq!(AsyncId::from_u64(7).as_u64(), 7);
/// assert_eq!(AsyncId::ROOT.to_string(), "1");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct AsyncId(u64);

impl AsyncId {
    /// No context: the trigger id at the top level, or "not set".
    ///
    /// ```
    /// # use async_hooks::{AsyncId, trigger_async_id};
    /// assert_eq!(trigger_async_id(), AsyncId::NONE);
    /// ```
    pub const NONE: AsyncId = AsyncId(0);
    /// The top level of any thread, outside every resource.
    ///
    /// ```
    /// # use async_hooks::{AsyncId, execution_async_id};
    /// assert_eq!(execution_async_id(), AsyncId::ROOT);
    /// ```
    pub const ROOT: AsyncId = AsyncId(1);

    /// Wraps a raw id.
    ///
    /// ```
    /// # use async_hooks::AsyncId;
    /// assert_eq!(AsyncId::from_u64(1), AsyncId::ROOT);
    /// ```
    pub const fn from_u64(id: u64) -> AsyncId {
        AsyncId(id)
    }

    /// The raw id.
    ///
    /// ```
    /// # use async_hooks::AsyncId;
    /// assert_eq!(AsyncId::NONE.as_u64(), 0);
    /// ```
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for AsyncId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AsyncId({})", self.0)
    }
}

impl fmt::Display for AsyncId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// First id handed out; 0 and 1 are reserved.
const FIRST_ID: u64 = 2;
/// Ids a thread takes from the global counter at once, so that allocation touches a shared
/// atomic once per `BLOCK` resources instead of once per resource.
const BLOCK: u64 = 1024;

static NEXT_BLOCK: AtomicU64 = AtomicU64::new(FIRST_ID);

/// A thread's current block of ids: `(next, end)`.
pub(crate) struct IdBlock(Cell<(u64, u64)>);

impl IdBlock {
    pub(crate) const fn new() -> Self {
        IdBlock(Cell::new((0, 0)))
    }

    #[inline(always)]
    pub(crate) fn allocate(&self) -> AsyncId {
        let (next, end) = self.0.get();
        if next < end {
            self.0.set((next + 1, end));
            return AsyncId(next);
        }
        self.refill()
    }

    #[cold]
    fn refill(&self) -> AsyncId {
        let start = NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed);
        self.0.set((start + 1, start + BLOCK));
        AsyncId(start)
    }
}

/// Whether `id` is `NONE`, `ROOT` or an id that has been handed to some thread.
pub(crate) fn is_allocated(id: AsyncId) -> bool {
    id.0 < NEXT_BLOCK.load(Ordering::Relaxed)
}
