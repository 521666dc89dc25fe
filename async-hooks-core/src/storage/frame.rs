//! Storage frames and the thread's cell that holds the current one.
//!
//! A [`Frame`] is an immutable, `Arc`-shared sorted map from storage key to store. The thread's
//! current frame lives in a [`FrameCell`], which can *lend* its own strong reference to a reader
//! (`with_store`) for the duration of a closure: the reader then sees the store with no refcount
//! traffic, and whatever takes the frame out of the cell meanwhile gets a clone of its own.
//!
//! This is the one module of the core with `unsafe` code; its tests run under Miri.

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::mem::ManuallyDrop;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

pub(crate) type Value = Arc<dyn Any + Send + Sync>;

/// One storage's entry in a frame. `value: None` means the storage was exited (`get_store()`
/// is `None`, not the default); a storage with no entry shows its default.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) key: u64,
    pub(crate) value: Option<Value>,
}

/// Entries past this count are found by binary search instead of a linear scan.
const LINEAR_SCAN_MAX: usize = 8;

/// An immutable storage context.
///
/// A thin pointer on purpose: frames are swapped in and out of the thread's `Cell`s on every
/// poll and read, and a 16-byte fat pointer there costs store-forwarding stalls that dominated
/// `get_store` in the benchmarks (see BENCHMARKS.md).
#[derive(Clone, Default)]
pub(crate) struct Frame(Option<Arc<FrameData>>);

struct FrameData {
    /// Sorted by key.
    entries: Box<[Entry]>,
}

impl Frame {
    #[cfg(test)]
    pub(crate) const EMPTY: Frame = Frame(None);

    #[inline]
    fn entries(&self) -> &[Entry] {
        match &self.0 {
            Some(data) => &data.entries,
            None => &[],
        }
    }

    /// The entry of `key`: `None` if the storage has none in this frame.
    #[inline]
    pub(crate) fn lookup(&self, key: u64) -> Option<&Entry> {
        self.position(key).map(|i| &self.entries()[i])
    }

    #[inline]
    fn position(&self, key: u64) -> Option<usize> {
        let entries = self.entries();
        if entries.len() <= LINEAR_SCAN_MAX {
            entries.iter().position(|e| e.key == key)
        } else {
            entries.binary_search_by_key(&key, |e| e.key).ok()
        }
    }

    /// Like [`Frame::lookup`], trying position `hint` first and updating it: a storage sits at the
    /// same position in every frame with the same set of storages, so reads skip the search.
    #[inline]
    pub(crate) fn lookup_hinted(&self, key: u64, hint: &AtomicU32) -> Option<&Entry> {
        let entries = self.entries();
        let guess = hint.load(Ordering::Relaxed) as usize;
        if let Some(entry) = entries.get(guess)
            && entry.key == key
        {
            return Some(entry);
        }
        self.lookup_searched(key, hint)
    }

    /// The search behind [`Frame::lookup_hinted`], out of line so the hinted hit stays small.
    #[cold]
    #[inline(never)]
    fn lookup_searched(&self, key: u64, hint: &AtomicU32) -> Option<&Entry> {
        let found = self.position(key)?;
        hint.store(found as u32, Ordering::Relaxed);
        Some(&self.entries()[found])
    }

    /// This frame with `key` set to `entry` (`None`: removed).
    pub(crate) fn with(&self, key: u64, value: Option<Option<Value>>) -> Frame {
        let entries = self.entries();
        let position = entries.binary_search_by_key(&key, |e| e.key);
        let len = match (position, &value) {
            (Ok(_), Some(_)) => entries.len(),
            (Ok(_), None) => entries.len() - 1,
            (Err(_), Some(_)) => entries.len() + 1,
            (Err(_), None) => return self.clone(),
        };
        if len == 0 {
            return Frame(None);
        }
        // Exact capacity: `into_boxed_slice` then keeps the buffer instead of reallocating.
        let mut next: Vec<Entry> = Vec::with_capacity(len);
        match (position, value) {
            (Ok(i), Some(value)) => {
                next.extend_from_slice(entries);
                next[i].value = value;
            }
            (Ok(i), None) => {
                next.extend_from_slice(&entries[..i]);
                next.extend_from_slice(&entries[i + 1..]);
            }
            (Err(i), Some(value)) => {
                next.extend_from_slice(&entries[..i]);
                next.push(Entry { key, value });
                next.extend_from_slice(&entries[i..]);
            }
            (Err(_), None) => unreachable!("returned above"),
        }
        Frame(Some(Arc::new(FrameData {
            entries: next.into_boxed_slice(),
        })))
    }

    pub(crate) fn ptr_eq(&self, other: &Frame) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries().iter().map(|e| e.key))
            .finish()
    }
}

