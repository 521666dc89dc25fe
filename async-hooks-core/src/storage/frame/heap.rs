//! Heap frames: a header and its sorted entries in one allocation, shared by reference
//! counting, and the borrowed view that reads any frame. Relies on invariants 2, 4 and 6 at the
//! top of the `frame` module.

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::fmt;
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::slice;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering, fence};

use super::*;

/// One storage's entry in a frame. `value: None` means the storage was exited (`get_store()`
/// is `None`, not the default); a storage with no entry shows its default.
#[derive(Clone)]
pub(super) struct Entry {
    pub(super) key: u64,
    pub(super) value: Option<Value>,
}

/// Entries past this count are found by binary search instead of a linear scan.
pub(super) const LINEAR_SCAN_MAX: usize = 8;

/// An immutable storage context: a thin pointer to one allocation of a [`FrameHeader`] header
/// followed by its entries, shared by reference counting (null: the empty frame).
///
/// Thin on purpose: frames go in and out of the thread's `Cell`s on every poll and read, where
/// a 16-byte fat pointer costs store-forwarding stalls. One allocation with the entries inline,
/// so that a read goes from the thread's pointer straight to the entry: no pointer to a
/// separate entry array to load first.
#[derive(Default)]
pub(crate) struct SharedFrame(pub(super) Option<NonNull<FrameHeader>>);

/// The header of a frame. The entries, sorted by key, follow it directly: in the heap frame's
/// allocation, or in a [`StackFrame`]'s inline array.
///
/// Aligned to 8 so that the entries follow with no padding on 32-bit targets too.
#[repr(C, align(8))]
pub(super) struct FrameHeader {
    /// A heap frame's reference count (the `SharedFrame`s and cell references sharing it); unused,
    /// and left uninitialised, in a stack frame.
    pub(super) refs: AtomicUsize,
    /// The number of entries.
    pub(super) len: u32,
    /// The byte offset, from the header, just past the last entry: what a [`PositionHint`] (a
    /// byte offset too) is checked against, so that a hinted read scales no index. A stack
    /// frame's (or spill block's) is [`UNCOUNTED_END`] less, which is what marks it, and an
    /// [`EnteredFrame`]'s [`UNCACHED_END`] less again: the offsets are multiples of 4, so the
    /// hinted read's `offset < end` holds for the same offsets either way.
    pub(super) end: u32,
}

/// What a stack frame's `end` is less than its entries' end (see [`FrameHeader::end`]).
pub(super) const UNCOUNTED_END: u32 = 1;

/// What an [`EnteredFrame`]'s `end` is less than a [`StackFrame`]'s: the bit that tells a
/// promotion there is no `promoted` to keep a heap copy in.
pub(super) const UNCACHED_END: u32 = 2;

// Entry offsets and ends are multiples of 4, so that `UNCOUNTED_END` and `UNCACHED_END` change
// no hinted read and each is a bit of its own in a stack frame's `end`.
const _: () = assert!(FrameHeader::entry_offset(0) % 4 == 0 && size_of::<Entry>() % 4 == 0);
// `FrameHeader::write_stack` writes both in one store.
const _: () =
    assert!(std::mem::offset_of!(FrameHeader, end) == std::mem::offset_of!(FrameHeader, len) + 4);

impl FrameHeader {
    /// The header of a heap frame of `len` entries, with one reference.
    #[inline(always)]
    pub(super) fn heap(len: usize) -> FrameHeader {
        FrameHeader {
            refs: AtomicUsize::new(1),
            len: len as u32,
            end: FrameHeader::checked_end(len),
        }
    }

    /// The end of `len` entries.
    ///
    /// # Panics
    ///
    /// If it does not fit in 32 bits (over 178 million storages in one context, 4 GiB of
    /// entries).
    #[inline(always)]
    pub(super) fn checked_end(len: usize) -> u32 {
        let end = len
            .checked_mul(size_of::<Entry>())
            .and_then(|size| size.checked_add(size_of::<FrameHeader>()))
            .and_then(|end| u32::try_from(end).ok());
        end.expect("more storages in one context than a frame can hold")
    }

