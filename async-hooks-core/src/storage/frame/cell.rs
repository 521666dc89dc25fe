//! The thread's cell: the current frame as one tagged pointer, and what lends it, captures it
//! and enters an execution's frame. The states of the pointer and the invariants this relies on
//! (1, 2, 3, 5 and 6) are at the top of the `frame` module.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use super::*;

/// The tag bit of a [`CurrentFrame`] pointer (frames are 8-aligned): the cell does not own the
/// frame, an owner higher up this thread's stack does: a [`LendGuard`] or an entered execution
/// ([`CurrentFrame::enter_keeping`]) for a heap frame, the `run` or entered execution that
/// built it for a [`StackFrame`] or an [`EnteredFrame`] (told apart by [`points_at_stack`]).
///
/// One tag for both, so that a read through a frame owned up the stack tests one bit and
/// reaches the header at a fixed offset from the tagged pointer, with no tag to copy, mask and
/// subtract (`shape_with_store_in_run`).
pub(super) const UNOWNED: usize = 1;

#[inline(always)]
pub(super) fn untagged(raw: *const FrameHeader) -> *const FrameHeader {
    raw.map_addr(|addr| addr & !UNOWNED)
}

/// Whether the cell pointer `raw` is a stack frame's (or its spill block's, or an entered
/// frame's), which a capture keeps inline or promotes, rather than a heap frame's or the empty
/// frame.
///
/// # Safety
///
/// `raw` must be in a cell, or have been, with its owner still alive.
#[inline(always)]
pub(super) unsafe fn points_at_stack(raw: *const FrameHeader) -> bool {
    // SAFETY: per the caller, a tagged pointer's frame is alive (and a tagged one is never
    // null); its header's `end` is written whatever the frame's kind.
    raw.addr() & UNOWNED != 0 && unsafe { (*untagged(raw)).end & UNCOUNTED_END != 0 }
}

/// A resource's captured frame, in one of two forms.
///
/// Usually the pointer the thread's cell holds while the resource runs: a heap frame tagged
/// [`UNOWNED`], so that entering it is a plain store with no `or` on every poll, or null for the
/// empty frame (which owns nothing, so the cell may hold it untagged). Owns one reference, as a
/// [`SharedFrame`] does. The empty frame is not tagged so that a tagged pointer in the cell is
/// never null: a read of a lent or stack frame then goes straight to its header with no null
/// test.
///
/// A capture of a `run`'s stack frame of one entry with a store keeps that entry inline
/// instead ([`Captured::Single`]), owning one reference to the store: no heap frame is built,
/// and entering it builds an [`EnteredFrame`] on the entering call's stack.
pub(crate) struct CapturedFrame(pub(super) Captured);

/// The forms of a [`CapturedFrame`].
pub(super) enum Captured {
    /// A heap frame's pointer tagged [`UNOWNED`] (its reference is this one's), or null.
    Shared(*const FrameHeader),
    /// A frame of one entry, `key`'s, whose store is `value` (released by the
    /// [`CapturedFrame`]'s drop: one drop path, with no landing pad for a second).
    Single {
        key: u64,
        value: ManuallyDrop<Value>,
    },
}

// SAFETY: a `SharedFrame` with its pointer tagged (see `SharedFrame`'s `Send` and `Sync`), or a
// key and a `Value`, both `Send` and `Sync`.
#[allow(unsafe_code)]
unsafe impl Send for CapturedFrame {}
// SAFETY: see `Send`.
#[allow(unsafe_code)]
unsafe impl Sync for CapturedFrame {}

impl CapturedFrame {
    /// Takes over `frame`'s reference.
    #[inline(always)]
    pub(crate) fn new(frame: SharedFrame) -> CapturedFrame {
        let raw = frame.into_raw();
        if raw.is_null() {
            CapturedFrame(Captured::Shared(raw))
        } else {
            CapturedFrame(Captured::Shared(raw.map_addr(|addr| addr | UNOWNED)))
        }
    }

