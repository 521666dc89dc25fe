//! Stack frames: the frame of a synchronous scope (`run`, `exit`, a `Scope` poll), built on
//! the scope's own stack, or with its entries in a spill block when they are too many, and the
//! one-entry frame an entered execution builds for a captured frame kept inline. Relies on
//! invariants 1, 3 and 5 at the top of the `frame` module.

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::cell::Cell;
use std::marker::{PhantomData, PhantomPinned};
use std::mem::{ManuallyDrop, MaybeUninit};
use std::ptr::{self};

use super::*;

impl CurrentFrame {
    /// Runs `f` in the current frame with `key`'s entry set to `value` (`None`: exited): a
    /// [`StackFrame`] built on this stack with no allocation when it needs at most
    /// [`STACK_ENTRIES`] entries, else with its entries in a [`SpillBlock`] (one allocation).
    /// Afterwards (also on panic) the previous frame is put back as it was; if the code inside
    /// replaced this frame with another one (what `enter_with` and `disable` do), the frame
    /// put back is `restore(that frame, previous, key)`.
    #[inline]
    pub(crate) fn run_with_entry<T: Send + Sync + 'static, R>(
        &self,
        key: Key<T>,
        value: Option<FreshValue<T>>,
        f: impl FnOnce() -> R,
        restore: impl FnOnce(&SharedFrame, FrameView<'_>, u64) -> SharedFrame,
    ) -> R {
        let value = value.map(FreshValue::into_value);
        self.run_scope::<OwnedStore<T>, R>(key.raw, value, f, restore)
    }