    /// Writes the header of a stack frame or spill block of `len` entries ending at `end`
    /// (from [`FrameHeader::entry_offset`] or [`FrameHeader::checked_end`]; [`UNCACHED_END`]
    /// less for an [`EnteredFrame`]). Its count stays uninitialised: nothing counts references
    /// to it, a store less on every `run`. The two fields go in one 8-byte store, which two
    /// 4-byte ones are slower than although they take fewer instructions (`run/4` in
    /// `benches/storage.rs`).
    ///
    /// # Safety
    ///
    /// `header` must be valid for writes.
    #[inline(always)]
    pub(super) unsafe fn write_stack(header: *mut FrameHeader, len: usize, end: u32) {
        let (len, end) = (u64::from(len as u32), u64::from(end - UNCOUNTED_END));
        // `len` then `end` in memory, whatever the byte order.
        let both = if cfg!(target_endian = "little") {
            len | end << 32
        } else {
            len << 32 | end
        };
        // SAFETY: per the caller; `end` follows `len` (asserted after `UNCOUNTED_END`). Unaligned: on
        // 32-bit targets `len` is at offset 4.
        unsafe { (&raw mut (*header).len).cast::<u64>().write_unaligned(both) };
    }

    /// The byte offset of entry `index` from the header.
    #[inline(always)]
    pub(super) const fn entry_offset(index: usize) -> usize {
        size_of::<FrameHeader>() + index * size_of::<Entry>()
    }
}

/// Where a storage's entry was last found in a frame, as the entry's byte offset from the
/// frame's header: a guess, checked before use. A storage sits at the same position in every
/// frame with the same set of storages, so most reads need no search. Only ever an entry's
/// offset ([`FrameHeader::entry_offset`]), which a hinted read relies on: one below a frame's
/// `end` is a whole entry of that frame.
pub(crate) struct PositionHint(pub(super) AtomicU32);

impl PositionHint {
    /// A hint at the first entry.
    pub(crate) const fn new() -> PositionHint {
        PositionHint(AtomicU32::new(FrameHeader::entry_offset(0) as u32))
    }

    /// Points the hint at entry `index` of a frame (which exists, so its offset fits).
    #[inline]
    pub(super) fn set(&self, index: usize) {
        self.0
            .store(FrameHeader::entry_offset(index) as u32, Ordering::Relaxed);
    }
}

// The entries start right after the header, with no padding, in both layouts.
const _: () = assert!(std::mem::offset_of!(StackFrame, inline) == size_of::<FrameHeader>());
const _: () = assert!(size_of::<FrameHeader>() % align_of::<Entry>() == 0);
const _: () = assert!(align_of::<FrameHeader>() >= align_of::<Entry>());

/// The layout of a heap frame of `len` entries.
pub(super) fn frame_layout(len: usize) -> Layout {
    let (layout, offset) = Layout::new::<FrameHeader>()
        .extend(Layout::array::<Entry>(len).expect("a frame's size overflows"))
        .expect("a frame's size overflows");
    debug_assert_eq!(offset, size_of::<FrameHeader>());
    layout.pad_to_align()
}

/// The entries of the frame at `raw`.
///
/// # Safety
///
/// `raw` must point to a live frame (heap or stack, untagged) with the provenance of the whole
/// frame, which stays alive for `'a`.
#[inline(always)]
pub(super) unsafe fn entries_of<'a>(raw: *const FrameHeader) -> &'a [Entry] {
    // SAFETY: per the caller; `len` initialised entries follow the header.
    unsafe { slice::from_raw_parts(raw.add(1).cast::<Entry>(), (*raw).len as usize) }
}

// SAFETY: a frame shares `Send + Sync` entries (`u64` and `Value`) through an atomic count,
// as an `Arc<[Entry]>` would. Stack frames are never behind a `SharedFrame`.
#[allow(unsafe_code)]
unsafe impl Send for SharedFrame {}
// SAFETY: see `Send`; the entries are never mutated after the frame is built.
#[allow(unsafe_code)]
unsafe impl Sync for SharedFrame {}