    /// The pointer for the thread's cell while the resource runs: a heap frame's as it is, or,
    /// for an entry kept inline, an [`EnteredFrame`] of that one entry built at `slot`, which
    /// must not move while the pointer is in use. Code inside that puts the empty frame in place of the empty frame is
    /// not seen as a change, and need not be: the resource's frame stays the empty frame.
    #[inline(always)]
    pub(super) fn install(&self, slot: *mut EnteredFrame) -> *const FrameHeader {
        match &self.0 {
            Captured::Shared(raw) => *raw,
            // SAFETY: `slot` is valid for writes and stays in place (per the caller); `self`
            // holds `value` for as long as it is entered.
            Captured::Single { key, value } => unsafe { EnteredFrame::init(slot, *key, value) },
        }
    }

    /// Calls `f` with the frame's entries.
    pub(super) fn with_view<R>(&self, f: impl FnOnce(FrameView<'_>) -> R) -> R {
        let mut slot = MaybeUninit::<EnteredFrame>::uninit();
        let raw = self.install(slot.as_mut_ptr());
        // SAFETY: `self` keeps a heap frame alive while it is borrowed; a frame at `slot`
        // lives until the end of this function, and never goes in a cell.
        f(unsafe { CurrentFrame::view(raw) })
    }

    /// The heap frame's pointer, tagged (null: empty).
    ///
    /// # Panics
    ///
    /// If the frame is kept inline.
    #[cfg(test)]
    pub(super) fn lent(&self) -> *const FrameHeader {
        match self.0 {
            Captured::Shared(raw) => raw,
            Captured::Single { .. } => panic!("a frame kept inline has no frame pointer"),
        }
    }
}

impl Clone for CapturedFrame {
    #[inline]
    fn clone(&self) -> CapturedFrame {
        match &self.0 {
            Captured::Shared(raw) => {
                let data = untagged(*raw);
                if !data.is_null() {
                    // SAFETY: this frame's own reference keeps the heap frame alive; the new one
                    // is the clone's.
                    unsafe { SharedFrame::retain(data) };
                }
                CapturedFrame(Captured::Shared(*raw))
            }
            Captured::Single { key, value } => CapturedFrame(Captured::Single {
                key: *key,
                value: ManuallyDrop::new(Value::clone(value)),
            }),
        }
    }
}

impl Default for CapturedFrame {
    /// The empty frame.
    fn default() -> CapturedFrame {
        CapturedFrame(Captured::Shared(ptr::null()))
    }
}

impl fmt::Debug for CapturedFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_view(|view| {
            f.debug_list()
                .entries(view.entries().iter().map(|e| e.key))
                .finish()
        })
    }
}

impl Drop for CapturedFrame {
    #[inline]
    fn drop(&mut self) {
        match &mut self.0 {
            // SAFETY: the reference `new` took over, released once, here.
            Captured::Shared(raw) => drop(unsafe { SharedFrame::from_raw(untagged(*raw)) }),
            // SAFETY: dropped once, here; never used again.
            Captured::Single { value, .. } => unsafe { ManuallyDrop::drop(value) },
        }
    }
}

/// The thread's current frame.
///
/// It has no `Drop` (the thread state that holds it must have none, to be reached cheaply):
/// whoever leaves a frame in a thread's cell past every scope registers
/// `storage::release_at_thread_exit`.
///
/// It holds one raw frame pointer, in one of the states of the table at the top of the `frame`
/// module: null (the empty frame), untagged (a heap frame whose reference the cell owns), or
/// tagged [`UNOWNED`] (a frame whose owner is alive higher up this thread's stack: a
/// [`LendGuard`], an entered execution, or the `run` of a [`StackFrame`] or its spill block,
/// which its header tells apart).
pub(crate) struct CurrentFrame {
    pub(super) raw: Cell<*const FrameHeader>,
}

impl CurrentFrame {
    /// A cell holding the empty frame.
    pub(crate) const fn new() -> CurrentFrame {
        CurrentFrame {
            raw: Cell::new(ptr::null()),
        }
    }