    /// [`CurrentFrame::run_with_entry`] with a store that the caller keeps (a [`Scope`] future's,
    /// for one poll): the entry borrows `value`, and the scope's end releases nothing, so a poll
    /// costs no reference count. A capture inside takes references of its own, as always.
    ///
    /// [`Scope`]: crate::storage::Scope
    #[inline]
    pub(crate) fn run_with_borrowed_entry<T, R>(
        &self,
        key: Key<T>,
        value: &KeptValue<T>,
        f: impl FnOnce() -> R,
        restore: impl FnOnce(&SharedFrame, FrameView<'_>, u64) -> SharedFrame,
    ) -> R {
        // SAFETY: a bitwise copy, which the scope never releases (`BorrowedStore`: its end
        // forgets it), of a reference the caller keeps for this whole call.
        let value = unsafe { ptr::read(value.value()) };
        self.run_scope::<BorrowedStore, R>(key.raw, Some(value), f, restore)
    }

    /// The body of [`CurrentFrame::run_with_entry`] ([`OwnedStore`]: the scope owns `value`, a
    /// fresh store, and releases it at the end) and [`CurrentFrame::run_with_borrowed_entry`]
    /// ([`BorrowedStore`]: `value` is a bitwise copy, forgotten at the end).
    #[inline(always)]
    pub(super) fn run_scope<S: ScopeStore, R>(
        &self,
        key: u64,
        value: Option<Value>,
        f: impl FnOnce() -> R,
        restore: impl FnOnce(&SharedFrame, FrameView<'_>, u64) -> SharedFrame,
    ) -> R {
        // Read before the frame is built, so that the count covers every share from here to
        // the scope's end.
        let shares = Recycled::shares();
        let previous = self.raw.get();
        // Built in place: the frame must not move once the cell points at it, and building it
        // elsewhere and copying it in cost a `memmove` call and a store-forwarding stall.
        let mut slot = MaybeUninit::<StackFrame>::uninit();
        let frame = slot.as_mut_ptr();
        // SAFETY: `frame` is valid for writes and stays in place until `StackScope` drops it; every
        // access from here on goes through this one pointer. `previous` is in the cell; its
        // owner stays alive for this whole call: the cell's own reference passes to `StackScope`
        // below, a lender or an outer stack frame is higher up the stack.
        let (installed, value) = unsafe { StackFrame::init(frame, previous, key, value) };
        self.raw.set(installed);
        let leave = StackScope::<S, _> {
            cell: self,
            frame,
            previous,
            value,
            key,
            shares,
            restore: Some(restore),
            _store: PhantomData,
        };
        let result = f();
        leave.end();
        result
    }
}

/// Who owns the store of a stack frame's own entry.
pub(super) trait ScopeStore {
    /// The store's type, for its release.
    type Store: Send + Sync + 'static;
    /// Whether the scope releases the store at its end (else it forgets its bitwise copy).
    const OWNED: bool;
}

/// The scope owns its store, a [`FreshValue<T>`] ([`CurrentFrame::run_with_entry`]).
pub(super) struct OwnedStore<T>(pub(super) PhantomData<fn() -> T>);

impl<T: Send + Sync + 'static> ScopeStore for OwnedStore<T> {
    type Store = T;
    const OWNED: bool = true;
}

/// The scope borrows its store from a [`KeptValue`] ([`CurrentFrame::run_with_borrowed_entry`]).
pub(super) struct BorrowedStore;

impl ScopeStore for BorrowedStore {
    // Never released, so never typed.
    type Store = ();
    const OWNED: bool = false;
}

/// Puts the previous frame back when a [`CurrentFrame::run_with_entry`] scope ends, then drops the
/// stack frame.
pub(super) struct StackScope<
    'a,
    S: ScopeStore,
    Restore: FnOnce(&SharedFrame, FrameView<'_>, u64) -> SharedFrame,
> {
    cell: &'a CurrentFrame,
    frame: *mut StackFrame,
    /// The cell's pointer before the scope, put back as it was (with the ownership it had).
    previous: *const FrameHeader,
    /// The reference to the scope's own store, which the stack frame's entry copies (`None`
    /// for `exit`, or when the frame spilled: its block holds it then). A local, not a
    /// field of the stack frame, so that it stays in registers across the scope's call.
    value: Option<Value>,
    /// The storage's key: also where the scope's store goes in the thread's [`Recycled`]
    /// cache.
    key: u64,
    /// [`Recycled::shares`] before the scope's store went in: still the same at the end, the
    /// store was never shared.
    shares: u64,
    restore: Option<Restore>,
    /// Who owns the scope's store.
    _store: PhantomData<S>,
}

impl<S: ScopeStore, Restore: FnOnce(&SharedFrame, FrameView<'_>, u64) -> SharedFrame>
    StackScope<'_, S, Restore>
{
    /// The end of a scope whose stack frame is no longer in the cell as itself: a capture left
    /// its promoted copy there, the entries are in a [`SpillBlock`] block, or the code inside
    /// changed the context. Takes the guard's fields by value, so that the guard's address is
    /// never taken and it can live in registers.
    ///
    /// A store dropped here (one the code inside entered for this scope's storage) may panic
    /// in its `Drop`: the scope's own stack frame and store are then still released, by
    /// `Release`, once the cell no longer points at it.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn leave_moved(
        cell: &CurrentFrame,
        frame: *mut StackFrame,
        previous: *const FrameHeader,
        restore: Option<Restore>,
        current: *const FrameHeader,
        value: Option<Value>,
        key: u64,
        shares: u64,
    ) {
        struct Release<S: ScopeStore> {
            frame: *mut StackFrame,
            value: Option<Value>,
            slot: usize,
            shares: u64,
            _store: PhantomData<S>,
        }
        impl<S: ScopeStore> Drop for Release<S> {
            fn drop(&mut self) {
                // SAFETY: at the end of `leave_moved` or while unwinding out of it, whose every
                // panicking step comes after the cell stopped pointing at the stack frame (or its
                // spill block, freed first: of its entries only the own one holds a reference,
                // the scope's store, released with the rest).
                unsafe {
                    // The scope's store: its own, or the one its spill block held.
                    let value = owned::<S>(self.value.take().or(SpillBlock::release(self.frame)));
                    let promoted = (*self.frame).promoted.get();
                    if promoted.is_null() {
                        release_stack_frame::<S::Store>(self.frame, value, self.slot, self.shares)
                    } else {
                        // Already out of line: no second call for the usual case here.
                        release_heap_copy_then_store(promoted, value, self.slot)
                    }
                }
            }
        }
        // Releases the stack frame and the scope's store last, also if a step below panics.
        let release = Release::<S> {
            frame,
            value,
            slot: key as usize,
            shares,
            _store: PhantomData,
        };
        // SAFETY: the stack frame lives until after this guard (see `CurrentFrame::run_scope`).
        let (promoted, spilled) =
            unsafe { ((*frame).promoted.get(), SpillBlock::installed(frame)) };
        if spilled == Some(current) {
            // The frame's entries went to a spill block, still in the cell as itself.
            cell.raw.set(previous);
        } else if current == promoted && !promoted.is_null() {
            // A capture left the stack frame's promoted copy in the cell: the cell owns a
            // reference to that copy, released here (the stack frame releases its own).
            cell.raw.set(previous);
            // SAFETY: an untagged pointer in the cell is the cell's reference.
            drop(unsafe { SharedFrame::from_raw(promoted) });
        } else {
            // The code inside changed the context; every lend and stack frame inside it has ended,
            // so the cell holds a heap frame (or none) of its own.
            let current = cell.take();
            // SAFETY: the previous frame's owner is alive: this scope (untagged), a lender or an
            // outer stack frame.
            let previous_frame = unsafe { CurrentFrame::view(previous) };
            let restore = restore.expect("a scope is left once");
            cell.set(restore(&current, previous_frame, key));
            if !previous.is_null() && previous.addr() & UNOWNED == 0 {
                // The cell's reference to the previous frame passed to this scope; nothing
                // holds it any more.
                // SAFETY: an untagged pointer in the cell is a heap frame reference, released
                // exactly once, here.
                drop(unsafe { SharedFrame::from_raw(previous) });
            }
            drop(current);
        }
        drop(release);
    }
}

impl<'a, S: ScopeStore, Restore: FnOnce(&SharedFrame, FrameView<'_>, u64) -> SharedFrame>
    StackScope<'a, S, Restore>
{
    /// Ends the scope: the normal way out of [`CurrentFrame::run_with_entry`]. The guard's drop
    /// only runs while unwinding; it hands the fields by value to one out-of-line call, which
    /// LLVM inlines into the landing pad, so the guard need not be stored on the stack for it
    /// (see `Entered::leave`).
    #[inline(always)]
    fn end(mut self) {
        let restore = self.restore.take();
        let value = self.value.take();
        let this = ManuallyDrop::new(self);
        Self::put_back(
            this.cell,
            this.frame,
            this.previous,
            value,
            this.key,
            this.shares,
            restore,
        );
    }

    // Inlined into `run`: the common end (the stack frame still in the cell as itself) is a
    // compare and a store; the rest is out of line.
    #[inline(always)]
    fn put_back(
        cell: &CurrentFrame,
        frame: *mut StackFrame,
        previous: *const FrameHeader,
        value: Option<Value>,
        key: u64,
        shares: u64,
        restore: Option<Restore>,
    ) {
        let current = cell.raw.get();
        let stack = frame.cast_const().cast::<FrameHeader>();
        if current == stack.map_addr(|addr| addr | UNOWNED) {
            cell.raw.set(previous);
            // SAFETY: the stack frame is no longer pointed at by the cell, and released once,
            // here.
            unsafe {
                release_stack_frame::<S::Store>(frame, owned::<S>(value), key as usize, shares)
            };
        } else {
            Self::leave_moved(cell, frame, previous, restore, current, value, key, shares);
        }
    }

    /// [`StackScope::end`] while unwinding, from the fields.
    #[cold]
    #[inline(never)]
    fn end_unwinding(
        cell: &'a CurrentFrame,
        frame: *mut StackFrame,
        previous: *const FrameHeader,
        value: Option<Value>,
        key: u64,
        shares: u64,
        restore: Option<Restore>,
    ) {
        Self::put_back(cell, frame, previous, value, key, shares, restore);
    }
}

impl<S: ScopeStore, Restore: FnOnce(&SharedFrame, FrameView<'_>, u64) -> SharedFrame> Drop
    for StackScope<'_, S, Restore>
{
    /// Reached only while unwinding: the scope ends with [`StackScope::end`]. (Dropping the guard
    /// anywhere else would still end the scope, just out of line.)
    #[inline(always)]
    fn drop(&mut self) {
        Self::end_unwinding(
            self.cell,
            self.frame,
            self.previous,
            self.value.take(),
            self.key,
            self.shares,
            self.restore.take(),
        );
    }
}

/// The scope's store to release at its end: `value` when the scope owns it; nothing when it
/// borrowed it ([`CurrentFrame::run_with_borrowed_entry`]), whose bitwise copy is forgotten.
#[inline(always)]
pub(super) fn owned<S: ScopeStore>(value: Option<Value>) -> Option<Value> {
    if S::OWNED {
        value
    } else {
        std::mem::forget(value);
        None
    }
}

/// Releases the stack frame's heap copy, if a capture made one, then the scope's own store,
/// `value` (recycled when nothing shared it).
///
/// # Safety
///
/// `frame` must be initialised by `StackFrame::init`, no longer pointed at by the cell, and
/// released once; `value` must be the store `init` handed back for it, or the one its spill
/// block held ([`SpillBlock::release`]).
#[inline(always)]
pub(super) unsafe fn release_stack_frame<T: Send + Sync + 'static>(
    frame: *mut StackFrame,
    value: Option<Value>,
    slot: usize,
    shares: u64,
) {
    match value {
        // Nothing on this thread added a reference to any store since the scope began: nor did
        // a capture promote the stack frame, as its heap copy takes a reference to every store
        // of the frame, the own one too. So the usual end tests one count, not also `promoted`.
        Some(value) if Recycled::shares() == shares => {
            // SAFETY: per the caller, the stack frame is initialised.
            debug_assert!(unsafe { (*frame).promoted.get() }.is_null());
            // SAFETY: the store was fresh when the scope began (`run_with_entry` takes a
            // `FreshValue`) and nothing on this thread has added a reference to any store
            // since. Only this thread could reach it: through the stack frame (or its spill
            // block), which only this thread's cell pointed at, and through bitwise copies of
            // its entry in nested stack frames, which hold no reference and ended before this
            // scope.
            // And it is a `T`: the `FreshValue<T>` the scope began with.
            unsafe { value.recycle_unshared::<T>(slot) };
        }
        value => {
            // SAFETY: per the caller, the stack frame is initialised.
            let promoted = unsafe { (*frame).promoted.get() };
            if !promoted.is_null() {
                // SAFETY: the stack frame's own reference to its heap copy, released once (the
                // frame has no `Drop`).
                return unsafe { release_promoted(promoted, value, slot) };
            }
            if let Some(value) = value {
                value.recycle(slot);
            }
        }
    }
}

/// [`release_stack_frame`] of a promoted stack frame: the heap copy first, as it shares the
/// store. Out of line, so that on the usual path nothing that can unwind runs while the store
/// is held (the store had to be spilled to the stack for the landing pad).
///
/// # Safety
///
/// `promoted` must be a stack frame's reference to its heap copy, released once.
#[cold]
#[inline(never)]
pub(super) unsafe fn release_promoted(
    promoted: *const FrameHeader,
    value: Option<Value>,
    slot: usize,
) {
    // SAFETY: per the caller.
    unsafe { release_heap_copy_then_store(promoted, value, slot) }
}

/// The body of [`release_promoted`].
///
/// # Safety
///
/// As for [`release_promoted`].
#[inline(always)]
pub(super) unsafe fn release_heap_copy_then_store(
    promoted: *const FrameHeader,
    value: Option<Value>,
    slot: usize,
) {
    // SAFETY: per the caller.
    drop(unsafe { SharedFrame::from_raw(promoted) });
    if let Some(value) = value {
        value.recycle(slot);
    }
}

/// The inline capacity of a [`StackFrame`]: a frame that needs more entries keeps them in a
/// [`SpillBlock`] block.
pub(super) const STACK_ENTRIES: usize = 4;

/// A frame on the stack of a synchronous scope ([`CurrentFrame::run_with_entry`]).
///
/// Its entries are bitwise copies of the previous frame's, which outlives it, plus its own entry
/// at its sorted place, a copy of the store that its scope ([`StackScope`]) owns. Nothing but the
/// thread's cell points at it; whatever needs the frame beyond the scope
/// [promotes](StackFrame::promote) it to a heap copy, made once and shared.
#[repr(C)]
pub(super) struct StackFrame {
    /// First, so that a pointer to the stack frame is also one to its `FrameHeader`.
    pub(super) header: FrameHeader,
    /// The entries, right after the header as in a heap frame; never dropped (they are not
    /// owned).
    pub(super) inline: [MaybeUninit<Entry>; STACK_ENTRIES],
    /// The heap copy, once promoted (null until then); the stack frame owns one reference,
    /// released by `release_stack_frame` (a stack frame has no `Drop`).
    pub(super) promoted: Cell<*const FrameHeader>,
    pub(super) _pinned: PhantomPinned,
}

/// The frame an entered execution builds on its stack for a [`CapturedFrame`] kept inline: a
/// header and its one entry, a bitwise copy of the captured store, which the execution holds
/// while it is entered. Unlike a [`StackFrame`] it has nowhere to keep a heap copy (its header's
/// `end` is [`UNCACHED_END`] less, which tells): a promotion makes a copy for its caller alone,
/// so that leaving it releases nothing.
#[repr(C)]
pub(super) struct EnteredFrame {
    /// First, so that a pointer to the frame is also one to its `FrameHeader`.
    pub(super) header: FrameHeader,
    pub(super) entry: MaybeUninit<Entry>,
    pub(super) _pinned: PhantomPinned,
}

const _: () = assert!(std::mem::offset_of!(EnteredFrame, entry) == size_of::<FrameHeader>());

impl EnteredFrame {
    /// Builds, in place at `frame`, the frame of `key`'s entry with a bitwise copy of `value`,
    /// and returns the pointer to put in the cell (tagged [`UNOWNED`]).
    ///
    /// `#[inline]`, not always: optimised, it inlines into the poll; unoptimised, its locals stay
    /// out of the frame of every entered execution, which deep nesting multiplies.
    ///
    /// # Safety
    ///
    /// `frame` must be valid for writes and must not move while the result is in use; `value`
    /// must outlive that use (the frame never releases its copy).
    #[inline]
    pub(super) unsafe fn init(
        frame: *mut EnteredFrame,
        key: u64,
        value: &Value,
    ) -> *const FrameHeader {
        // SAFETY: per the caller. The entry borrows `value`'s reference; the header's count stays
        // uninitialised, as a stack frame's does.
        unsafe {
            (&raw mut (*frame).entry).cast::<Entry>().write(Entry {
                key,
                value: Some(ptr::read(value)),
            });
            let end = FrameHeader::entry_offset(1) as u32 - UNCACHED_END;
            FrameHeader::write_stack(&raw mut (*frame).header, 1, end);
        }
        frame
            .cast_const()
            .cast::<FrameHeader>()
            .map_addr(|addr| addr | UNOWNED)
    }
}

/// Where a [`StackFrame`] too large for its inline array keeps its entries: a heap block of
/// the owner pointer (to the stack frame's `promoted`, for [`StackFrame::promote`]), then a
/// header and the entries as in a frame. The stack frame marks its own header's length with
/// [`SpillBlock::MARK`] and keeps this in its inline array; the block is freed when the scope ends.
/// Its entries are bitwise copies of the previous frame's, which outlives it, except the
/// scope's own entry, which holds the scope's store.
#[derive(Clone, Copy)]
pub(super) struct SpillBlock {
    pub(super) block: *mut u8,
    /// The number of entries.
    pub(super) len: usize,
    /// The position of the scope's own entry, the one entry the block owns.
    pub(super) own: usize,
}

const _: () = assert!(size_of::<SpillBlock>() <= size_of::<[MaybeUninit<Entry>; STACK_ENTRIES]>());
const _: () = assert!(align_of::<SpillBlock>() <= align_of::<Entry>());

impl SpillBlock {
    /// The bytes before the header: the owner pointer, padded to the header's alignment (on
    /// 32-bit targets the pointer is 4 bytes and the header is aligned to 8).
    pub(super) const HEADER: usize =
        size_of::<*const Cell<*const FrameHeader>>().next_multiple_of(align_of::<FrameHeader>());
    /// The length a stack frame with a spill block has in its own header (a real one is at most
    /// [`STACK_ENTRIES`]).
    pub(super) const MARK: u32 = u32::MAX;