impl SharedFrame {
    /// A heap frame of the entries of `before`, then `own`, then those of `after` (together in
    /// key order), sharing the stores of the borrowed ones: they are copied as they are, then
    /// each store gets one reference more (a step that cannot fail, so no partly built frame
    /// ever needs undoing), and the thread counts one share for them all.
    pub(super) fn build(before: &[Entry], own: Option<Entry>, after: &[Entry]) -> SharedFrame {
        let len = before.len() + usize::from(own.is_some()) + after.len();
        if len == 0 {
            return SharedFrame(None);
        }
        let layout = frame_layout(len);
        // SAFETY: the layout has a non-zero size (the header).
        let raw = unsafe { alloc(layout) }.cast::<FrameHeader>();
        if raw.is_null() {
            handle_alloc_error(layout);
        }
        // SAFETY: `raw` is a fresh allocation for the header and `len` entries, each written
        // once here. The borrowed entries are bitwise copies, each given a reference of its own
        // right after (`retain` only increments a count, aborting on overflow as `Arc` does);
        // `own`'s reference moves in.
        unsafe {
            raw.write(FrameHeader::heap(len));
            let slots = raw.add(1).cast::<Entry>();
            // One loop per slice that copies and retains: with the copies apart, LLVM made
            // them `memcpy` calls, dearer than the copies for the usual handful of entries.
            let mut shared = false;
            let mut copy = |entries: &[Entry], to: *mut Entry| {
                for (i, entry) in entries.iter().enumerate() {
                    to.add(i).write(ptr::read(entry));
                    if let Some(value) = &entry.value {
                        value.retain_copy();
                        shared = true;
                    }
                }
            };
            copy(before, slots);
            let mut next = before.len();
            if let Some(own) = own {
                slots.add(next).write(own);
                next += 1;
            }
            copy(after, slots.add(next));
            if shared {
                Recycled::count_share();
            }
            SharedFrame(Some(NonNull::new_unchecked(raw)))
        }
    }

    /// The frame's pointer (null: empty), for identity comparisons and the thread's cell.
    #[inline(always)]
    pub(super) fn as_ptr(&self) -> *const FrameHeader {
        match self.0 {
            Some(raw) => raw.as_ptr(),
            None => ptr::null(),
        }
    }

    /// Gives up this frame's reference as a raw pointer (null: empty).
    #[inline(always)]
    pub(super) fn into_raw(self) -> *const FrameHeader {
        let raw = self.as_ptr();
        std::mem::forget(self);
        raw
    }

    /// Takes over the reference behind `raw`, from [`SharedFrame::into_raw`] (null: empty).
    ///
    /// # Safety
    ///
    /// `raw` must be null or an untagged heap frame pointer whose reference the caller owns.
    #[inline(always)]
    pub(super) unsafe fn from_raw(raw: *const FrameHeader) -> SharedFrame {
        SharedFrame(NonNull::new(raw.cast_mut()))
    }

    /// Adds a reference to the heap frame at `raw`.
    ///
    /// # Safety
    ///
    /// `raw` must be an untagged heap frame pointer whose frame a reference keeps alive.
    #[inline(always)]
    pub(super) unsafe fn retain(raw: *const FrameHeader) {
        // SAFETY: per the caller. Relaxed, as `Arc::clone`: a new reference is made from an
        // existing one, which keeps the frame alive.
        let old = unsafe { (*raw).refs.fetch_add(1, Ordering::Relaxed) };
        if old > isize::MAX as usize {
            std::process::abort();
        }
    }

    /// Frees the frame: its entries and its allocation.
    ///
    /// # Safety
    ///
    /// `raw` must be a heap frame whose last reference was just released.
    #[cold]
    #[inline(never)]
    pub(super) unsafe fn free(raw: *mut FrameHeader) {
        /// Frees the allocation once the entries are dropped, also when a store's `Drop`
        /// panics (`drop_in_place` still drops the other entries then), as a `Vec` does.
        struct Dealloc(*mut FrameHeader, usize);
        impl Drop for Dealloc {
            fn drop(&mut self) {
                // SAFETY: the allocation of a frame of this length, whose entries are dropped
                // (or being dropped by the unwinding `drop_in_place`), freed once, here.
                unsafe { dealloc(self.0.cast(), frame_layout(self.1)) }
            }
        }
        // SAFETY: per the caller: nothing else refers to the frame any more.
        unsafe {
            let len = (*raw).len as usize;
            let _dealloc = Dealloc(raw, len);
            ptr::drop_in_place(ptr::slice_from_raw_parts_mut(
                raw.add(1).cast::<Entry>(),
                len,
            ));
        }
    }
}