    /// A strong reference of its own to the frame behind `raw`, leaving `raw`'s owner alone. A
    /// stack frame is promoted to the heap (once per stack frame).
    ///
    /// # Safety
    ///
    /// `raw` must be a pointer that is or was in this cell and whose owner (the cell, a lending
    /// guard or a stack frame) is still alive.
    #[inline]
    pub(super) unsafe fn cloned(raw: *const FrameHeader) -> SharedFrame {
        let data = untagged(raw);
        // SAFETY: per the caller, the frame is alive.
        if unsafe { points_at_stack(raw) } {
            // SAFETY: per the caller, the stack frame is alive.
            return unsafe { StackFrame::promote(data) };
        }
        // The empty frame is never tagged; a lent heap frame is.
        if data.is_null() {
            return SharedFrame(None);
        }
        // SAFETY: `data` is a heap frame and its owner holds a reference for the duration of
        // this call; the new reference is the result's.
        unsafe {
            SharedFrame::retain(data);
            SharedFrame::from_raw(data)
        }
    }

    /// Turns a pointer taken out of the cell into an owned frame.
    ///
    /// # Safety
    ///
    /// `raw` must have been read out of this cell and replaced there, so that nothing else
    /// claims the cell's reference: an untagged pointer's strong reference passes to the result;
    /// a lent one is still owned by its guard and a stack frame by its `run`, both alive, so it
    /// gets a reference of its own.
    #[inline]
    pub(super) unsafe fn owned(raw: *const FrameHeader) -> SharedFrame {
        if !raw.is_null() && raw.addr() & UNOWNED == 0 {
            // SAFETY: an untagged non-null pointer in the cell is a heap frame whose reference
            // was the cell's; the caller took it out of the cell.
            unsafe { SharedFrame::from_raw(raw) }
        } else {
            // SAFETY: see above: the owner is alive.
            unsafe { CurrentFrame::cloned(raw) }
        }
    }

    /// Takes the frame out, leaving the empty frame.
    #[inline]
    pub(crate) fn take(&self) -> SharedFrame {
        let raw = self.raw.replace(ptr::null());
        // SAFETY: `raw` was in the cell and has just been replaced there.
        unsafe { CurrentFrame::owned(raw) }
    }

    /// Puts `frame` in and returns the previous frame.
    #[inline]
    pub(crate) fn replace(&self, frame: SharedFrame) -> SharedFrame {
        let raw = self.raw.replace(frame.into_raw());
        // SAFETY: `raw` was in the cell and has just been replaced there.
        unsafe { CurrentFrame::owned(raw) }
    }

    /// Runs `f` in an execution whose frame is `frame` (a future's poll or drop): the cell
    /// points at it without owning it (tagged [`UNOWNED`]: its owner is borrowed for the whole
    /// call), or, for an entry kept inline, at an [`EnteredFrame`] of that entry built on this
    /// call's stack. `around` runs right after the switch and right before the switch back (also
    /// while unwinding): the rest of the execution's switch. If the code inside replaced the
    /// frame (`enter_with`, `disable`, a guard kept across polls), the replacement becomes the
    /// execution's own frame, as in Node an `enterWith` lasts for the rest of its execution
    /// context. Afterwards, also on panic, the cell's previous pointer goes back as it was.
    #[inline(always)]
    pub(crate) fn enter_keeping<R>(
        &self,
        frame: &mut CapturedFrame,
        around: impl AroundFrame,
        f: impl FnOnce() -> R,
    ) -> R {
        self.enter(KeepChanges(frame), around, f)
    }

    /// Runs `f` in the scope of an execution whose frame is `frame` and stays as it was (an
    /// `AsyncResource`'s scope, a snapshot's run): whatever the code inside put in its place
    /// ends with the call. Otherwise as [`CurrentFrame::enter_keeping`].
    #[inline(always)]
    pub(crate) fn enter_scope<R>(
        &self,
        frame: &CapturedFrame,
        around: impl AroundFrame,
        f: impl FnOnce() -> R,
    ) -> R {
        self.enter(DropChanges(frame), around, f)
    }

    #[inline(always)]
    pub(super) fn enter<C: OnChange, A: AroundFrame, R>(
        &self,
        frame: C,
        around: A,
        f: impl FnOnce() -> R,
    ) -> R {
        // Where a frame kept inline is entered: it must not move while the cell points at it.
        let mut slot = MaybeUninit::<EnteredFrame>::uninit();
        let installed = frame.captured().install(slot.as_mut_ptr());
        let previous = self.raw.replace(installed);
        let mut entered = Entered {
            cell: self,
            frame: Some(frame),
            around: None,
            previous,
            installed,
        };
        let mut around = around;
        around.enter(&Switching(()));
        entered.around = Some(around);
        let result = f();
        entered.leave();
        result
    }