    pub(super) fn layout(len: usize) -> Layout {
        let (layout, offset) = Layout::new::<*const Cell<*const FrameHeader>>()
            .extend(frame_layout(len))
            .expect("a frame's size overflows");
        debug_assert_eq!(offset, SpillBlock::HEADER);
        layout.pad_to_align()
    }

    /// `frame`'s spill block, if it has one.
    ///
    /// # Safety
    ///
    /// `frame` must be initialised by [`StackFrame::init`] and not yet released.
    #[inline]
    pub(super) unsafe fn of(frame: *const StackFrame) -> Option<SpillBlock> {
        // SAFETY: per the caller, the header's length is written, and with the mark the inline
        // array holds a `SpillBlock`.
        unsafe {
            ((*frame).header.len == SpillBlock::MARK)
                .then(|| (&raw const (*frame).inline).cast::<SpillBlock>().read())
        }
    }

    /// The block's header, after the owner pointer.
    ///
    /// # Safety
    ///
    /// `block` must be a block of [`SpillBlock::layout`].
    #[inline]
    pub(super) unsafe fn header(block: *mut u8) -> *mut FrameHeader {
        // SAFETY: per the caller, the header is in the block.
        unsafe { block.add(SpillBlock::HEADER).cast::<FrameHeader>() }
    }