impl Clone for SharedFrame {
    #[inline]
    fn clone(&self) -> SharedFrame {
        if let Some(raw) = self.0 {
            // SAFETY: this frame's own reference keeps it alive.
            unsafe { SharedFrame::retain(raw.as_ptr()) };
        }
        SharedFrame(self.0)
    }
}

impl Drop for SharedFrame {
    #[inline]
    fn drop(&mut self) {
        if let Some(raw) = self.0 {
            // SAFETY: this frame owns a reference to a live heap frame. Release, then acquire
            // before freeing, as `Arc`'s drop: every use of the entries through other
            // references happens before they are freed.
            unsafe {
                if (*raw.as_ptr()).refs.fetch_sub(1, Ordering::Release) == 1 {
                    fence(Ordering::Acquire);
                    SharedFrame::free(raw.as_ptr());
                }
            }
        }
    }
}

/// A borrowed view of a frame, heap or stack: a thin pointer to its header, never null.
///
/// Thin, not a slice, so that a hinted read finds the length and the entry at fixed offsets
/// from the one pointer the cell holds, with no entry pointer or length kept in registers
/// (and none handed to the search when the hint misses).
#[derive(Clone, Copy)]
pub(crate) struct FrameView<'a> {
    /// Untagged, with the provenance of the whole frame (header and entries);
    /// [`EMPTY_HEADER`] for the empty frame.
    pub(super) data: NonNull<FrameHeader>,
    pub(super) _frame: PhantomData<&'a [Entry]>,
}

/// The header that [`FrameView::EMPTY`] points to: no entries, never counted or freed.
pub(super) static EMPTY_HEADER: FrameHeader = FrameHeader {
    refs: AtomicUsize::new(0),
    len: 0,
    end: FrameHeader::entry_offset(0) as u32,
};