    #[cold]
    #[inline(never)]
    pub(super) fn leave_scope_changed(&self, previous: *const FrameHeader) {
        let current = self.raw.replace(previous);
        // SAFETY: `current` was in the cell and has just been replaced there; it is released
        // with the caller's context back in place.
        drop(unsafe { CurrentFrame::owned(current) });
    }

    #[cold]
    #[inline(never)]
    pub(super) fn leave_changed(&self, frame: &mut CapturedFrame, previous: *const FrameHeader) {
        let current = self.raw.replace(previous);
        // SAFETY: `current` was in the cell and has just been replaced there.
        let changed = unsafe { CurrentFrame::owned(current) };
        // The execution's old frame goes only now, with the caller's context back in place (a
        // store's `Drop` may look at the context).
        drop(std::mem::replace(frame, CapturedFrame::new(changed)));
    }

    /// Puts `frame` in, dropping the previous frame only after the new one is in place (a
    /// store's `Drop` may look at the context).
    #[inline]
    pub(crate) fn set(&self, frame: SharedFrame) {
        drop(self.replace(frame));
    }

    /// A new reference to the current frame (O(1): one refcount increment, none when empty).
    /// (The library captures with [`CurrentFrame::capture`]; the tests look at frames with this.)
    #[cfg(test)]
    pub(super) fn get(&self) -> SharedFrame {
        let raw = self.raw.get();
        // SAFETY: the pointer is in the cell, so its owner is alive.
        if unsafe { points_at_stack(raw) } {
            return self.promote_in_place(raw);
        }
        // SAFETY: as above.
        unsafe { CurrentFrame::cloned(raw) }
    }

    /// A new reference to the current frame (O(1): one refcount increment, none when empty),
    /// as a [`CapturedFrame`], for a resource or a snapshot to keep. A stack frame of one entry
    /// with a store is kept inline (a reference to the store); another is promoted to the heap
    /// once per `run`, and the copy left in the cell.
    #[inline(always)]
    pub(crate) fn capture(&self) -> CapturedFrame {
        let raw = self.raw.get();
        // The empty frame first: one test on the path of every capture outside all storage.
        if raw.is_null() {
            return CapturedFrame(Captured::Shared(raw));
        }
        let data = untagged(raw);
        // SAFETY: the pointer is in the cell, so its owner is alive.
        if unsafe { points_at_stack(raw) } {
            // SAFETY: as above; a stack frame's (or spill block's) header and entries are
            // written, and an entry's value holds a store that outlives the scope.
            if let [entry] = unsafe { entries_of(data) }
                && let Some(value) = &entry.value
            {
                // `Value::clone` counts the share, so the `run`'s end does not recycle the
                // store.
                return CapturedFrame(Captured::Single {
                    key: entry.key,
                    value: ManuallyDrop::new(value.clone()),
                });
            }
            return CapturedFrame::new(self.promote_in_place(raw));
        }
        // SAFETY: `data` is a heap frame (not a stack frame, not null) in the cell, so its owner
        // holds a reference for the duration of this call; the new reference is the result's.
        unsafe { SharedFrame::retain(data) };
        CapturedFrame(Captured::Shared(data.map_addr(|addr| addr | UNOWNED)))
    }

    /// A capture of a stack frame: promotes it and leaves the heap copy in the cell
    /// (with a reference of its own), so that further captures in the same scope take the
    /// plain path. The scope's end recognises the copy as its own frame.
    #[cold]
    #[inline(never)]
    pub(super) fn promote_in_place(&self, raw: *const FrameHeader) -> SharedFrame {
        // SAFETY: the pointer is in the cell, so its stack frame is alive.
        let frame = unsafe { StackFrame::promote(untagged(raw)) };
        self.raw.set(frame.clone().into_raw());
        frame
    }