    /// The cell pointer of `frame`'s spill block, if it has one.
    ///
    /// # Safety
    ///
    /// As for [`SpillBlock::of`].
    #[inline]
    pub(super) unsafe fn installed(frame: *const StackFrame) -> Option<*const FrameHeader> {
        // SAFETY: per the caller; the block is `frame`'s.
        unsafe { SpillBlock::of(frame) }.map(|spill| {
            // SAFETY: the block is live (see above).
            let header = unsafe { SpillBlock::header(spill.block) };
            header.cast_const().map_addr(|addr| addr | UNOWNED)
        })
    }

    /// Frees `frame`'s spill block, if it has one, and returns the scope's store that its own
    /// entry held, for the caller to release as a stack frame's scope does.
    ///
    /// # Safety
    ///
    /// `frame` must be initialised by [`StackFrame::init`], no longer pointed at by the cell
    /// (nor its block), and released once.
    pub(super) unsafe fn release(frame: *mut StackFrame) -> Option<Value> {
        // SAFETY: per the caller, as in `installed`; nothing points at the block any more, and
        // of its entries only the own one holds a reference, taken out here, once.
        unsafe {
            let spill = SpillBlock::of(frame)?;
            let entries = SpillBlock::header(spill.block).add(1).cast::<Entry>();
            let own = entries.add(spill.own).read();
            dealloc(spill.block, SpillBlock::layout(spill.len));
            own.value
        }
    }
}

impl StackFrame {
    /// Builds, in place at `frame`, the frame over `base` with `key` set to `value`: on the stack
    /// when it needs at most [`STACK_ENTRIES`] entries, else in a [`SpillBlock`] block.
    /// Returns the pointer to put in the cell (the stack frame or its block, tagged [`UNOWNED`])
    /// and the reference to `value` that the scope keeps while the stack frame's entry copies
    /// it (`None` when the spill block took it).
    ///
    /// # Safety
    ///
    /// `frame` must be valid for writes and must not move while the result is in use; `base`
    /// is a cell's pointer (tagged or not, null for the empty frame) whose frame must outlive
    /// it (the stack entries are copied without their references).
    #[inline(always)]
    pub(super) unsafe fn init(
        frame: *mut StackFrame,
        base: *const FrameHeader,
        key: u64,
        value: Option<Value>,
    ) -> (*const FrameHeader, Option<Value>) {
        // The entries as a slice, with the empty frame's length a constant on its own path (a
        // `FrameView` of it would load the length from the shared empty header).
        // SAFETY: per the caller.
        let entries = unsafe { CurrentFrame::entries_at(base) };
        if entries.is_empty() {
            // The common case of a `run` at the top of a request: no search, no copies.
            // SAFETY: `frame` is valid for writes (per the caller); the entry is a bitwise copy
            // of `value`, whose reference the caller keeps (the entry borrows it).
            unsafe {
                (&raw mut (*frame).inline).cast::<Entry>().write(Entry {
                    key,
                    value: ptr::read(&value),
                });
                return (StackFrame::finish(frame, 1), value);
            }
        }
        if entries.len() > STACK_ENTRIES {
            // At least as many entries with this one's set: too many for the stack.
            // SAFETY: the caller's promises, passed on.
            return (
                unsafe { StackFrame::init_spilled(frame, entries, key, value) },
                None,
            );
        }
        // The (sorted) base entries below the key are copied one by one while looking for the
        // key's place, then the own entry (over the key's old entry, if any), then the rest in
        // one copy of a fixed size per count, which LLVM turns into moves (a copy loop would
        // become a `memcpy` call), with no test of the capacity or of the own entry per entry
        // (`shape_run_4_calling`, `shape_run_4_calling_last`).
        //
        // SAFETY: `frame` is valid for writes (per the caller). The slots written are within
        // `inline`: the first loop writes at most as many as the base has (at most
        // `STACK_ENTRIES`, checked above), and the own entry and the rest only after the total
        // is checked against `STACK_ENTRIES`. The entries are bitwise copies, never dropped:
        // they borrow the base entries' references, and the own entry borrows the reference
        // that `value` keeps, handed back to the caller. Slots written before a fall back to the
        // heap are plain data, overwritten by it.
        unsafe {
            let slots = (&raw mut (*frame).inline).cast::<Entry>();
            let mut len = 0;
            let mut rest = entries;
            while let [entry, tail @ ..] = rest
                && entry.key < key
            {
                slots.add(len).write(ptr::read(entry));
                len += 1;
                rest = tail;
            }
            if let [entry, tail @ ..] = rest
                && entry.key == key
            {
                // Replaced by the own entry.
                rest = tail;
            }
            if len + 1 + rest.len() > STACK_ENTRIES {
                return (StackFrame::init_spilled(frame, entries, key, value), None);
            }
            slots.add(len).write(Entry {
                key,
                value: ptr::read(&value),
            });
            len += 1;
            let from = rest.as_ptr();
            let to = slots.add(len);
            match rest.len() {
                0 => {}
                1 => ptr::copy_nonoverlapping(from, to, 1),
                2 => ptr::copy_nonoverlapping(from, to, 2),
                count => {
                    debug_assert_eq!(count, STACK_ENTRIES - 1);
                    ptr::copy_nonoverlapping(from, to, STACK_ENTRIES - 1);
                }
            }
            len += rest.len();
            (StackFrame::finish(frame, len), value)
        }
    }