/// The low bit of a [`FrameCell`] pointer: the strong reference is lent out to a [`LentFrame`]
/// guard higher up this thread's stack, and the cell does not own it.
const LENT: usize = 1;

/// The thread's current frame.
///
/// It has no `Drop` (the thread state that holds it must have none, to be reached cheaply):
/// whoever leaves a frame in a thread's cell past every scope registers
/// `storage::release_at_thread_exit`.
///
/// It holds a raw `Arc<FrameData>` pointer (null: the empty frame). Untagged, the cell owns that
/// strong reference. Tagged with [`LENT`], the reference belongs to the [`LentFrame`] guard that
/// tagged it, which is alive higher up the same thread's stack. Guards nest strictly: the
/// cell is thread-local and `!Send`, and guards never leave the function that made them.
pub(crate) struct FrameCell {
    raw: Cell<*const FrameData>,
}

impl FrameCell {
    /// A cell holding the empty frame.
    pub(crate) const fn new() -> FrameCell {
        FrameCell {
            raw: Cell::new(ptr::null()),
        }
    }

    #[inline]
    fn into_raw(frame: Frame) -> *const FrameData {
        match frame.0 {
            Some(data) => Arc::into_raw(data),
            None => ptr::null(),
        }
    }

    /// Turns a pointer taken out of the cell into an owned frame.
    ///
    /// # Safety
    ///
    /// `raw` must have been read out of this cell and replaced there, so that nothing else
    /// claims the cell's reference: an untagged pointer's strong reference passes to the result;
    /// a lent one is still owned by its guard, which is alive, so it gets a reference of its own.
    #[inline]
    unsafe fn owned(raw: *const FrameData) -> Frame {
        if raw.is_null() {
            Frame(None)
        } else if raw.addr() & LENT == 0 {
            // SAFETY: an untagged non-null pointer in the cell came from `Arc::into_raw` and its
            // strong reference was the cell's; the caller took it out of the cell.
            Frame(Some(unsafe { Arc::from_raw(raw) }))
        } else {
            let data = raw.map_addr(|addr| addr & !LENT);
            // SAFETY: the lending guard holds a strong reference to `data` until it is dropped,
            // which happens after this call returns (guards are scoped higher up this stack).
            unsafe {
                Arc::increment_strong_count(data);
                Frame(Some(Arc::from_raw(data)))
            }
        }
    }

    /// Takes the frame out, leaving the empty frame.
    #[inline]
    pub(crate) fn take(&self) -> Frame {
        let raw = self.raw.replace(ptr::null());
        // SAFETY: `raw` was in the cell and has just been replaced there.
        unsafe { FrameCell::owned(raw) }
    }

    /// Puts `frame` in and returns the previous frame.
    #[inline]
    pub(crate) fn replace(&self, frame: Frame) -> Frame {
        let raw = self.raw.replace(FrameCell::into_raw(frame));
        // SAFETY: `raw` was in the cell and has just been replaced there.
        unsafe { FrameCell::owned(raw) }
    }

    /// Exchanges the cell's frame with `frame`: how an execution is entered and left.
    #[inline(always)]
    pub(crate) fn swap(&self, frame: &mut Frame) {
        // Both already own a reference to the same frame (the usual case: no storage at all, or
        // a resource polled in the context it was created in): exchanging them changes nothing.
        // A lent cell is tagged, so it never compares equal and takes the full path.
        let same = match &frame.0 {
            Some(data) => ptr::eq(self.raw.get(), Arc::as_ptr(data)),
            None => self.raw.get().is_null(),
        };
        if same {
            return;
        }
        let incoming = FrameCell::into_raw(std::mem::take(frame));
        let raw = self.raw.replace(incoming);
        // SAFETY: `raw` was in the cell and has just been replaced there.
        let outgoing = unsafe { FrameCell::owned(raw) };
        // `*frame` is the empty frame here: nothing to drop.
        std::mem::forget(std::mem::replace(frame, outgoing));
    }

    /// Puts `frame` in, dropping the previous frame only after the new one is in place (a
    /// store's `Drop` may look at the context).
    #[inline]
    pub(crate) fn set(&self, frame: Frame) {
        drop(self.replace(frame));
    }

    /// A new reference to the current frame (O(1): one refcount increment, none when empty).
    #[inline]
    pub(crate) fn get(&self) -> Frame {
        // SAFETY: cloning an `Arc` runs no user code and leaves the cell alone.
        unsafe { self.peek(Frame::clone) }
    }