    /// A new `Arc` to the current store of `key` (a `get_store`), or the source's default where
    /// the frame has no entry for `key`. No guard and no reference to the frame is taken:
    /// nothing between the look-up and the `Arc`'s increment can change the cell.
    #[inline(always)]
    pub(crate) fn clone_store<T: Send + Sync + 'static>(
        &self,
        source: &impl StoreSource<T>,
        key: Key<T>,
    ) -> Option<Arc<T>> {
        // SAFETY: the cell's pointer has a live owner, and nothing that runs while the view is
        // used (a look-up, an `Arc` increment) can release it.
        let frame = unsafe { CurrentFrame::view(self.raw.get()) };
        match frame.lookup_at_hint(key, source.hint()) {
            Some(store) => store.to_arc(),
            None => CurrentFrame::clone_store_searched(frame, source, key),
        }
    }

    /// [`CurrentFrame::clone_store`] where the hint missed.
    #[cold]
    #[inline(never)]
    pub(super) fn clone_store_searched<T: Send + Sync + 'static>(
        frame: FrameView<'_>,
        source: &impl StoreSource<T>,
        key: Key<T>,
    ) -> Option<Arc<T>> {
        match frame.lookup_searched(key, source.hint()) {
            Some(store) => store.to_arc(),
            None => source.default_store().cloned(),
        }
    }

    /// Calls `f` with a reference to the current store of `key` (a `with_store`), or the
    /// source's default where the frame has no entry for `key`. The store stays valid whatever
    /// `f` does to the cell (`run`, `enter_with`, polling a future).
    ///
    /// A frame owned up the stack (by a lender, a stack frame's scope or an entered
    /// execution: inside a `run` or a resource's scope, where most reads are) is read as is. A
    /// frame the cell owns is [lent](CurrentFrame::lend) for the call, out of line, so that
    /// the first kind of read saves no register and keeps no stack frame for the lend's guard.
    #[inline(always)]
    pub(crate) fn with_store<T: Send + Sync + 'static, R>(
        &self,
        source: &impl StoreSource<T>,
        key: Key<T>,
        f: impl FnOnce(Option<&T>) -> R,
    ) -> R {
        let raw = self.raw.get();
        if raw.addr() & UNOWNED == 0 {
            // SAFETY: just tested, and nothing ran since.
            return unsafe { self.with_store_lending(source, key, f) };
        }
        debug_assert!(!untagged(raw).is_null(), "a tagged empty frame");
        // SAFETY: a tagged pointer is never null (the empty frame is never tagged); the frame's
        // owner is higher up this stack and outlives this call: code that `f` runs changes the
        // cell only in scopes nested in that owner's.
        let frame = unsafe { FrameView::new(NonNull::new_unchecked(untagged(raw).cast_mut())) };
        CurrentFrame::with_store_in(frame, source, key, f)
    }

    /// [`CurrentFrame::with_store`] in a frame the cell owns, or in the empty frame.
    ///
    /// # Safety
    ///
    /// The cell's pointer must be untagged.
    #[inline(never)]
    pub(super) unsafe fn with_store_lending<T: Send + Sync + 'static, R>(
        &self,
        source: &impl StoreSource<T>,
        key: Key<T>,
        f: impl FnOnce(Option<&T>) -> R,
    ) -> R {
        // SAFETY: per the caller. Told so, LLVM drops `lend`'s tests of the tags, which out of
        // line it can no longer see were made.
        unsafe { std::hint::assert_unchecked(self.raw.get().addr() & UNOWNED == 0) };
        let lent = self.lend();
        CurrentFrame::with_store_in(lent.frame(), source, key, f)
    }

    /// [`CurrentFrame::with_store`] in `frame`, which outlives the call.
    #[inline(always)]
    pub(super) fn with_store_in<T: Send + Sync + 'static, R>(
        frame: FrameView<'_>,
        source: &impl StoreSource<T>,
        key: Key<T>,
        f: impl FnOnce(Option<&T>) -> R,
    ) -> R {
        match frame.lookup_at_hint(key, source.hint()) {
            // An entry with no value: the storage was exited (`None`, not the default).
            Some(store) => f(store.get()),
            // Out of line with its own call of `f`: with one call for both paths, LLVM merged
            // them at the read of the entry's value, a jump more on the hit path
            // (`with_store_in_run`).
            None => CurrentFrame::with_store_searched(frame, source, key, f),
        }
    }

    /// [`CurrentFrame::with_store`] where the position hint missed.
    #[cold]
    #[inline(never)]
    pub(super) fn with_store_searched<T: Send + Sync + 'static, R>(
        frame: FrameView<'_>,
        source: &impl StoreSource<T>,
        key: Key<T>,
        f: impl FnOnce(Option<&T>) -> R,
    ) -> R {
        let store = match frame.lookup_searched(key, source.hint()) {
            Some(store) => store.get(),
            None => source.default_store().map(|store| &**store),
        };
        // One call, whose result is returned as is: passing it through an `Option` cost a
        // store-forwarding stall (written in two 8-byte halves, read back in one 16-byte load).
        f(store)
    }

    /// The entries behind `raw`.
    ///
    /// # Safety
    ///
    /// `raw` (without its tags) must be null or point to a live `FrameHeader` that stays alive for
    /// `'a`.
    #[inline]
    pub(super) unsafe fn view<'a>(raw: *const FrameHeader) -> FrameView<'a> {
        match NonNull::new(untagged(raw).cast_mut()) {
            // SAFETY: per the caller.
            Some(data) => unsafe { FrameView::new(data) },
            None => FrameView::EMPTY,
        }
    }

    /// The entries behind `raw` (none for null).
    ///
    /// # Safety
    ///
    /// As for [`CurrentFrame::view`].
    #[inline(always)]
    pub(super) unsafe fn entries_at<'a>(raw: *const FrameHeader) -> &'a [Entry] {
        let data = untagged(raw);
        if data.is_null() {
            &[]
        } else {
            // SAFETY: per the caller.
            unsafe { entries_of(data) }
        }
    }

    /// Lends the current frame for as long as the returned guard lives: the guard's
    /// [`LendGuard::frame`] stays valid whatever the code running meanwhile does to the cell
    /// (`run`, `enter_with`, polling a future), with no refcount traffic unless that code takes
    /// the frame out of the cell.
    #[inline]
    pub(super) fn lend(&self) -> LendGuard<'_> {
        let raw = self.raw.get();
        // Only a reference the cell owns is lent; a lent or stack frame's owner is higher up the
        // stack already, and outlives this guard.
        let lender = !raw.is_null() && raw.addr() & UNOWNED == 0;
        if lender {
            self.raw.set(raw.map_addr(|addr| addr | UNOWNED));
        }
        LendGuard {
            cell: self,
            data: untagged(raw),
            lender,
            _not_send: PhantomData,
        }
    }

    /// Calls `f` with the current frame, which stays valid whatever `f` does to the cell.
    #[cfg(test)]
    pub(super) fn with_current<R>(&self, f: impl FnOnce(FrameView<'_>) -> R) -> R {
        let lent = self.lend();
        f(lent.frame())
    }
}