    /// Writes the rest of a stack frame whose `len` entries are written, and returns the cell
    /// pointer for it.
    ///
    /// # Safety
    ///
    /// `frame` must be valid for writes, with its first `len` entries written.
    #[inline(always)]
    pub(super) unsafe fn finish(frame: *mut StackFrame, len: usize) -> *const FrameHeader {
        // SAFETY: per the caller.
        unsafe {
            (&raw mut (*frame).promoted).write(Cell::new(ptr::null()));
            debug_assert!(len <= STACK_ENTRIES);
            FrameHeader::write_stack(
                &raw mut (*frame).header,
                len,
                FrameHeader::entry_offset(len) as u32,
            );
        }
        frame
            .cast_const()
            .cast::<FrameHeader>()
            .map_addr(|addr| addr | UNOWNED)
    }

    /// [`StackFrame::init`] for a frame too large for the stack: its entries go to a [`SpillBlock`]
    /// block on the heap, and the stack frame keeps the block. The base's entries are bitwise
    /// copies, as on the stack (no reference counted, however many there are); the own entry
    /// takes `value` over, so that `run` keeps no store across this call (one kept would go to
    /// memory on every `run`). Returns the cell pointer for the block, tagged [`UNOWNED`] like a
    /// stack frame's.
    ///
    /// # Safety
    ///
    /// As for [`StackFrame::init`]; `base` must be the entries of `init`'s `base`.
    #[cold]
    #[inline(never)]
    pub(super) unsafe fn init_spilled(
        frame: *mut StackFrame,
        base: &[Entry],
        key: u64,
        value: Option<Value>,
    ) -> *const FrameHeader {
        let at = base.partition_point(|entry| entry.key < key);
        let replaced = base.get(at).is_some_and(|entry| entry.key == key);
        let after = &base[at + usize::from(replaced)..];
        let len = at + 1 + after.len();
        let layout = SpillBlock::layout(len);
        // SAFETY: the layout has a non-zero size (the owner pointer and the header).
        let block = unsafe { alloc(layout) };
        if block.is_null() {
            handle_alloc_error(layout);
        }
        // SAFETY: `block` is a fresh allocation of `SpillBlock::layout(len)`: the owner pointer, then
        // the header, then `len` entries, each written once here. The base's entries are
        // bitwise copies, never dropped: they borrow `base`'s references, whose frame outlives
        // the scope (per the caller); the own entry owns `value`'s reference, which
        // `SpillBlock::release` hands back for the scope to release. `frame` is valid for writes
        // (per the caller); its `promoted` is written before the block points at it, and the
        // block goes in its unused inline array. The block's header count stays uninitialised,
        // as a stack frame's does.
        unsafe {
            let data = SpillBlock::header(block);
            let slots = data.add(1).cast::<Entry>();
            ptr::copy_nonoverlapping(base.as_ptr(), slots, at);
            slots.add(at).write(Entry { key, value });
            ptr::copy_nonoverlapping(after.as_ptr(), slots.add(at + 1), after.len());
            FrameHeader::write_stack(data, len, FrameHeader::checked_end(len));
            (&raw mut (*frame).promoted).write(Cell::new(ptr::null()));
            block
                .cast::<*const Cell<*const FrameHeader>>()
                .write(&raw const (*frame).promoted);
            (&raw mut (*frame).header.len).write(SpillBlock::MARK);
            (&raw mut (*frame).inline)
                .cast::<SpillBlock>()
                .write(SpillBlock {
                    block,
                    len,
                    own: at,
                });
            data.cast_const().map_addr(|addr| addr | UNOWNED)
        }
    }