impl<'a> FrameView<'a> {
    pub(super) const EMPTY: FrameView<'static> = FrameView {
        // SAFETY: a static is never null.
        data: unsafe { NonNull::new_unchecked(ptr::from_ref(&EMPTY_HEADER).cast_mut()) },
        _frame: PhantomData,
    };

    /// # Safety
    ///
    /// `data` must point to a live frame (untagged) with the provenance of the whole frame,
    /// which stays alive for `'a`.
    #[inline(always)]
    pub(super) unsafe fn new(data: NonNull<FrameHeader>) -> FrameView<'a> {
        FrameView {
            data,
            _frame: PhantomData,
        }
    }

    /// The entries, sorted by key.
    #[inline(always)]
    pub(super) fn entries(self) -> &'a [Entry] {
        // SAFETY: see the field; the frame outlives `'a`.
        unsafe { entries_of(self.data.as_ptr()) }
    }

    /// The entry of `key`: `None` if the storage has none in this frame.
    #[inline]
    pub(super) fn lookup(self, key: u64) -> Option<&'a Entry> {
        self.position(key).map(|i| &self.entries()[i])
    }

    #[inline]
    pub(super) fn position(self, key: u64) -> Option<usize> {
        let entries = self.entries();
        if entries.len() <= LINEAR_SCAN_MAX {
            entries.iter().position(|e| e.key == key)
        } else {
            entries.binary_search_by_key(&key, |e| e.key).ok()
        }
    }

    /// The store of `key`'s entry if it sits where `hint` points; `None` says nothing about
    /// the other positions (see [`FrameView::lookup_searched`]).
    #[inline(always)]
    pub(super) fn lookup_at_hint<T: Send + Sync + 'static>(
        self,
        key: Key<T>,
        hint: &PositionHint,
    ) -> Option<StoreRef<'a, T>> {
        // A byte offset from the header, compared with the header's `end`: no index to scale
        // and no entries' start to rebuild the entry's address from after the key compare.
        let offset = hint.0.load(Ordering::Relaxed);
        // SAFETY: `data` points to a live header (see the field).
        if offset < unsafe { (*self.data.as_ptr()).end } {
            // SAFETY: a hint is only ever an entry's offset (see `PositionHint`), and this one
            // is below the frame's end, so the entry is one of its live ones.
            let entry = unsafe { &*self.data.as_ptr().byte_add(offset as usize).cast::<Entry>() };
            if entry.key == key.raw {
                return Some(StoreRef::new(entry, key));
            }
        }
        None
    }

    /// The search for `key` where [`FrameView::lookup_at_hint`] missed: it updates the hint.
    /// Out of line, so that the hinted hit stays small.
    #[cold]
    #[inline(never)]
    pub(super) fn lookup_searched<T: Send + Sync + 'static>(
        self,
        key: Key<T>,
        hint: &PositionHint,
    ) -> Option<StoreRef<'a, T>> {
        let found = self.position(key.raw)?;
        hint.set(found);
        Some(StoreRef::new(&self.entries()[found], key))
    }

    /// `key`'s entry as it is in this frame, to put back later.
    pub(crate) fn save(self, key: u64) -> SavedEntry {
        SavedEntry {
            key,
            value: self.lookup(key).map(|entry| entry.value.clone()),
        }
    }

    /// This frame with `key` set to `value` (`None`: removed), as a new heap frame. `None` when
    /// nothing changes (removing an absent key).
    pub(super) fn with(self, key: u64, value: Option<Option<Value>>) -> Option<SharedFrame> {
        let entries = self.entries();
        let (before, own, after) = match (entries.binary_search_by_key(&key, |e| e.key), value) {
            (Ok(i), Some(value)) => (&entries[..i], Some(Entry { key, value }), &entries[i + 1..]),
            (Ok(i), None) => (&entries[..i], None, &entries[i + 1..]),
            (Err(i), Some(value)) => (&entries[..i], Some(Entry { key, value }), &entries[i..]),
            (Err(_), None) => return None,
        };
        Some(SharedFrame::build(before, own, after))
    }
}

impl SharedFrame {
    #[cfg(test)]
    pub(super) const EMPTY: SharedFrame = SharedFrame(None);

    #[inline]
    pub(super) fn view(&self) -> FrameView<'_> {
        match self.0 {
            // SAFETY: this frame's reference keeps it alive while `self` is borrowed.
            Some(raw) => unsafe { FrameView::new(raw) },
            None => FrameView::EMPTY,
        }
    }

    #[cfg(test)]
    pub(super) fn entries(&self) -> &[Entry] {
        self.view().entries()
    }

    /// The entry of `key`: `None` if the storage has none in this frame.
    #[cfg(test)]
    pub(super) fn lookup(&self, key: u64) -> Option<&Entry> {
        self.view().lookup(key)
    }

    /// This frame with `key` set to `entry` (`None`: removed).
    pub(super) fn with(&self, key: u64, value: Option<Option<Value>>) -> SharedFrame {
        match self.view().with(key, value) {
            Some(frame) => frame,
            None => self.clone(),
        }
    }

    /// This frame with `key`'s store set to `store`.
    pub(crate) fn with_store<T: Send + Sync + 'static>(
        &self,
        key: Key<T>,
        store: T,
    ) -> SharedFrame {
        self.with(key.raw, Some(Some(Value::new(Arc::new(store)))))
    }

    /// This frame without an entry for `key`.
    pub(crate) fn without(&self, key: u64) -> SharedFrame {
        self.with(key, None)
    }

    /// This frame with the saved entry put back as it was (removed, if there was none).
    pub(crate) fn restore(&self, saved: SavedEntry) -> SharedFrame {
        self.with(saved.key, saved.value)
    }

    /// `key`'s entry as it is in this frame, to put back later.
    pub(crate) fn save(&self, key: u64) -> SavedEntry {
        self.view().save(key)
    }

    pub(crate) fn ptr_eq(&self, other: &SharedFrame) -> bool {
        self.0 == other.0
    }
}

impl fmt::Debug for SharedFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.view().entries().iter().map(|e| e.key))
            .finish()
    }
}