/// Proof that the frame module is switching an execution's frame: only it makes one, so the
/// methods of [`AroundFrame`] run only as it calls them, in pairs and strictly nested.
pub(crate) struct Switching(());

/// The rest of an execution's switch, run by [`CurrentFrame::enter_keeping`] and
/// [`CurrentFrame::enter_scope`]: `enter` right after the frame is switched, `leave` right
/// before it is switched back, also while unwinding (not if `enter` panicked).
pub(crate) trait AroundFrame {
    fn enter(&mut self, switching: &Switching);
    fn leave(self, switching: &Switching);
}

/// Nothing more to switch.
impl AroundFrame for () {
    #[inline(always)]
    fn enter(&mut self, _: &Switching) {}
    #[inline(always)]
    fn leave(self, _: &Switching) {}
}

/// What leaving an entered execution does with a frame the code inside left in its place.
pub(super) trait OnChange {
    /// The execution's frame.
    fn captured(&self) -> &CapturedFrame;
    /// Puts `previous` back in the cell, which holds another frame than the one entered.
    fn leave_changed(self, cell: &CurrentFrame, previous: *const FrameHeader);
}

/// The replacement becomes the execution's own frame ([`CurrentFrame::enter_keeping`]).
pub(super) struct KeepChanges<'a>(pub(super) &'a mut CapturedFrame);

impl OnChange for KeepChanges<'_> {
    #[inline(always)]
    fn captured(&self) -> &CapturedFrame {
        self.0
    }

    fn leave_changed(self, cell: &CurrentFrame, previous: *const FrameHeader) {
        cell.leave_changed(self.0, previous);
    }
}