    /// A heap frame with the same entries, made on the first call and shared afterwards (on
    /// every call for an [`EnteredFrame`], which keeps no copy).
    ///
    /// # Safety
    ///
    /// `data` must be a live, activated stack frame's (or entered frame's) pointer.
    #[cold]
    #[inline(never)]
    pub(super) unsafe fn promote(data: *const FrameHeader) -> SharedFrame {
        // SAFETY: per the caller, `data` is a live frame whose header is written.
        if unsafe { (*data).end } & UNCACHED_END == 0 {
            // An entered execution's frame: a copy of the caller's own (rare: `enter_with`,
            // `disable`), so that the execution's end has no copy to release.
            // SAFETY: `data` is the live frame, with the provenance of all of it.
            return SharedFrame::build(unsafe { entries_of(data) }, None, &[]);
        }
        // SAFETY: per the caller, `data` is a live stack frame or spill block, derived from a
        // pointer to all of it; a stack frame has at most `STACK_ENTRIES` entries, a spill block
        // more, and its owner pointer (to its live stack frame's `promoted`) before the header.
        let promoted = unsafe {
            if (*data).len as usize > STACK_ENTRIES {
                &**data
                    .byte_sub(SpillBlock::HEADER)
                    .cast::<*const Cell<*const FrameHeader>>()
            } else {
                &(*data.cast::<StackFrame>()).promoted
            }
        };
        let mut heap = promoted.get();
        if heap.is_null() {
            // SAFETY: `data` is the live frame, with the provenance of all of it.
            let entries = unsafe { entries_of(data) };
            heap = SharedFrame::build(entries, None, &[]).into_raw();
            promoted.set(heap);
        }
        // SAFETY: the stack frame holds a reference to `heap` while it lives; the new one is
        // the result's.
        unsafe {
            SharedFrame::retain(heap);
            SharedFrame::from_raw(heap)
        }
    }
}