    /// Calls `f` with the current frame in place, without touching its refcount.
    ///
    /// # Safety
    ///
    /// `f` must not take, replace or set this cell's frame, which could free the frame it is
    /// looking at: it must run no code that can switch the context (no user code).
    #[inline]
    pub(crate) unsafe fn peek<R>(&self, f: impl FnOnce(&Frame) -> R) -> R {
        // SAFETY: the cell holds a live strong reference (its own or its lender's), and by the
        // caller's promise nothing drops it while `f` runs; `ManuallyDrop` keeps this borrowed
        // view from releasing it.
        let view = ManuallyDrop::new(unsafe { FrameCell::view(self.raw.get()) });
        f(&view)
    }

    /// A frame value over the reference behind `raw`, to be kept in a `ManuallyDrop` unless it
    /// owns that reference.
    ///
    /// # Safety
    ///
    /// `raw` (without its tag) must be null or point to a live `FrameData` from `Arc::into_raw`.
    #[inline]
    unsafe fn view(raw: *const FrameData) -> Frame {
        let data = raw.map_addr(|addr| addr & !LENT);
        if data.is_null() {
            Frame(None)
        } else {
            // SAFETY: per the caller, `data` is a live pointer from `Arc::into_raw`.
            Frame(Some(unsafe { Arc::from_raw(data) }))
        }
    }

    /// Lends the current frame for as long as the returned guard lives: the guard's
    /// [`LentFrame::frame`] stays valid whatever the code running meanwhile does to the cell
    /// (`run`, `enter_with`, polling a future), with no refcount traffic unless that code takes
    /// the frame out of the cell.
    #[inline]
    pub(crate) fn lend(&self) -> LentFrame<'_> {
        let raw = self.raw.get();
        let lender = !raw.is_null() && raw.addr() & LENT == 0;
        if lender {
            self.raw.set(raw.map_addr(|addr| addr | LENT));
        }
        LentFrame {
            cell: self,
            // SAFETY: `raw` is the cell's live reference (or null, or already lent to a guard
            // higher up the stack, which outlives this one).
            frame: ManuallyDrop::new(unsafe { FrameCell::view(raw) }),
            lender,
            _not_send: std::marker::PhantomData,
        }
    }
}

/// The guard of [`FrameCell::lend`].
pub(crate) struct LentFrame<'a> {
    cell: &'a FrameCell,
    /// The lent frame. When `lender`, this guard owns its strong reference (taken from the cell);
    /// otherwise it is a view of a reference owned by the cell's lender further up the stack.
    frame: ManuallyDrop<Frame>,
    lender: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl LentFrame<'_> {
    /// The frame that was current when the guard was made.
    #[inline]
    pub(crate) fn frame(&self) -> &Frame {
        &self.frame
    }
}