/// The replacement ends with the scope ([`CurrentFrame::enter_scope`]).
pub(super) struct DropChanges<'a>(pub(super) &'a CapturedFrame);

impl OnChange for DropChanges<'_> {
    #[inline(always)]
    fn captured(&self) -> &CapturedFrame {
        self.0
    }

    fn leave_changed(self, cell: &CurrentFrame, previous: *const FrameHeader) {
        cell.leave_scope_changed(previous);
    }
}

/// The guard of an entered execution: leaves `around`, then puts the cell's previous pointer
/// back.
///
/// Scopes end with [`Entered::leave`] rather than with the guard's drop, which only runs while
/// unwinding. That drop is a single out-of-line call taking the fields by value, which LLVM
/// inlines into the landing pad, so the guard can live in registers across the call (a drop
/// that did the switch itself kept the guard in memory for the landing pad to read).
pub(super) struct Entered<'a, C: OnChange, A: AroundFrame> {
    pub(super) cell: &'a CurrentFrame,
    /// `None` only once left.
    pub(super) frame: Option<C>,
    /// `None` until entered, and once left.
    pub(super) around: Option<A>,
    /// The cell's pointer before, put back as it was.
    pub(super) previous: *const FrameHeader,
    /// The cell's pointer while entered: unchanged at the end, the code inside left the frame
    /// as it was, which is compared with no load of the frame.
    pub(super) installed: *const FrameHeader,
}

impl<C: OnChange, A: AroundFrame> Entered<'_, C, A> {
    #[inline(always)]
    pub(super) fn leave(mut self) {
        let frame = self.frame.take();
        let around = self.around.take();
        let this = ManuallyDrop::new(self);
        Self::switch_back(this.cell, frame, around, this.previous, this.installed);
    }

    #[inline(always)]
    pub(super) fn switch_back(
        cell: &CurrentFrame,
        frame: Option<C>,
        around: Option<A>,
        previous: *const FrameHeader,
        installed: *const FrameHeader,
    ) {
        if let Some(around) = around {
            around.leave(&Switching(()));
        }
        if cell.raw.get() != installed {
            return match frame {
                Some(frame) => frame.leave_changed(cell, previous),
                None => cell.leave_scope_changed(previous),
            };
        }
        cell.raw.set(previous);
    }

    #[cold]
    #[inline(never)]
    pub(super) fn switch_back_unwinding(
        cell: &CurrentFrame,
        frame: Option<C>,
        around: Option<A>,
        previous: *const FrameHeader,
        installed: *const FrameHeader,
    ) {
        Self::switch_back(cell, frame, around, previous, installed);
    }
}

impl<C: OnChange, A: AroundFrame> Drop for Entered<'_, C, A> {
    /// Reached only while unwinding: every scope ends with [`Entered::leave`].
    #[inline(always)]
    fn drop(&mut self) {
        Self::switch_back_unwinding(
            self.cell,
            self.frame.take(),
            self.around.take(),
            self.previous,
            self.installed,
        );
    }
}

/// The guard of [`CurrentFrame::lend`].
pub(super) struct LendGuard<'a> {
    pub(super) cell: &'a CurrentFrame,
    /// The lent frame (untagged). When `lender`, this guard owns its strong reference (taken
    /// from the cell); otherwise its owner is further up the stack.
    pub(super) data: *const FrameHeader,
    pub(super) lender: bool,
    pub(super) _not_send: PhantomData<*const ()>,
}

impl LendGuard<'_> {
    /// The frame that was current when the guard was made.
    #[inline]
    pub(super) fn frame(&self) -> FrameView<'_> {
        // SAFETY: this guard or an owner that outlives it keeps the frame alive.
        unsafe { CurrentFrame::view(self.data) }
    }
}

impl Drop for LendGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if !self.lender {
            return;
        }
        let tagged = self.data.map_addr(|addr| addr | UNOWNED);
        if self.cell.raw.get() == tagged {
            // Untouched (or lent again and given back): the cell owns the reference again.
            self.cell.raw.set(self.data);
        } else {
            // The context changed meanwhile: everyone who took the frame out got a reference of
            // their own, so this one is released.
            // SAFETY: this guard owns the reference and gives it up exactly once, here.
            drop(unsafe { SharedFrame::from_raw(self.data) });
        }
    }
}