impl Drop for LentFrame<'_> {
    #[inline]
    fn drop(&mut self) {
        if !self.lender {
            return;
        }
        let data = match &self.frame.0 {
            Some(data) => Arc::as_ptr(data),
            None => unreachable!("only a non-empty frame is lent"),
        };
        let tagged = data.map_addr(|addr| addr | LENT);
        if self.cell.raw.get() == tagged {
            // Untouched (or lent again and given back): the cell owns the reference again.
            self.cell.raw.set(data);
        } else {
            // The context changed meanwhile: everyone who took the frame out got a reference of
            // their own, so this one is released.
            // SAFETY: this guard owns the reference and gives it up exactly once, here.
            unsafe { ManuallyDrop::drop(&mut self.frame) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A store that counts its drops, to prove frames are neither leaked nor freed early.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counted(drops: &Arc<AtomicUsize>) -> Option<Option<Value>> {
        Some(Some(Arc::new(Counted(drops.clone()))))
    }

    fn read(frame: &Frame, key: u64) -> Option<u64> {
        frame
            .lookup(key)
            .and_then(|e| e.value.as_ref())
            .map(|v| *v.downcast_ref::<u64>().unwrap())
    }

    #[test]
    fn lent_frame_survives_the_cell_being_replaced() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = FrameCell::new();
        cell.set(Frame::EMPTY.with(1, counted(&drops)).with(2, value(20)));
        {
            let lent = cell.lend();
            // What `enter_with` does inside `with_store`: take, build, set.
            let taken = cell.take();
            cell.set(taken.with(2, value(21)));
            // And a `run` that replaces and restores, dropping the frames in between.
            let outer = cell.replace(Frame::EMPTY.with(3, value(30)));
            drop(cell.replace(outer));
            assert_eq!(read(lent.frame(), 2), Some(20));
            assert_eq!(read(&cell.get(), 2), Some(21));
            assert_eq!(drops.load(Ordering::SeqCst), 0);
        }
        // The changed cell keeps its frame; the lent one was released with its guard, but the
        // store it held is still shared by the new frame.
        assert_eq!(read(&cell.get(), 2), Some(21));
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(cell.take());
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn untouched_lend_gives_the_reference_back() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = FrameCell::new();
        cell.set(Frame::EMPTY.with(1, counted(&drops)));
        let before = cell.get();
        for _ in 0..3 {
            let lent = cell.lend();
            assert!(lent.frame().ptr_eq(&before));
            // Nested lends of the same frame are views.
            let inner = cell.lend();
            assert!(inner.frame().ptr_eq(&before));
        }
        // Two references: the cell's and `before`.
        assert_eq!(Arc::strong_count(before.0.as_ref().unwrap()), 2);
        drop(before);
        cell.set(Frame::EMPTY);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn lend_restored_after_take_and_put_back_is_released_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = FrameCell::new();
        cell.set(Frame::EMPTY.with(1, counted(&drops)));
        {
            let outer = cell.lend();
            // A poll swaps the frame out and back: the cell now owns a reference of its own.
            let swapped = cell.replace(Frame::EMPTY);
            cell.set(swapped);
            {
                // A nested lend of that reference, given back untouched.
                let inner = cell.lend();
                assert!(inner.frame().ptr_eq(outer.frame()));
            }
            assert!(outer.frame().lookup(1).is_some());
        }
        assert!(cell.get().lookup(1).is_some());
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        cell.set(Frame::EMPTY);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn lent_frame_is_released_when_the_cell_is_emptied() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = FrameCell::new();
        cell.set(Frame::EMPTY.with(1, counted(&drops)));
        {
            let lent = cell.lend();
            cell.set(Frame::EMPTY);
            // Still readable: the guard holds the only reference now.
            assert!(lent.frame().lookup(1).is_some());
            assert_eq!(drops.load(Ordering::SeqCst), 0);
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert!(cell.get().0.is_none());
    }

    #[test]
    fn lend_of_the_empty_frame_and_panics_inside_a_lend() {
        let cell = FrameCell::new();
        assert!(cell.lend().frame().0.is_none());
        let drops = Arc::new(AtomicUsize::new(0));
        cell.set(Frame::EMPTY.with(1, counted(&drops)));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _lent = cell.lend();
            panic!("inside with_store");
        }));
        assert!(result.is_err());
        // The guard gave the reference back during unwinding: the cell still owns it.
        assert!(cell.get().lookup(1).is_some());
        drop(cell.take());
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    fn keys_and_values(frame: &Frame) -> Vec<(u64, Option<u64>)> {
        frame
            .entries()
            .iter()
            .map(|e| {
                (
                    e.key,
                    e.value.as_ref().map(|v| *v.downcast_ref::<u64>().unwrap()),
                )
            })
            .collect()
    }

    fn value(v: u64) -> Option<Option<Value>> {
        Some(Some(Arc::new(v)))
    }

    #[test]
    fn frames_stay_sorted_through_inserts_replacements_and_removals() {
        let mut frame = Frame::EMPTY;
        // Insert out of order, growing past the inline capacity.
        for key in [5u64, 1, 3, 2, 4, 6] {
            frame = frame.with(key, value(key * 10));
        }
        assert_eq!(
            keys_and_values(&frame),
            [
                (1, Some(10)),
                (2, Some(20)),
                (3, Some(30)),
                (4, Some(40)),
                (5, Some(50)),
                (6, Some(60))
            ]
        );

        // Replace, mark exited, and remove back into the inline layout.
        frame = frame
            .with(3, value(33))
            .with(4, Some(None))
            .with(6, None)
            .with(1, None);
        assert_eq!(
            keys_and_values(&frame),
            [(2, Some(20)), (3, Some(33)), (4, None), (5, Some(50))]
        );
        assert!(frame.lookup(1).is_none());
        assert!(frame.lookup(4).is_some_and(|e| e.value.is_none()));

        // Removing an absent key shares the frame; removing everything gives the empty frame.
        assert!(frame.with(99, None).ptr_eq(&frame));
        let emptied = [2, 3, 4, 5]
            .into_iter()
            .fold(frame, |f, key| f.with(key, None));
        assert!(emptied.0.is_none());
    }

    #[test]
    fn lookups_use_binary_search_past_the_linear_threshold() {
        let frame = (0..100u64)
            .rev()
            .fold(Frame::EMPTY, |f, key| f.with(key * 2, value(key)));
        for key in 0..100u64 {
            let entry = frame.lookup(key * 2).expect("present");
            assert_eq!(
                *entry.value.as_ref().unwrap().downcast_ref::<u64>().unwrap(),
                key
            );
            assert!(frame.lookup(key * 2 + 1).is_none());
        }
    }
}
