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

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::any::TypeId;
use std::cell::Cell;
use std::fmt;
use std::marker::{PhantomData, PhantomPinned};
use std::mem::{ManuallyDrop, MaybeUninit};
use std::ptr::{self, NonNull};
use std::slice;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

/// Storage keys are handed out once and never reused: an entry's key names the one storage,
/// and so the one store type, it was made for.
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// A storage's key cell: 0 until first used, and again after [`StorageKey::retire`]. Only this
/// cell ever holds the keys it mints, so every [`Key<T>`] read from it names entries of `T`s.
pub(crate) struct StorageKey<T> {
    key: AtomicU64,
    _store: PhantomData<fn() -> T>,
}

/// A key read from a [`StorageKey<T>`]: the entries a frame holds under it are `T`s (0, "no
/// entry anywhere", matches none).
pub(crate) struct Key<T> {
    raw: u64,
    _store: PhantomData<fn() -> T>,
}

impl<T> Clone for Key<T> {
    fn clone(&self) -> Key<T> {
        *self
    }
}

impl<T> Copy for Key<T> {}

impl<T> Key<T> {
    /// The key as a number: entries are sorted by it, and a store's cached allocation is kept
    /// at it ([`Recycled`]).
    #[inline(always)]
    pub(crate) fn raw(self) -> u64 {
        self.raw
    }

    #[inline(always)]
    fn from_raw(raw: u64) -> Key<T> {
        Key {
            raw,
            _store: PhantomData,
        }
    }
}

impl<T> StorageKey<T> {
    /// A cell with no key yet.
    pub(crate) const fn new() -> StorageKey<T> {
        StorageKey {
            key: AtomicU64::new(0),
            _store: PhantomData,
        }
    }

    /// The key for reads: 0 matches no entry.
    #[inline(always)]
    pub(crate) fn read(&self) -> Key<T> {
        Key::from_raw(self.key.load(Ordering::Relaxed))
    }

    /// The key for writes, minted on first use.
    #[inline(always)]
    pub(crate) fn write(&self) -> Key<T> {
        match self.key.load(Ordering::Relaxed) {
            0 => self.mint(),
            key => Key::from_raw(key),
        }
    }

    #[cold]
    fn mint(&self) -> Key<T> {
        let fresh = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        match self
            .key
            .compare_exchange(0, fresh, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => Key::from_raw(fresh),
            Err(existing) => Key::from_raw(existing),
        }
    }

    /// Empties the cell and returns the key it held (0: none). The key is never handed out
    /// again, so every frame that holds it stops showing its entry to this storage.
    pub(crate) fn retire(&self) -> u64 {
        self.key.swap(0, Ordering::Relaxed)
    }
}

/// A store held by frames: an `Arc<T>` kept as a thin pointer to the `T` itself, so that a read
/// reaches the value in one load (an `Arc<dyn Any>` first needs the alignment from its vtable to
/// find the value behind the counts, one more dependent load on every `get_store`).
struct Value {
    /// From `Arc::<T>::into_raw`; this `Value` owns one strong reference.
    data: NonNull<()>,
    ops: &'static ValueOps,
}

/// What a [`Value`] needs to know of its `T`.
struct ValueOps {
    retain: unsafe fn(NonNull<()>),
    release: unsafe fn(NonNull<()>),
    /// Releases a reference; if it was the last, drops the value in place and keeps the
    /// allocation in this thread's [`Recycled`] cache (at the given slot) for the next `run`.
    /// (A caller that knows the type and that the reference is the last calls
    /// [`OpsOf::recycle`] directly: see [`Value::recycle_unshared`].)
    recycle: unsafe fn(NonNull<()>, usize),
    /// Frees a cached allocation, whose value was already dropped.
    free_empty: unsafe fn(NonNull<()>),
    type_id: fn() -> TypeId,
    /// `T`'s size and alignment as one word ([`layout_key`]): a cached allocation is reused for
    /// a store of the same layout (what `Arc::from_raw` requires).
    layout: usize,
}

/// A type's size and alignment as one word, so that the reuse check is one compare: distinct
/// for distinct layouts, never 0. 0 (a type too large to encode) is never reused.
const fn layout_key(size: usize, align: usize) -> usize {
    if size > usize::MAX >> 7 {
        return 0;
    }
    // The alignment is a power of two, below 2^64: its exponent takes 6 bits.
    ((size << 6) | align.trailing_zeros() as usize) + 1
}

struct OpsOf<T>(PhantomData<T>);

impl<T: Send + Sync + 'static> OpsOf<T> {
    const OPS: &'static ValueOps = &ValueOps {
        retain: OpsOf::<T>::retain,
        release: OpsOf::<T>::release,
        recycle: OpsOf::<T>::recycle_checked,
        free_empty: OpsOf::<T>::free_empty,
        type_id: TypeId::of::<T>,
        layout: layout_key(size_of::<T>(), align_of::<T>()),
    };

    /// The table's `recycle`: checks that the reference is the last.
    ///
    /// # Safety
    ///
    /// As for `release`.
    unsafe fn recycle_checked(data: NonNull<()>, slot: usize) {
        // SAFETY: per the caller.
        unsafe { OpsOf::<T>::recycle(data, slot, false) }
    }

    /// # Safety
    ///
    /// As for `release`; with `unshared`, also that no other strong or weak reference to the
    /// store exists.
    #[inline]
    unsafe fn recycle(data: NonNull<()>, slot: usize, unshared: bool) {
        // SAFETY: per the caller, the reference is ours to release.
        let mut store = unsafe { Arc::from_raw(data.cast::<T>().as_ptr().cast_const()) };
        if unshared {
            // The caller's proof replaces the locked check; debug builds (every test, Miri
            // included) check it anyway.
            debug_assert!(
                Arc::get_mut(&mut store).is_some(),
                "a store said to be unshared has other references"
            );
        } else if Arc::get_mut(&mut store).is_none() {
            // Shared, or a `Weak` exists: released as usual.
            return;
        }
        // The last reference and no `Weak`: nothing else can reach the value any more. From here
        // `empty` owns the allocation, and frees it without dropping a `T` if the value's
        // destructor panics.
        let raw = Arc::into_raw(store).cast::<MaybeUninit<T>>();
        // SAFETY: from `Arc::<T>::into_raw`, and `MaybeUninit<T>` has `T`'s size and alignment.
        let empty = unsafe { Arc::from_raw(raw) };
        // SAFETY: the value is initialised and unreachable from anywhere else (checked above);
        // dropped once, here, through the pointer `into_raw` gave, which may write to it.
        unsafe { ptr::drop_in_place(raw.cast_mut().cast::<T>()) };
        // SAFETY: `Arc::into_raw` never returns null.
        let data = unsafe { NonNull::new_unchecked(Arc::into_raw(empty).cast_mut().cast::<()>()) };
        if !Recycled::put(slot, data, OpsOf::<T>::OPS) {
            // SAFETY: `put` declined it: still the only reference, value dropped above.
            unsafe { OpsOf::<T>::free_empty(data) }
        }
    }

    /// # Safety
    ///
    /// `data` must be the only reference to an allocation from `Arc::into_raw` of an `Arc` of a
    /// type with `T`'s layout, whose value was dropped (or never written).
    unsafe fn free_empty(data: NonNull<()>) {
        // SAFETY: per the caller; `MaybeUninit` drops no value.
        drop(unsafe { Arc::from_raw(data.cast::<MaybeUninit<T>>().as_ptr().cast_const()) });
    }

    /// # Safety
    ///
    /// `data` must come from `Arc::<T>::into_raw` and still hold a strong reference.
    unsafe fn retain(data: NonNull<()>) {
        // SAFETY: per the caller.
        unsafe { Arc::increment_strong_count(data.cast::<T>().as_ptr()) }
    }

    /// # Safety
    ///
    /// As for `retain`; the reference released is the caller's.
    unsafe fn release(data: NonNull<()>) {
        // SAFETY: per the caller.
        unsafe { Arc::decrement_strong_count(data.cast::<T>().as_ptr()) }
    }
}

// SAFETY: a `Value` is an `Arc<T>` with `T: Send + Sync` (`Value::new`'s bound), which is `Send`
// and `Sync`.
unsafe impl Send for Value {}
// SAFETY: see `Send`.
unsafe impl Sync for Value {}

impl Value {
    fn new<T: Send + Sync + 'static>(store: Arc<T>) -> Value {
        Value {
            // SAFETY: `Arc::into_raw` never returns null.
            data: unsafe { NonNull::new_unchecked(Arc::into_raw(store).cast_mut().cast()) },
            ops: OpsOf::<T>::OPS,
        }
    }

    /// Releases this store like dropping it does, and if this was its last reference, keeps its
    /// allocation at `slot` of this thread's [`Recycled`] cache for the next
    /// [`FreshValue::recycled`].
    #[inline]
    fn recycle(self, slot: usize) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the reference `this` owns, released once, here (it is not dropped).
        unsafe { (this.ops.recycle)(this.data, slot) }
    }

    /// [`Value::recycle`] without the locked check that this is the last reference (a
    /// `compare_exchange` on the weak count, as `Arc::get_mut` does): the caller knows it. And
    /// the caller knows the type, so the release is a direct call, which inlines, instead of
    /// one through the type's table.
    ///
    /// # Safety
    ///
    /// The store must be a `T`, and no other strong or weak reference to it may exist: no
    /// `Value` clone, no `Arc` from [`Value::to_arc`] and no `Weak` made from one.
    /// [`Recycled::shares`] is how `run` knows.
    #[inline]
    unsafe fn recycle_unshared<T: Send + Sync + 'static>(self, slot: usize) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the reference `this` owns, released once, here; a `T`'s, and the last one,
        // per the caller.
        unsafe { OpsOf::<T>::recycle(this.data, slot, true) }
    }

    /// Whether the store is a `T`.
    fn is<T: 'static>(&self) -> bool {
        (self.ops.type_id)() == TypeId::of::<T>()
    }

    /// The store, by reference.
    ///
    /// # Safety
    ///
    /// The store must be a `T` (see [`Value::is`]).
    #[inline]
    unsafe fn get<T>(&self) -> &T {
        // SAFETY: per the caller it points to a live `T`, kept alive by `self`'s reference.
        unsafe { self.data.cast::<T>().as_ref() }
    }

    /// A new `Arc` to the store.
    ///
    /// # Safety
    ///
    /// The store must be a `T` (see [`Value::is`]).
    #[inline]
    unsafe fn to_arc<T>(&self) -> Arc<T> {
        Recycled::count_share();
        let data = self.data.cast::<T>().as_ptr().cast_const();
        // SAFETY: per the caller `data` came from `Arc::<T>::into_raw`, alive through `self`;
        // the new strong reference is the result's.
        unsafe {
            Arc::increment_strong_count(data);
            Arc::from_raw(data)
        }
    }

    /// The store, by reference, if it is a `T`.
    #[cfg(test)]
    fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        // SAFETY: checked.
        self.is::<T>().then(|| unsafe { self.get::<T>() })
    }
}

/// Where a storage's reads start: its position hint, and the store it shows where a frame has
/// no entry for it.
pub(crate) trait StoreSource<T> {
    fn hint(&self) -> &PositionHint;
    fn default_store(&self) -> Option<&Arc<T>>;
}

/// The store of an entry found under a [`Key<T>`]: a `T` (see [`StorageKey`]), or `None` where
/// the storage was exited.
pub(crate) struct StoreRef<'a, T> {
    value: &'a Option<Value>,
    _store: PhantomData<fn() -> T>,
}

impl<T> Clone for StoreRef<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for StoreRef<'_, T> {}

impl<'a, T: Send + Sync + 'static> StoreRef<'a, T> {
    /// Types the store of `entry`, found under `key`.
    #[inline(always)]
    fn new(entry: &'a Entry, key: Key<T>) -> StoreRef<'a, T> {
        debug_assert_eq!(entry.key, key.raw);
        if let Some(value) = &entry.value {
            debug_assert!(
                value.is::<T>(),
                "a storage key holds a value of another type"
            );
        }
        StoreRef {
            value: &entry.value,
            _store: PhantomData,
        }
    }

    /// The store, by reference.
    #[inline(always)]
    pub(crate) fn get(self) -> Option<&'a T> {
        // SAFETY: the entry was found under a `Key<T>`, and only `T`s are ever entered under
        // one (see `StorageKey`).
        self.value.as_ref().map(|value| unsafe { value.get::<T>() })
    }

    /// A new `Arc` to the store.
    #[inline(always)]
    pub(crate) fn to_arc(self) -> Option<Arc<T>> {
        // SAFETY: as in `get`.
        self.value
            .as_ref()
            .map(|value| unsafe { value.to_arc::<T>() })
    }
}

/// A storage's entry as it was in some frame, to put back later with
/// [`SharedFrame::restore`]: the entry's store and the key it was under stay together, so a
/// store only ever goes back under its own storage's key.
pub(crate) struct SavedEntry {
    key: u64,
    /// Outer `None`: the frame had no entry for the key.
    value: Option<Option<Value>>,
}

impl SavedEntry {
    /// The key the entry was saved from.
    pub(crate) fn key(&self) -> u64 {
        self.key
    }

    /// Takes the saved entry out, leaving "no entry" under the same key.
    pub(crate) fn take(&mut self) -> SavedEntry {
        std::mem::replace(
            self,
            SavedEntry {
                key: self.key,
                value: None,
            },
        )
    }
}

/// A store's only reference: a [`Value`] made just now and not cloned yet, which is what lets
/// [`CurrentFrame::run_with_entry`] prove at its end, from [`Recycled::shares`] alone, that its
/// store's reference is still the only one.
///
/// Typed, so that the scope's end releases it with a direct call ([`Value::recycle_unshared`]).
pub(crate) struct FreshValue<T>(Value, PhantomData<fn() -> T>);

impl<T: Send + Sync + 'static> FreshValue<T> {
    /// A new store in a new `Arc`.
    pub(crate) fn new(store: T) -> FreshValue<T> {
        FreshValue(Value::new(Arc::new(store)), PhantomData)
    }

    /// A new store holding `store`, in the allocation a finished `run` left at `slot` of this
    /// thread's [`Recycled`] cache when it has `T`'s layout (else a new `Arc`). The scope's end
    /// releases it with [`Value::recycle`], which puts its allocation back.
    #[inline]
    pub(crate) fn recycled(store: T, slot: usize) -> FreshValue<T> {
        match Recycled::take(slot, OpsOf::<T>::OPS.layout) {
            Some(data) => {
                // SAFETY: a cached allocation is the only reference to an `Arc` allocation of a
                // type with `T`'s layout and holds no value; written once, it is an `Arc<T>`
                // (`Arc::from_raw` accepts a pointer from an `Arc` of the same layout), whose
                // one strong reference passes to the result.
                unsafe { data.cast::<T>().as_ptr().write(store) };
                FreshValue(
                    Value {
                        data,
                        ops: OpsOf::<T>::OPS,
                    },
                    PhantomData,
                )
            }
            None => FreshValue::new(store),
        }
    }

    /// The value, as any other.
    fn into_value(self) -> Value {
        self.0
    }
}

/// A store that outlives the scopes that borrow it (a [`Scope`] future's, across its polls),
/// made in and released to the thread's [`Recycled`] cache at `slot`, as a `run`'s store is:
/// a `scope` made where an earlier one ended reuses its allocation.
///
/// [`Scope`]: crate::storage::Scope
pub(crate) struct KeptValue<T> {
    value: ManuallyDrop<Value>,
    slot: usize,
    _store: PhantomData<fn() -> T>,
}

impl<T: Send + Sync + 'static> KeptValue<T> {
    pub(crate) fn new(store: T, slot: usize) -> KeptValue<T> {
        KeptValue {
            value: ManuallyDrop::new(FreshValue::recycled(store, slot).into_value()),
            slot,
            _store: PhantomData,
        }
    }
}

impl<T> KeptValue<T> {
    /// The store, for [`CurrentFrame::run_with_borrowed_entry`].
    #[inline(always)]
    fn value(&self) -> &Value {
        &self.value
    }
}

impl<T> Drop for KeptValue<T> {
    fn drop(&mut self) {
        // SAFETY: taken once, here; never used again.
        unsafe { ManuallyDrop::take(&mut self.value) }.recycle(self.slot);
    }
}

impl Value {
    /// Adds the reference that a bitwise copy of this value takes over (for copies made in
    /// bulk: the caller counts the share, [`Recycled::count_share`], once for all of them).
    ///
    /// # Safety
    ///
    /// The caller must hand the new reference to exactly one bitwise copy, which releases it.
    #[inline]
    unsafe fn retain_copy(&self) {
        // SAFETY: `data` holds a strong reference of the type `ops` was made for.
        unsafe { (self.ops.retain)(self.data) };
    }
}

impl Clone for Value {
    fn clone(&self) -> Value {
        Recycled::count_share();
        // SAFETY: `data` holds a strong reference of the type `ops` was made for.
        unsafe { (self.ops.retain)(self.data) };
        Value {
            data: self.data,
            ops: self.ops,
        }
    }
}

impl Drop for Value {
    fn drop(&mut self) {
        // SAFETY: as in `clone`; this value's reference is released once, here.
        unsafe { (self.ops.release)(self.data) }
    }
}

/// The number of slots in a thread's [`Recycled`] cache.
const RECYCLED_SLOTS: usize = 8;

/// Store allocations that `run` scopes left on this thread when they ended with the only
/// reference to their store: the value is dropped in place when the scope ends, as before, and
/// the next `run` writes its store into the allocation instead of allocating. It saves a
/// `malloc`, a `free` and two atomic decrements per `run` (one `compare_exchange` is paid
/// instead, to prove the reference is the last). One allocation per slot is kept, slots are
/// picked by storage key, and they are freed when the thread exits.
///
/// No `Drop`, so that the thread-local is reached with one plain access; [`ReleaseRecycled`]
/// frees the slots at thread exit, and is armed by the first allocation kept.
struct Recycled {
    /// `None` is a free slot. Every slot holds [`CLOSED`] until the thread-exit release is
    /// registered, and again once it has run: keeping an allocation is then one test of the
    /// slot, with arming on the cold path.
    slots: [Cell<Option<CachedAllocation>>; RECYCLED_SLOTS],
    /// How many references this thread has added to stores ([`Value`] clones and
    /// [`Value::to_arc`]), wrapping. A `run`'s store is reachable only through its stack frame,
    /// which only this thread's cell points at, until something on this thread adds a reference
    /// to it (a `get_store`, a capture promoting the frame, a frame built from it): when the
    /// count is the same at the end of the `run` as before its store went in, the `run` holds the
    /// only reference, with no `Weak` (made only from an `Arc` that `get_store` returned), and
    /// needs no locked check to reuse the allocation.
    shares: Cell<u64>,
}

/// A cached allocation: the only reference to an `Arc` allocation whose value was dropped.
#[derive(Clone, Copy)]
struct CachedAllocation {
    data: NonNull<()>,
    ops: &'static ValueOps,
}

impl CachedAllocation {
    fn is_closed(self) -> bool {
        ptr::eq(self.ops, &CLOSED_OPS)
    }
}

/// The table of [`CLOSED`]: its layout (0) matches no store's, so it is never taken, and its
/// functions are never called.
static CLOSED_OPS: ValueOps = ValueOps {
    layout: 0,
    ..*OpsOf::<()>::OPS
};

/// A slot that keeps nothing: the thread-exit release is not registered yet, or has run.
const CLOSED: CachedAllocation = CachedAllocation {
    data: NonNull::dangling(),
    ops: &CLOSED_OPS,
};

thread_local! {
    static RECYCLED: Recycled = const {
        Recycled {
            slots: [const { Cell::new(Some(CLOSED)) }; RECYCLED_SLOTS],
            shares: Cell::new(0),
        }
    };

    static RELEASE_RECYCLED: ReleaseRecycled = const { ReleaseRecycled };
}

// The thread-local must stay destructor-free (see `Recycled`).
const _: () = assert!(!std::mem::needs_drop::<Recycled>());

impl Recycled {
    /// Counts a reference added to a store on this thread (see [`Recycled::shares`]).
    #[inline(always)]
    fn count_share() {
        RECYCLED.with(|recycled| recycled.shares.set(recycled.shares.get().wrapping_add(1)));
    }

    /// The count of references this thread has added to stores: unchanged over a span of code,
    /// nothing on this thread added one, so a store only this thread could reach has none.
    #[inline(always)]
    fn shares() -> u64 {
        RECYCLED.with(|recycled| recycled.shares.get())
    }

    /// Takes the allocation at `slot` if its layout is `layout` (a [`layout_key`]).
    #[inline]
    fn take(slot: usize, layout: usize) -> Option<NonNull<()>> {
        if layout == 0 {
            // Never reused (and `CLOSED`'s).
            return None;
        }
        RECYCLED.with(|recycled| {
            let cell = &recycled.slots[slot % RECYCLED_SLOTS];
            let empty = cell.get()?;
            if empty.ops.layout != layout {
                return None;
            }
            cell.set(None);
            Some(empty.data)
        })
    }

    /// Keeps `data` at `slot` if the slot is free and the thread is not exiting; returns whether
    /// it did (if not, the caller still owns it).
    #[inline]
    fn put(slot: usize, data: NonNull<()>, ops: &'static ValueOps) -> bool {
        RECYCLED.with(|recycled| {
            let cell = &recycled.slots[slot % RECYCLED_SLOTS];
            match cell.get() {
                None => {
                    cell.set(Some(CachedAllocation { data, ops }));
                    true
                }
                Some(kept) => recycled.put_closed(cell, kept, CachedAllocation { data, ops }),
            }
        })
    }

    /// [`Recycled::put`] on a slot that is taken: if it is [`CLOSED`] because the thread-exit
    /// release is not registered yet, registers it, opens every slot and keeps `empty`.
    #[cold]
    #[inline(never)]
    fn put_closed(
        &self,
        cell: &Cell<Option<CachedAllocation>>,
        kept: CachedAllocation,
        empty: CachedAllocation,
    ) -> bool {
        // Fails once the thread's locals are being destroyed: the release has run, or is too
        // late to register.
        if !kept.is_closed() || RELEASE_RECYCLED.try_with(|_| ()).is_err() {
            return false;
        }
        for slot in &self.slots {
            if slot.get().is_some_and(CachedAllocation::is_closed) {
                slot.set(None);
            }
        }
        cell.set(Some(empty));
        true
    }
}

/// Frees this thread's recycled allocations when the thread exits.
struct ReleaseRecycled;

impl Drop for ReleaseRecycled {
    fn drop(&mut self) {
        RECYCLED.with(|recycled| {
            // From here `put` declines: the slots are closed, and re-arming fails now that this
            // destructor has run.
            for slot in &recycled.slots {
                if let Some(empty) = slot.replace(Some(CLOSED))
                    && !empty.is_closed()
                {
                    // SAFETY: the cache owned this allocation; taken out of it, it is freed
                    // once.
                    unsafe { (empty.ops.free_empty)(empty.data) }
                }
            }
        });
    }
}

/// One storage's entry in a frame. `value: None` means the storage was exited (`get_store()`
/// is `None`, not the default); a storage with no entry shows its default.
#[derive(Clone)]
struct Entry {
    key: u64,
    value: Option<Value>,
}

/// Entries past this count are found by binary search instead of a linear scan.
const LINEAR_SCAN_MAX: usize = 8;

/// An immutable storage context: a thin pointer to one allocation of a [`FrameHeader`] header
/// followed by its entries, shared by reference counting (null: the empty frame).
///
/// Thin on purpose: frames go in and out of the thread's `Cell`s on every poll and
/// read, and a 16-byte fat pointer there costs store-forwarding stalls that dominated
/// `get_store` in the benchmarks (see BENCHMARKS.md). One allocation with the entries inline, so
/// that a read goes from the thread's pointer straight to the entry: no pointer to a separate
/// entry array to load first.
#[derive(Default)]
pub(crate) struct SharedFrame(Option<NonNull<FrameHeader>>);

/// The header of a frame. The entries, sorted by key, follow it directly: in the heap frame's
/// allocation, or in a [`StackFrame`]'s inline array.
///
/// Aligned to 8 so that the entries follow with no padding on 32-bit targets too.
#[repr(C, align(8))]
pub(crate) struct FrameHeader {
    /// A heap frame's reference count (the `SharedFrame`s and cell references sharing it); unused,
    /// and left uninitialised, in a stack frame.
    refs: AtomicUsize,
    /// The number of entries.
    len: u32,
    /// The byte offset, from the header, just past the last entry: what a [`PositionHint`] (a
    /// byte offset too) is checked against, so that a hinted read scales no index. A stack
    /// frame's (or spill block's) is [`UNCOUNTED_END`] less, which is what marks it: the offsets
    /// are even, so the hinted read's `offset < end` holds for the same offsets either way.
    end: u32,
}

/// What a stack frame's `end` is less than its entries' end (see [`FrameHeader::end`]).
const UNCOUNTED_END: u32 = 1;

// Entry offsets and ends are even, so that `UNCOUNTED_END` changes no hinted read.
const _: () = assert!(FrameHeader::entry_offset(0) % 2 == 0 && size_of::<Entry>() % 2 == 0);
// `FrameHeader::write_stack` writes both in one store.
const _: () =
    assert!(std::mem::offset_of!(FrameHeader, end) == std::mem::offset_of!(FrameHeader, len) + 4);

impl FrameHeader {
    /// The header of a heap frame of `len` entries, with one reference.
    #[inline(always)]
    fn heap(len: usize) -> FrameHeader {
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
    fn checked_end(len: usize) -> u32 {
        let end = len
            .checked_mul(size_of::<Entry>())
            .and_then(|size| size.checked_add(size_of::<FrameHeader>()))
            .and_then(|end| u32::try_from(end).ok());
        end.expect("more storages in one context than a frame can hold")
    }

    /// Writes the header of a stack frame or spill block of `len` entries ending at `end`
    /// (from [`FrameHeader::entry_offset`] or [`FrameHeader::checked_end`]). Its count stays
    /// uninitialised: nothing counts references to it, a store less on every `run`. The two
    /// fields go in one 8-byte store: as two 4-byte stores, `run` over three other storages
    /// took 4.93 ns instead of 4.33 (5 alternating rounds, `benches/storage.rs`), for three
    /// instructions less.
    ///
    /// # Safety
    ///
    /// `header` must be valid for writes.
    #[inline(always)]
    unsafe fn write_stack(header: *mut FrameHeader, len: usize, end: u32) {
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
    const fn entry_offset(index: usize) -> usize {
        size_of::<FrameHeader>() + index * size_of::<Entry>()
    }
}

/// Where a storage's entry was last found in a frame, as the entry's byte offset from the
/// frame's header: a guess, checked before use. A storage sits at the same position in every
/// frame with the same set of storages, so most reads need no search. Only ever an entry's
/// offset ([`FrameHeader::entry_offset`]), which a hinted read relies on: one below a frame's
/// `end` is a whole entry of that frame.
pub(crate) struct PositionHint(AtomicU32);

impl PositionHint {
    /// A hint at the first entry.
    pub(crate) const fn new() -> PositionHint {
        PositionHint(AtomicU32::new(FrameHeader::entry_offset(0) as u32))
    }

    /// Points the hint at entry `index` of a frame (which exists, so its offset fits).
    #[inline]
    fn set(&self, index: usize) {
        self.0
            .store(FrameHeader::entry_offset(index) as u32, Ordering::Relaxed);
    }
}

// The entries start right after the header, with no padding, in both layouts.
const _: () = assert!(std::mem::offset_of!(StackFrame, inline) == size_of::<FrameHeader>());
const _: () = assert!(size_of::<FrameHeader>() % align_of::<Entry>() == 0);
const _: () = assert!(align_of::<FrameHeader>() >= align_of::<Entry>());

/// The layout of a heap frame of `len` entries.
fn frame_layout(len: usize) -> Layout {
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
unsafe fn entries_of<'a>(raw: *const FrameHeader) -> &'a [Entry] {
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
    fn build(before: &[Entry], own: Option<Entry>, after: &[Entry]) -> SharedFrame {
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
    fn as_ptr(&self) -> *const FrameHeader {
        match self.0 {
            Some(raw) => raw.as_ptr(),
            None => ptr::null(),
        }
    }

    /// Gives up this frame's reference as a raw pointer (null: empty).
    #[inline(always)]
    fn into_raw(self) -> *const FrameHeader {
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
    unsafe fn from_raw(raw: *const FrameHeader) -> SharedFrame {
        SharedFrame(NonNull::new(raw.cast_mut()))
    }

    /// Adds a reference to the heap frame at `raw`.
    ///
    /// # Safety
    ///
    /// `raw` must be an untagged heap frame pointer whose frame a reference keeps alive.
    #[inline(always)]
    unsafe fn retain(raw: *const FrameHeader) {
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
    unsafe fn free(raw: *mut FrameHeader) {
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
    data: NonNull<FrameHeader>,
    _frame: PhantomData<&'a [Entry]>,
}

/// The header that [`FrameView::EMPTY`] points to: no entries, never counted or freed.
static EMPTY_HEADER: FrameHeader = FrameHeader {
    refs: AtomicUsize::new(0),
    len: 0,
    end: FrameHeader::entry_offset(0) as u32,
};

impl<'a> FrameView<'a> {
    const EMPTY: FrameView<'static> = FrameView {
        // SAFETY: a static is never null.
        data: unsafe { NonNull::new_unchecked(ptr::from_ref(&EMPTY_HEADER).cast_mut()) },
        _frame: PhantomData,
    };

    /// # Safety
    ///
    /// `data` must point to a live frame (untagged) with the provenance of the whole frame,
    /// which stays alive for `'a`.
    #[inline(always)]
    unsafe fn new(data: NonNull<FrameHeader>) -> FrameView<'a> {
        FrameView {
            data,
            _frame: PhantomData,
        }
    }

    /// The entries, sorted by key.
    #[inline(always)]
    fn entries(self) -> &'a [Entry] {
        // SAFETY: see the field; the frame outlives `'a`.
        unsafe { entries_of(self.data.as_ptr()) }
    }

    /// The entry of `key`: `None` if the storage has none in this frame.
    #[inline]
    fn lookup(self, key: u64) -> Option<&'a Entry> {
        self.position(key).map(|i| &self.entries()[i])
    }

    #[inline]
    fn position(self, key: u64) -> Option<usize> {
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
    pub(crate) fn lookup_at_hint<T: Send + Sync + 'static>(
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
    pub(crate) fn lookup_searched<T: Send + Sync + 'static>(
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
    fn with(self, key: u64, value: Option<Option<Value>>) -> Option<SharedFrame> {
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
    pub(crate) const EMPTY: SharedFrame = SharedFrame(None);

    #[inline]
    pub(crate) fn view(&self) -> FrameView<'_> {
        match self.0 {
            // SAFETY: this frame's reference keeps it alive while `self` is borrowed.
            Some(raw) => unsafe { FrameView::new(raw) },
            None => FrameView::EMPTY,
        }
    }

    #[cfg(test)]
    fn entries(&self) -> &[Entry] {
        self.view().entries()
    }

    /// The entry of `key`: `None` if the storage has none in this frame.
    #[cfg(test)]
    fn lookup(&self, key: u64) -> Option<&Entry> {
        self.view().lookup(key)
    }

    /// This frame with `key` set to `entry` (`None`: removed).
    fn with(&self, key: u64, value: Option<Option<Value>>) -> SharedFrame {
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

/// The tag bit of a [`CurrentFrame`] pointer (frames are 8-aligned): the cell does not own the
/// frame, an owner higher up this thread's stack does: a [`LendGuard`] guard or a running
/// execution ([`CurrentFrame::enter`]) for a heap frame, the `run` that built it for a
/// [`StackFrame`] (told apart by [`points_at_stack`]).
///
/// One tag for both, so that a read through a frame owned up the stack tests one bit and
/// reaches the header at a fixed offset from the tagged pointer: with a tag for each, every
/// read also copied, masked and subtracted the tag (2 instructions more).
const UNOWNED: usize = 1;

#[inline(always)]
fn untagged(raw: *const FrameHeader) -> *const FrameHeader {
    raw.map_addr(|addr| addr & !UNOWNED)
}

/// Whether the cell pointer `raw` is a stack frame's (or its spill block's), which a capture
/// promotes, rather than a heap frame's or the empty frame.
///
/// # Safety
///
/// `raw` must be in a cell, or have been, with its owner still alive.
#[inline(always)]
unsafe fn points_at_stack(raw: *const FrameHeader) -> bool {
    // SAFETY: per the caller, a tagged pointer's frame is alive (and a tagged one is never
    // null); its header's `end` is written whatever the frame's kind.
    raw.addr() & UNOWNED != 0 && unsafe { (*untagged(raw)).end & UNCOUNTED_END != 0 }
}

/// A resource's captured frame, kept as the pointer the thread's cell holds while the resource
/// runs: a heap frame tagged [`UNOWNED`], so that entering it is a plain store with no `or` on
/// every poll, or null for the empty frame (which owns nothing, so the cell may hold it
/// untagged). Owns one reference, as a [`SharedFrame`] does.
///
/// The empty frame is not tagged so that a tagged pointer in the cell is never null: a read
/// of a lent or stack frame then goes straight to its header with no null test.
pub(crate) struct CapturedFrame(*const FrameHeader);

// SAFETY: a `SharedFrame` with its pointer tagged (see `SharedFrame`'s `Send` and `Sync`).
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
            CapturedFrame(raw)
        } else {
            CapturedFrame(raw.map_addr(|addr| addr | UNOWNED))
        }
    }

    /// The pointer the thread's cell holds while the resource runs. Code inside that puts the
    /// empty frame in place of the empty frame is not seen as a change, and need not be: the
    /// resource's frame stays the empty frame.
    #[inline(always)]
    fn lent(&self) -> *const FrameHeader {
        self.0
    }

    /// The frame's entries.
    fn view(&self) -> FrameView<'_> {
        // SAFETY: this frame's reference keeps it alive while `self` is borrowed.
        unsafe { CurrentFrame::view(self.lent()) }
    }
}

impl Clone for CapturedFrame {
    #[inline]
    fn clone(&self) -> CapturedFrame {
        let data = untagged(self.lent());
        if !data.is_null() {
            // SAFETY: this frame's own reference keeps the heap frame alive; the new one is the
            // clone's.
            unsafe { SharedFrame::retain(data) };
        }
        CapturedFrame(self.0)
    }
}

impl Default for CapturedFrame {
    /// The empty frame.
    fn default() -> CapturedFrame {
        CapturedFrame(ptr::null())
    }
}

impl fmt::Debug for CapturedFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.view().entries().iter().map(|e| e.key))
            .finish()
    }
}

impl Drop for CapturedFrame {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the reference `new` took over, released once, here.
        drop(unsafe { SharedFrame::from_raw(untagged(self.lent())) });
    }
}

/// The thread's current frame.
///
/// It has no `Drop` (the thread state that holds it must have none, to be reached cheaply):
/// whoever leaves a frame in a thread's cell past every scope registers
/// `storage::release_at_thread_exit`.
///
/// It holds a raw frame pointer: null for the empty frame, which owns nothing and is never
/// tagged. Untagged and not null, it is a heap frame whose reference the cell owns.
/// Tagged [`UNOWNED`], it is a heap frame whose reference belongs to the [`LendGuard`] guard
/// that tagged it, or to the execution running in it ([`CurrentFrame::enter`]), or a
/// [`StackFrame`] (its header says so) owned by [`CurrentFrame::run_with_entry`]. Either owner is
/// alive higher up the same thread's stack. Guards and stack frames nest strictly: the cell is
/// thread-local and `!Send`, and they never leave the function that made them.
pub(crate) struct CurrentFrame {
    raw: Cell<*const FrameHeader>,
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
    unsafe fn cloned(raw: *const FrameHeader) -> SharedFrame {
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
    unsafe fn owned(raw: *const FrameHeader) -> SharedFrame {
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
    /// call). `around` runs right after the switch and right before the switch back (also
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
    fn enter<C: OnChange, A: AroundFrame, R>(
        &self,
        frame: C,
        around: A,
        f: impl FnOnce() -> R,
    ) -> R {
        let installed = frame.captured().lent();
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
    fn leave_scope_changed(&self, previous: *const FrameHeader) {
        let current = self.raw.replace(previous);
        // SAFETY: `current` was in the cell and has just been replaced there; it is released
        // with the caller's context back in place.
        drop(unsafe { CurrentFrame::owned(current) });
    }

    #[cold]
    #[inline(never)]
    fn leave_changed(&self, frame: &mut CapturedFrame, previous: *const FrameHeader) {
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
    pub(crate) fn get(&self) -> SharedFrame {
        let raw = self.raw.get();
        // SAFETY: the pointer is in the cell, so its owner is alive.
        if unsafe { points_at_stack(raw) } {
            return self.promote_in_place(raw);
        }
        // SAFETY: as above.
        unsafe { CurrentFrame::cloned(raw) }
    }

    /// A new reference to the current frame (O(1): one refcount increment, none when empty),
    /// as a [`CapturedFrame`], for a resource or a snapshot to keep. A stack frame is promoted
    /// to the heap once per `run`, and the copy left in the cell.
    #[inline(always)]
    pub(crate) fn capture(&self) -> CapturedFrame {
        let raw = self.raw.get();
        // The empty frame first: one test on the path of every capture outside all storage.
        if raw.is_null() {
            return CapturedFrame(raw);
        }
        let data = untagged(raw);
        // SAFETY: the pointer is in the cell, so its owner is alive.
        if unsafe { points_at_stack(raw) } {
            return CapturedFrame::new(self.promote_in_place(raw));
        }
        // SAFETY: `data` is a heap frame (not a stack frame, not null) in the cell, so its owner
        // holds a reference for the duration of this call; the new reference is the result's.
        unsafe { SharedFrame::retain(data) };
        CapturedFrame(data.map_addr(|addr| addr | UNOWNED))
    }

    /// A capture of a stack frame: promotes it and leaves the heap copy in the cell
    /// (with a reference of its own), so that further captures in the same scope take the
    /// plain path. The scope's end recognises the copy as its own frame.
    #[cold]
    #[inline(never)]
    fn promote_in_place(&self, raw: *const FrameHeader) -> SharedFrame {
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
    fn clone_store_searched<T: Send + Sync + 'static>(
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
    unsafe fn with_store_lending<T: Send + Sync + 'static, R>(
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
    fn with_store_in<T: Send + Sync + 'static, R>(
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
    fn with_store_searched<T: Send + Sync + 'static, R>(
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
    unsafe fn view<'a>(raw: *const FrameHeader) -> FrameView<'a> {
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
    unsafe fn entries_at<'a>(raw: *const FrameHeader) -> &'a [Entry] {
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
    fn lend(&self) -> LendGuard<'_> {
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
    fn with_current<R>(&self, f: impl FnOnce(FrameView<'_>) -> R) -> R {
        let lent = self.lend();
        f(lent.frame())
    }

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
    fn run_scope<S: ScopeStore, R>(
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
trait OnChange {
    /// The execution's frame.
    fn captured(&self) -> &CapturedFrame;
    /// Puts `previous` back in the cell, which holds another frame than the one entered.
    fn leave_changed(self, cell: &CurrentFrame, previous: *const FrameHeader);
}

/// The replacement becomes the execution's own frame ([`CurrentFrame::enter_keeping`]).
struct KeepChanges<'a>(&'a mut CapturedFrame);

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
struct DropChanges<'a>(&'a CapturedFrame);

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
struct Entered<'a, C: OnChange, A: AroundFrame> {
    cell: &'a CurrentFrame,
    /// `None` only once left.
    frame: Option<C>,
    /// `None` until entered, and once left.
    around: Option<A>,
    /// The cell's pointer before, put back as it was.
    previous: *const FrameHeader,
    /// The cell's pointer while entered: unchanged at the end, the code inside left the frame
    /// as it was, which is compared with no load of the frame.
    installed: *const FrameHeader,
}

impl<C: OnChange, A: AroundFrame> Entered<'_, C, A> {
    #[inline(always)]
    fn leave(mut self) {
        let frame = self.frame.take();
        let around = self.around.take();
        let this = ManuallyDrop::new(self);
        Self::switch_back(this.cell, frame, around, this.previous, this.installed);
    }

    #[inline(always)]
    fn switch_back(
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
    fn switch_back_unwinding(
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

/// Who owns the store of a stack frame's own entry.
trait ScopeStore {
    /// The store's type, for its release.
    type Store: Send + Sync + 'static;
    /// Whether the scope releases the store at its end (else it forgets its bitwise copy).
    const OWNED: bool;
}

/// The scope owns its store, a [`FreshValue<T>`] ([`CurrentFrame::run_with_entry`]).
struct OwnedStore<T>(PhantomData<fn() -> T>);

impl<T: Send + Sync + 'static> ScopeStore for OwnedStore<T> {
    type Store = T;
    const OWNED: bool = true;
}

/// The scope borrows its store from a [`KeptValue`] ([`CurrentFrame::run_with_borrowed_entry`]).
struct BorrowedStore;

impl ScopeStore for BorrowedStore {
    // Never released, so never typed.
    type Store = ();
    const OWNED: bool = false;
}

/// Puts the previous frame back when a [`CurrentFrame::run_with_entry`] scope ends, then drops the
/// stack frame.
struct StackScope<
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
fn owned<S: ScopeStore>(value: Option<Value>) -> Option<Value> {
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
unsafe fn release_stack_frame<T: Send + Sync + 'static>(
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
unsafe fn release_promoted(promoted: *const FrameHeader, value: Option<Value>, slot: usize) {
    // SAFETY: per the caller.
    unsafe { release_heap_copy_then_store(promoted, value, slot) }
}

/// The body of [`release_promoted`].
///
/// # Safety
///
/// As for [`release_promoted`].
#[inline(always)]
unsafe fn release_heap_copy_then_store(
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
pub(crate) const STACK_ENTRIES: usize = 4;

/// A frame on the stack of a synchronous scope ([`CurrentFrame::run_with_entry`]).
///
/// Its entries are bitwise copies of the previous frame's, which outlives it, plus its own entry
/// at its sorted place, a copy of the store that its scope ([`StackScope`]) owns. Nothing but the
/// thread's cell points at it; whatever needs the frame beyond the scope
/// [promotes](StackFrame::promote) it to a heap copy, made once and shared.
#[repr(C)]
struct StackFrame {
    /// First, so that a pointer to the stack frame is also one to its `FrameHeader`.
    header: FrameHeader,
    /// The entries, right after the header as in a heap frame; never dropped (they are not
    /// owned).
    inline: [MaybeUninit<Entry>; STACK_ENTRIES],
    /// The heap copy, once promoted (null until then); the stack frame owns one reference,
    /// released by `release_stack_frame` (a stack frame has no `Drop`).
    promoted: Cell<*const FrameHeader>,
    _pinned: PhantomPinned,
}

/// Where a [`StackFrame`] too large for its inline array keeps its entries: a heap block of
/// the owner pointer (to the stack frame's `promoted`, for [`StackFrame::promote`]), then a
/// header and the entries as in a frame. The stack frame marks its own header's length with
/// [`SpillBlock::MARK`] and keeps this in its inline array; the block is freed when the scope ends.
/// Its entries are bitwise copies of the previous frame's, which outlives it, except the
/// scope's own entry, which holds the scope's store.
#[derive(Clone, Copy)]
struct SpillBlock {
    block: *mut u8,
    /// The number of entries.
    len: usize,
    /// The position of the scope's own entry, the one entry the block owns.
    own: usize,
}

const _: () = assert!(size_of::<SpillBlock>() <= size_of::<[MaybeUninit<Entry>; STACK_ENTRIES]>());
const _: () = assert!(align_of::<SpillBlock>() <= align_of::<Entry>());

impl SpillBlock {
    /// The bytes before the header: the owner pointer, padded to the header's alignment (on
    /// 32-bit targets the pointer is 4 bytes and the header is aligned to 8).
    const HEADER: usize =
        size_of::<*const Cell<*const FrameHeader>>().next_multiple_of(align_of::<FrameHeader>());
    /// The length a stack frame with a spill block has in its own header (a real one is at most
    /// [`STACK_ENTRIES`]).
    const MARK: u32 = u32::MAX;

    fn layout(len: usize) -> Layout {
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
    unsafe fn of(frame: *const StackFrame) -> Option<SpillBlock> {
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
    unsafe fn header(block: *mut u8) -> *mut FrameHeader {
        // SAFETY: per the caller, the header is in the block.
        unsafe { block.add(SpillBlock::HEADER).cast::<FrameHeader>() }
    }

    /// The cell pointer of `frame`'s spill block, if it has one.
    ///
    /// # Safety
    ///
    /// As for [`SpillBlock::of`].
    #[inline]
    unsafe fn installed(frame: *const StackFrame) -> Option<*const FrameHeader> {
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
    unsafe fn release(frame: *mut StackFrame) -> Option<Value> {
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
    unsafe fn init(
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
        // become a `memcpy` call). The earlier single pass tested each entry against the key,
        // the capacity and an `Option` holding the own entry: a `run` over three entries cost
        // 150 instructions where its entry sorts first, now 129 (132 and 125 where it sorts
        // last; `benches/instructions.rs`, 100 000 rounds).
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
    unsafe fn finish(frame: *mut StackFrame, len: usize) -> *const FrameHeader {
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
    /// takes `value` over, so that `run` keeps no store across this call (when it kept one, the
    /// store went to memory on every `run`: 1 to 3 instructions more a `run` in
    /// `benches/instructions.rs`). Returns the cell pointer for the block, tagged [`UNOWNED`] like
    /// a stack frame's.
    ///
    /// # Safety
    ///
    /// As for [`StackFrame::init`]; `base` must be the entries of `init`'s `base`.
    #[cold]
    #[inline(never)]
    unsafe fn init_spilled(
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

    /// A heap frame with the same entries, made on the first call and shared afterwards.
    ///
    /// # Safety
    ///
    /// `data` must be a live, activated stack frame's pointer.
    #[cold]
    #[inline(never)]
    unsafe fn promote(data: *const FrameHeader) -> SharedFrame {
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

/// The guard of [`CurrentFrame::lend`].
pub(crate) struct LendGuard<'a> {
    cell: &'a CurrentFrame,
    /// The lent frame (untagged). When `lender`, this guard owns its strong reference (taken
    /// from the cell); otherwise its owner is further up the stack.
    data: *const FrameHeader,
    lender: bool,
    _not_send: PhantomData<*const ()>,
}

impl LendGuard<'_> {
    /// The frame that was current when the guard was made.
    #[inline]
    pub(crate) fn frame(&self) -> FrameView<'_> {
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::AtomicUsize;

    /// Whether the cell points at a stack frame (or its spill block), not owning it.
    fn is_stack_in(cell: &CurrentFrame) -> bool {
        let raw = cell.raw.get();
        // SAFETY: the pointer is in the cell, so its owner is alive.
        unsafe { points_at_stack(raw) }
    }

    impl FrameView<'_> {
        /// The same frame (the same entries in memory).
        fn is(self, other: FrameView<'_>) -> bool {
            self.data == other.data
        }
    }

    /// A storage's read state with no default.
    struct NoDefault(PositionHint);

    impl<T> StoreSource<T> for NoDefault {
        fn hint(&self) -> &PositionHint {
            &self.0
        }

        fn default_store(&self) -> Option<&Arc<T>> {
            None
        }
    }

    /// A store that counts its drops, to prove frames are neither leaked nor freed early.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counted(drops: &Arc<AtomicUsize>) -> Option<Option<Value>> {
        Some(Some(Value::new(Arc::new(Counted(drops.clone())))))
    }

    fn read(frame: FrameView<'_>, key: u64) -> Option<u64> {
        frame
            .lookup(key)
            .and_then(|e| e.value.as_ref())
            .map(|v| *v.downcast_ref::<u64>().unwrap())
    }

    #[test]
    fn lent_frame_survives_the_cell_being_replaced() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = CurrentFrame::new();
        cell.set(
            SharedFrame::EMPTY
                .with(1, counted(&drops))
                .with(2, value(20)),
        );
        {
            let lent = cell.lend();
            // What `enter_with` does inside `with_store`: take, build, set.
            let taken = cell.take();
            cell.set(taken.with(2, value(21)));
            // And a `run` that replaces and restores, dropping the frames in between.
            let outer = cell.replace(SharedFrame::EMPTY.with(3, value(30)));
            drop(cell.replace(outer));
            assert_eq!(read(lent.frame(), 2), Some(20));
            assert_eq!(read(cell.get().view(), 2), Some(21));
            assert_eq!(drops.load(Ordering::SeqCst), 0);
        }
        // The changed cell keeps its frame; the lent one was released with its guard, but the
        // store it held is still shared by the new frame.
        assert_eq!(read(cell.get().view(), 2), Some(21));
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(cell.take());
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn untouched_lend_gives_the_reference_back() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = CurrentFrame::new();
        cell.set(SharedFrame::EMPTY.with(1, counted(&drops)));
        let before = cell.get();
        for _ in 0..3 {
            let lent = cell.lend();
            assert!(lent.frame().is(before.view()));
            // Nested lends of the same frame are views.
            let inner = cell.lend();
            assert!(inner.frame().is(before.view()));
        }
        // Two references: the cell's and `before`.
        // SAFETY: `before` keeps the frame alive.
        assert_eq!(unsafe { (*before.as_ptr()).refs.load(Ordering::SeqCst) }, 2);
        drop(before);
        cell.set(SharedFrame::EMPTY);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn lend_restored_after_take_and_put_back_is_released_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = CurrentFrame::new();
        cell.set(SharedFrame::EMPTY.with(1, counted(&drops)));
        {
            let outer = cell.lend();
            // Taken out and put back (a `Snapshot::run`): the cell now owns a reference of its
            // own.
            let swapped = cell.replace(SharedFrame::EMPTY);
            cell.set(swapped);
            {
                // A nested lend of that reference, given back untouched.
                let inner = cell.lend();
                assert!(inner.frame().is(outer.frame()));
            }
            assert!(outer.frame().lookup(1).is_some());
        }
        assert!(cell.get().lookup(1).is_some());
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        cell.set(SharedFrame::EMPTY);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn lent_frame_is_released_when_the_cell_is_emptied() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = CurrentFrame::new();
        cell.set(SharedFrame::EMPTY.with(1, counted(&drops)));
        {
            let lent = cell.lend();
            cell.set(SharedFrame::EMPTY);
            // Still readable: the guard holds the only reference now.
            assert!(lent.frame().lookup(1).is_some());
            assert_eq!(drops.load(Ordering::SeqCst), 0);
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert!(cell.get().0.is_none());
    }

    #[test]
    fn lend_of_the_empty_frame_and_panics_inside_a_lend() {
        let cell = CurrentFrame::new();
        assert!(cell.lend().frame().entries().is_empty());
        let drops = Arc::new(AtomicUsize::new(0));
        cell.set(SharedFrame::EMPTY.with(1, counted(&drops)));
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

    fn keys_and_values(frame: &SharedFrame) -> Vec<(u64, Option<u64>)> {
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
        Some(Some(Value::new(Arc::new(v))))
    }

    #[test]
    fn frames_stay_sorted_through_inserts_replacements_and_removals() {
        let mut frame = SharedFrame::EMPTY;
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
            .fold(SharedFrame::EMPTY, |f, key| f.with(key * 2, value(key)));
        for key in 0..100u64 {
            let entry = frame.lookup(key * 2).expect("present");
            assert_eq!(
                *entry.value.as_ref().unwrap().downcast_ref::<u64>().unwrap(),
                key
            );
            assert!(frame.lookup(key * 2 + 1).is_none());
        }
    }

    /// What `run` does when the code inside changed the context: put back only `key`'s entry.
    fn restore_key(key: u64) -> impl FnOnce(&SharedFrame, FrameView<'_>, u64) -> SharedFrame {
        move |current, previous, _| current.restore(previous.save(key))
    }

    fn stacked<T: Send + Sync + 'static, R>(
        cell: &CurrentFrame,
        key: u64,
        value: Option<FreshValue<T>>,
        f: impl FnOnce() -> R,
    ) -> R {
        cell.run_with_entry(Key::from_raw(key), value, f, restore_key(key))
    }

    fn fresh(v: u64) -> Option<FreshValue<u64>> {
        Some(FreshValue::new(v))
    }

    fn fresh_counted(drops: &Arc<AtomicUsize>) -> Option<FreshValue<Counted>> {
        Some(FreshValue::new(Counted(drops.clone())))
    }

    fn current(cell: &CurrentFrame, key: u64) -> Option<u64> {
        cell.with_current(|frame| read(frame, key))
    }

    fn present(cell: &CurrentFrame, key: u64) -> bool {
        cell.with_current(|frame| frame.lookup(key).is_some())
    }

    #[test]
    fn stack_frame_reads_and_restores_the_previous_pointer_as_it_was() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = CurrentFrame::new();
        cell.set(SharedFrame::EMPTY.with(3, value(30)).with(1, value(10)));
        let before = cell.raw.get();
        stacked(&cell, 2, fresh(20), || {
            assert!(is_stack_in(&cell));
            assert_eq!(
                [1, 2, 3].map(|key| current(&cell, key)),
                [Some(10), Some(20), Some(30)]
            );
            // Nested: one over a stack frame, replacing an entry, then adding a counted one.
            stacked(&cell, 1, fresh(11), || {
                assert_eq!(current(&cell, 1), Some(11));
                stacked(&cell, 4, fresh_counted(&drops), || {
                    assert_eq!(cell.get().view().entries().len(), 4);
                    assert_eq!(current(&cell, 2), Some(20));
                });
                assert_eq!(drops.load(Ordering::SeqCst), 1);
                assert!(cell.get().lookup(4).is_none());
            });
            assert_eq!(current(&cell, 1), Some(10));
        });
        assert_eq!(cell.raw.get(), before);
        assert_eq!(current(&cell, 2), None);
        cell.set(SharedFrame::EMPTY);
    }

    #[test]
    fn stack_frame_is_promoted_once_and_what_captured_it_keeps_its_stores() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = CurrentFrame::new();
        let (first, second) = stacked(&cell, 1, fresh_counted(&drops), || {
            let first = cell.get();
            assert_eq!(cell.raw.get(), first.as_ptr());
            let second = cell.get();
            assert!(first.ptr_eq(&second));
            assert!(first.lookup(1).is_some());
            (first, second)
        });
        assert!(cell.get().lookup(1).is_none());
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(first);
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(second);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn poll_inside_a_stack_frame_leaves_it_in_place_and_keeps_changes_for_the_resource() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = CurrentFrame::new();
        let mut resource = CapturedFrame::new(SharedFrame::EMPTY.with(9, value(90)));
        stacked(&cell, 1, fresh_counted(&drops), || {
            // Enter and leave a resource, as a poll does: the stack frame stays in place.
            cell.enter_keeping(&mut resource, (), || {
                assert_eq!(current(&cell, 9), Some(90));
            });
            assert!(is_stack_in(&cell));
            // A poll that enters a storage inside keeps the change for the resource.
            cell.enter_keeping(&mut resource, (), || {
                let taken = cell.take();
                cell.set(taken.with(8, value(80)));
            });
            assert!(is_stack_in(&cell));
            assert!(cell.get().lookup(1).is_some());
        });
        assert!(cell.raw.get().is_null());
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(read(resource.view(), 9), Some(90));
        assert_eq!(read(resource.view(), 8), Some(80));
    }

    #[test]
    fn entering_the_empty_frame_leaves_it_untagged_and_every_reader_sees_it_empty() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = CurrentFrame::new();
        let mut resource = CapturedFrame::new(SharedFrame::EMPTY);
        assert!(
            resource.lent().is_null(),
            "the empty frame is null, never tagged"
        );
        // Not entered, the empty frame is null: a read of it takes the lending path, which
        // lends nothing and leaves the cell as it was.
        cell.with_current(|frame| assert!(frame.entries().is_empty()));
        assert!(cell.raw.get().is_null());
        // Entered: the cell holds null, and reads, captures and lends see no entries.
        cell.enter_keeping(&mut resource, (), || {
            assert!(cell.raw.get().is_null());
            assert_eq!(current(&cell, 1), None);
            assert!(
                cell.get().as_ptr().is_null(),
                "a capture of the empty frame"
            );
            cell.with_current(|frame| assert!(frame.entries().is_empty()));
            {
                let lent = cell.lend();
                assert!(lent.frame().entries().is_empty());
            }
            assert!(
                cell.raw.get().is_null(),
                "a lend of it owns nothing to give back"
            );
            // A `run` inside stacks on it and puts it back as it was.
            stacked(&cell, 1, fresh_counted(&drops), || {
                assert!(cell.get().lookup(1).is_some())
            });
            assert!(cell.raw.get().is_null());
        });
        assert!(cell.raw.get().is_null());
        assert!(resource.lent().is_null());
        assert_eq!(drops.load(Ordering::SeqCst), 1);

        // An `enter_with` inside becomes the resource's frame.
        cell.enter_keeping(&mut resource, (), || {
            let taken = cell.take();
            assert!(taken.as_ptr().is_null());
            cell.set(taken.with(2, counted(&drops)));
        });
        assert!(cell.raw.get().is_null());
        assert!(resource.view().lookup(2).is_some());
        assert_eq!(
            resource.lent().addr() & UNOWNED,
            UNOWNED,
            "a heap frame is tagged"
        );
        // Replaced by the untagged empty frame inside (what `disable` can leave): a change too,
        // and the resource's frame goes with it.
        cell.enter_keeping(&mut resource, (), || {
            drop(cell.take());
        });
        assert!(resource.lent().is_null());
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        // A scope of it (an `AsyncResource`'s) ends what the code inside entered.
        cell.enter_scope(&resource, (), || {
            cell.set(SharedFrame::EMPTY.with(3, counted(&drops)));
        });
        assert!(cell.raw.get().is_null());
        assert_eq!(drops.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn changes_inside_a_stack_frame_keep_other_entries_and_release_the_rest() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = CurrentFrame::new();
        cell.set(SharedFrame::EMPTY.with(1, counted(&drops)));
        stacked(&cell, 2, fresh_counted(&drops), || {
            // An `enter_with` of another storage inside.
            let taken = cell.take();
            cell.set(taken.with(3, value(30)));
        });
        // Ours restored (removed), the other change kept, the previous frame released.
        assert_eq!(
            cell.get()
                .view()
                .entries()
                .iter()
                .map(|e| e.key)
                .collect::<Vec<_>>(),
            [1, 3]
        );
        assert_eq!(drops.load(Ordering::SeqCst), 1, "the scope's own store");
        cell.set(SharedFrame::EMPTY);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn stack_frame_over_a_lent_frame_and_a_changed_one_inside() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = CurrentFrame::new();
        cell.set(SharedFrame::EMPTY.with(1, counted(&drops)));
        {
            let lent = cell.lend();
            stacked(&cell, 2, fresh(20), || {
                assert!(present(&cell, 1));
                stacked(&cell, 3, fresh(30), || {
                    let taken = cell.take();
                    cell.set(taken.with(4, value(40)));
                });
                // The inner scope restored its entry over the changed frame.
                assert!(cell.get().lookup(3).is_none());
                assert!(cell.get().lookup(4).is_some());
            });
            assert!(lent.frame().lookup(1).is_some());
            assert!(cell.get().lookup(4).is_some());
            assert!(cell.get().lookup(2).is_none());
        }
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        cell.set(SharedFrame::EMPTY);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn panic_inside_a_stack_frame_restores_and_releases() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = CurrentFrame::new();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            stacked(&cell, 1, fresh_counted(&drops), || {
                let _captured = cell.get();
                panic!("inside run");
            })
        }));
        assert!(result.is_err());
        assert!(cell.raw.get().is_null());
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_stack_frame_places_its_entry_before_between_after_or_over_the_base_entries() {
        let keys = keys_in;
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = CurrentFrame::new();
        for base in [vec![2u64], vec![2, 6], vec![2, 4, 6], vec![2, 4, 6, 8]] {
            cell.set(
                base.iter()
                    .fold(SharedFrame::EMPTY, |f, &key| f.with(key, value(key * 10))),
            );
            for key in 1..=9u64 {
                let replaces = base.contains(&key);
                let mut expected: Vec<u64> = base.iter().copied().chain([key]).collect();
                expected.sort_unstable();
                expected.dedup();
                let dropped = drops.load(Ordering::SeqCst);
                stacked(&cell, key, fresh_counted(&drops), || {
                    // On the stack, or spilled past its capacity: a stack frame's pointer.
                    assert!(is_stack_in(&cell), "key {key}");
                    assert_eq!(keys(&cell), expected, "key {key} over {base:?}");
                    for &other in base.iter().filter(|&&k| k != key) {
                        assert_eq!(current(&cell, other), Some(other * 10));
                    }
                    assert!(present(&cell, key));
                });
                assert_eq!(keys(&cell), base, "restored after key {key}");
                assert_eq!(current(&cell, 2), Some(20));
                assert_eq!(
                    drops.load(Ordering::SeqCst),
                    dropped + 1,
                    "key {key} ({replaces})"
                );
            }
        }
        cell.set(SharedFrame::EMPTY);
    }

    #[test]
    fn frames_past_the_stack_capacity_spill_to_the_heap() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = CurrentFrame::new();
        cell.set(
            (1..=STACK_ENTRIES as u64).fold(SharedFrame::EMPTY, |f, key| f.with(key, value(key))),
        );
        // Replacing an entry still fits; a new one does not.
        stacked(&cell, 1, fresh(100), || {
            assert!(is_stack_in(&cell));
            assert_eq!(current(&cell, 1), Some(100));
        });
        let before = cell.raw.get();
        stacked(&cell, 99, fresh_counted(&drops), || {
            // Spilled: still a stack frame's pointer, to its block of entries.
            assert!(is_stack_in(&cell));
            assert!(present(&cell, 99));
            let captured = cell.get();
            assert_eq!(captured.view().entries().len(), STACK_ENTRIES + 1);
            // A change inside, kept when the scope ends.
            let taken = cell.take();
            cell.set(taken.with(0, value(0)));
        });
        assert_ne!(cell.raw.get(), before);
        assert!(!present(&cell, 99) && present(&cell, 0) && present(&cell, 4));
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        stacked(&cell, 98, fresh_counted(&drops), || ());
        assert!(!present(&cell, 98));
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        cell.set(SharedFrame::EMPTY);
    }

    /// A frame of `keys`, each key's value the key itself.
    fn frame_of(keys: impl IntoIterator<Item = u64>) -> SharedFrame {
        keys.into_iter()
            .fold(SharedFrame::EMPTY, |frame, key| frame.with(key, value(key)))
    }

    /// Reads the cell's frame at every position hint up to two past its end, for each of
    /// `keys`: an entry's own position finds it, every other position misses.
    fn check_hinted_reads(cell: &CurrentFrame, keys: &[u64]) {
        let raw = cell.raw.get();
        // SAFETY: the frame is in the cell; the reads run no code that touches the cell.
        let frame = unsafe { CurrentFrame::view(raw) };
        let hint = PositionHint::new();
        for position in 0..keys.len() + 2 {
            hint.set(position);
            for (at, &key) in keys.iter().enumerate() {
                let found = frame
                    .lookup_at_hint(Key::<u64>::from_raw(key), &hint)
                    .map(|_| key);
                let expected = (at == position).then_some(key);
                assert_eq!(found, expected, "key {key} at hint {position} of {keys:?}");
            }
        }
    }

    #[test]
    fn position_hints_read_exactly_the_entries_of_heap_stack_and_spilled_frames() {
        let cell = CurrentFrame::new();
        check_hinted_reads(&cell, &[]);
        cell.set(frame_of([2, 4]));
        check_hinted_reads(&cell, &[2, 4]);
        // A stack frame's end is marked one less (`UNCOUNTED_END`); the position just past its
        // entries still misses, even where an earlier, longer stack frame left a matching key
        // in the slot.
        stacked(&cell, 6, fresh(6), || check_hinted_reads(&cell, &[2, 4, 6]));
        stacked(&cell, 1, fresh(1), || {
            assert!(is_stack_in(&cell));
            check_hinted_reads(&cell, &[1, 2, 4]);
        });
        cell.set(SharedFrame::EMPTY);
        stacked(&cell, 1, fresh(1), || check_hinted_reads(&cell, &[1]));
        cell.set(frame_of(1..=STACK_ENTRIES as u64));
        let keys: Vec<u64> = (1..=STACK_ENTRIES as u64 + 1).collect();
        stacked(&cell, STACK_ENTRIES as u64 + 1, fresh(0), || {
            assert!(is_stack_in(&cell), "a spill block is a stack frame's");
            check_hinted_reads(&cell, &keys);
        });
        // A capture promotes the stack frame; the heap copy reads the same.
        stacked(&cell, 9, fresh(9), || {
            drop(cell.capture());
            assert!(!is_stack_in(&cell));
            let mut with_nine = keys[..STACK_ENTRIES].to_vec();
            with_nine.push(9);
            check_hinted_reads(&cell, &with_nine);
        });
        cell.set(SharedFrame::EMPTY);
    }

    fn keys_in(cell: &CurrentFrame) -> Vec<u64> {
        cell.with_current(|frame| frame.entries().iter().map(|e| e.key).collect())
    }

    #[test]
    fn spilled_frames_read_nest_and_put_every_entry_in_its_place() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = CurrentFrame::new();
        // Over a heap frame of 10 entries (even keys): at the front, in between, over one, last.
        cell.set(frame_of((1..=10).map(|k| k * 2)));
        let before = cell.raw.get();
        for (key, expect_len) in [(1, 11), (7, 11), (8, 10), (21, 11)] {
            stacked(&cell, key, fresh(1000 + key), || {
                assert!(is_stack_in(&cell));
                let keys = keys_in(&cell);
                assert_eq!(keys.len(), expect_len);
                assert!(keys.is_sorted(), "{keys:?}");
                assert_eq!(current(&cell, key), Some(1000 + key));
                for other in (1..=10).map(|k| k * 2).filter(|&k| k != key) {
                    assert_eq!(current(&cell, other), Some(other));
                }
            });
            assert_eq!(cell.raw.get(), before);
        }
        // Nested: a spill over a spill over a stack frame, each put back as it was.
        cell.set(frame_of(1..=3));
        stacked(&cell, 4, fresh(4), || {
            let stack = cell.raw.get();
            stacked(&cell, 5, fresh_counted(&drops), || {
                let spill = cell.raw.get();
                assert_eq!(keys_in(&cell), [1, 2, 3, 4, 5]);
                stacked(&cell, 3, fresh(33), || {
                    assert_eq!(keys_in(&cell), [1, 2, 3, 4, 5]);
                    assert_eq!(current(&cell, 3), Some(33));
                    assert!(present(&cell, 5));
                });
                assert_eq!(cell.raw.get(), spill);
                assert_eq!(current(&cell, 3), Some(3));
            });
            assert_eq!(cell.raw.get(), stack);
            assert_eq!(drops.load(Ordering::SeqCst), 1);
        });
        cell.set(SharedFrame::EMPTY);
    }

    #[test]
    fn a_spilled_frame_is_promoted_once_and_what_captured_it_keeps_its_stores() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = CurrentFrame::new();
        cell.set(frame_of(1..=STACK_ENTRIES as u64));
        let before = cell.raw.get();
        let (first, second, resource) = stacked(&cell, 9, fresh_counted(&drops), || {
            let spill = cell.raw.get();
            // A resource's capture promotes it and leaves the copy in the cell.
            let resource = cell.capture();
            assert_eq!(cell.raw.get().addr() & UNOWNED, 0);
            let first = cell.get();
            let second = cell.get();
            assert!(first.ptr_eq(&second));
            assert_ne!(first.as_ptr(), untagged(spill));
            assert_eq!(first.view().entries().len(), STACK_ENTRIES + 1);
            assert!(first.lookup(9).is_some() && first.lookup(1).is_some());
            (first, second, resource)
        });
        assert_eq!(cell.raw.get(), before);
        assert!(!present(&cell, 9));
        drop(first);
        drop(resource);
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(second);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        // Captured inside a nested stack frame: the spill block's own copy, made once.
        let outer = stacked(&cell, 9, fresh_counted(&drops), || {
            let inner = stacked(&cell, 2, fresh(22), || cell.get());
            let outer = cell.get();
            assert_eq!(read(inner.view(), 2), Some(22));
            assert_eq!(read(outer.view(), 2), Some(2));
            assert!(outer.lookup(9).is_some() && inner.lookup(9).is_some());
            outer
        });
        assert_eq!(outer.view().entries().len(), STACK_ENTRIES + 1);
        drop(outer);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        cell.set(SharedFrame::EMPTY);
    }

    #[test]
    fn panic_inside_a_spilled_frame_restores_and_releases() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = CurrentFrame::new();
        cell.set(frame_of(1..=6));
        let before = cell.raw.get();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            stacked(&cell, 7, fresh_counted(&drops), || {
                let _kept = cell.get();
                panic!("inside a spilled frame");
            })
        }));
        assert!(caught.is_err());
        assert_eq!(cell.raw.get(), before);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        // And with a change inside: the other storage's entry is kept.
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            stacked(&cell, 7, fresh_counted(&drops), || {
                let taken = cell.take();
                cell.set(taken.with(8, value(8)));
                panic!("inside a spilled frame, changed");
            })
        }));
        assert!(caught.is_err());
        assert_eq!(keys_in(&cell), [1, 2, 3, 4, 5, 6, 8]);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        cell.set(SharedFrame::EMPTY);
    }

    #[test]
    fn a_borrowed_entry_costs_its_owner_no_reference_and_captures_take_their_own() {
        let drops = Arc::new(AtomicUsize::new(0));
        let store = Arc::new(Counted(drops.clone()));
        let kept = KeptValue::<Counted> {
            value: ManuallyDrop::new(Value::new(store.clone())),
            slot: 0,
            _store: PhantomData,
        };
        let borrowed = |cell: &CurrentFrame, key: u64, f: &mut dyn FnMut()| {
            cell.run_with_borrowed_entry(Key::from_raw(key), &kept, f, restore_key(key))
        };
        let cell = CurrentFrame::new();
        // On the stack, spilled, and both with a capture inside and a panic.
        for base in [frame_of([]), frame_of(1..=6)] {
            cell.set(base);
            let before = cell.raw.get();
            borrowed(&cell, 9, &mut || {
                assert!(present(&cell, 9));
                assert_eq!(Arc::strong_count(&store), 2, "the entry holds no reference");
            });
            assert_eq!(cell.raw.get(), before);
            let mut captured = None;
            borrowed(&cell, 9, &mut || captured = Some(cell.get()));
            let captured = captured.unwrap();
            assert_eq!(Arc::strong_count(&store), 3, "the capture holds one");
            assert!(captured.lookup(9).is_some());
            drop(captured);
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                borrowed(&cell, 9, &mut || {
                    let taken = cell.take();
                    cell.set(taken.with(8, value(8)));
                    panic!("inside a borrowed scope");
                })
            }));
            assert!(caught.is_err());
            assert!(!present(&cell, 9) && present(&cell, 8));
            assert_eq!(Arc::strong_count(&store), 2);
        }
        cell.set(SharedFrame::EMPTY);
        drop(kept);
        assert_eq!(Arc::strong_count(&store), 1);
        drop(store);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn resource_frames_clone_by_reference_and_are_entered_in_place() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = CurrentFrame::new();
        let captured = stacked(&cell, 1, fresh_counted(&drops), || cell.capture());
        let copy = captured.clone();
        assert_eq!(copy.lent(), captured.lent(), "the same frame");
        assert!(CapturedFrame::default().lent().is_null());
        assert_eq!(format!("{copy:?}"), "[1]");
        drop(captured);
        // Entered in place and left unchanged: no reference taken or released.
        cell.enter_scope(&copy, (), || {
            assert!(present(&cell, 1));
        });
        assert!(cell.raw.get().is_null());
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(copy);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn frames_built_from_others_share_their_stores_and_count_one_share() {
        let drops = Arc::new(AtomicUsize::new(0));
        let base = SharedFrame::EMPTY
            .with(1, counted(&drops))
            .with(3, counted(&drops));
        let before = Recycled::shares();
        // An entry between the two, and the first replaced.
        let keys = |frame: &SharedFrame| frame.entries().iter().map(|e| e.key).collect::<Vec<_>>();
        let between = base.with(2, counted(&drops));
        assert_eq!(keys(&between), [1, 2, 3]);
        assert_eq!(Recycled::shares(), before + 1, "one share for both copies");
        let replaced = base.with(1, value(10));
        assert_eq!(keys(&replaced), [1, 3]);
        assert_eq!(read(replaced.view(), 1), Some(10));
        // Removing the last one leaves the empty frame, which counts nothing.
        let only = SharedFrame::EMPTY.with(4, value(4));
        let shares = Recycled::shares();
        assert!(
            only.view()
                .with(4, None)
                .expect("removed")
                .as_ptr()
                .is_null()
        );
        assert_eq!(Recycled::shares(), shares);
        drop(base);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            0,
            "the new frames share the stores"
        );
        drop(replaced);
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(between);
        assert_eq!(drops.load(Ordering::SeqCst), 3);
        // Shared frames free their entries with the last reference.
        let frame = SharedFrame::EMPTY
            .with(1, counted(&drops))
            .with(2, counted(&drops));
        let clones = [frame.clone(), frame.clone()];
        drop(frame);
        drop(clones);
        assert_eq!(drops.load(Ordering::SeqCst), 5);
    }

    /// The allocation at `slot` of this thread's recycling cache, left in place (`None` for a
    /// free or closed slot).
    fn cached(slot: usize) -> Option<NonNull<()>> {
        RECYCLED.with(|recycled| {
            let empty = recycled.slots[slot].get()?;
            (!empty.is_closed()).then_some(empty.data)
        })
    }

    /// Runs `f` on a thread of its own: a fresh recycling cache, freed when `f` returns (Miri's
    /// leak check then proves the cache frees what it kept).
    fn on_new_thread(f: impl FnOnce() + Send) {
        std::thread::scope(|scope| scope.spawn(f).join().unwrap());
    }

    #[test]
    fn a_recycled_allocation_is_reused_for_the_same_layout_and_its_values_dropped() {
        on_new_thread(|| {
            let drops = Arc::new(AtomicUsize::new(0));
            let first = FreshValue::recycled(Counted(drops.clone()), 3).into_value();
            let data = first.data;
            first.recycle(3);
            assert_eq!(drops.load(Ordering::SeqCst), 1, "dropped when released");
            assert_eq!(cached(3), Some(data));
            // The same type, then another of the same layout, in the same allocation.
            let second = FreshValue::recycled(Counted(drops.clone()), 3).into_value();
            assert_eq!((second.data, cached(3)), (data, None));
            second.recycle(3);
            assert_eq!(drops.load(Ordering::SeqCst), 2);
            // (`usize`: pointer-sized and -aligned like `Counted`, on every target.)
            let number = FreshValue::recycled(7usize, 3).into_value();
            assert_eq!(
                (number.data, number.downcast_ref::<usize>()),
                (data, Some(&7))
            );
            // Shared when released: not recycled, and the other reference still reads it.
            // SAFETY: the store is a `usize`.
            let kept = unsafe { number.to_arc::<usize>() };
            number.recycle(3);
            assert_eq!((*kept, cached(3)), (7, None));
            drop(kept);
            // A layout that differs leaves the cached allocation where it is.
            FreshValue::recycled(1u64, 3).into_value().recycle(3);
            let cached_u64 = cached(3).expect("recycled");
            let small = FreshValue::recycled(9u32, 3).into_value();
            assert_ne!(small.data, cached_u64);
            assert_eq!(small.downcast_ref::<u32>(), Some(&9));
            // The slot is taken: this one is freed instead (the thread's exit frees the other).
            small.recycle(3);
            assert_eq!(cached(3), Some(cached_u64));
        });
    }

    #[test]
    fn slots_open_with_the_first_allocation_kept_and_close_at_the_release() {
        let closed = || {
            RECYCLED.with(|r| {
                r.slots
                    .iter()
                    .filter(|s| s.get().is_some_and(CachedAllocation::is_closed))
                    .count()
            })
        };
        on_new_thread(|| {
            // Nothing is kept before the thread-exit release is registered.
            assert_eq!(closed(), RECYCLED_SLOTS);
            assert!(Recycled::take(2, OpsOf::<u64>::OPS.layout).is_none());
            let value = FreshValue::recycled(5u64, 2).into_value();
            let data = value.data;
            value.recycle(2);
            // The first allocation kept registers it and opens every slot.
            assert_eq!((closed(), cached(2)), (0, Some(data)));
            assert_eq!(
                RECYCLED.with(|r| r.slots.iter().filter(|s| s.get().is_none()).count()),
                RECYCLED_SLOTS - 1
            );
            // The release frees what is kept and closes every slot; a closed slot is never
            // taken (Miri: the thread's own release later frees nothing twice).
            drop(ReleaseRecycled);
            assert_eq!((closed(), cached(2)), (RECYCLED_SLOTS, None));
            let fresh = FreshValue::recycled(6u64, 2).into_value();
            assert_eq!(fresh.downcast_ref::<u64>(), Some(&6));
            drop(fresh);
        });
    }

    #[test]
    fn a_store_with_a_weak_reference_is_released_not_recycled() {
        on_new_thread(|| {
            let drops = Arc::new(AtomicUsize::new(0));
            let value = FreshValue::recycled(Counted(drops.clone()), 4).into_value();
            // SAFETY: the store is a `Counted`.
            let weak = Arc::downgrade(&unsafe { value.to_arc::<Counted>() });
            value.recycle(4);
            assert_eq!(drops.load(Ordering::SeqCst), 1);
            assert!(weak.upgrade().is_none());
            assert_eq!(cached(4), None);
        });
    }

    #[test]
    fn a_store_released_on_another_thread_meanwhile_is_dropped_once() {
        on_new_thread(|| {
            let drops = Arc::new(AtomicUsize::new(0));
            let value = FreshValue::recycled(Counted(drops.clone()), 5).into_value();
            // SAFETY: the store is a `Counted`.
            let other = unsafe { value.to_arc::<Counted>() };
            std::thread::scope(|scope| {
                scope.spawn(move || drop(other));
                value.recycle(5);
            });
            assert_eq!(drops.load(Ordering::SeqCst), 1);
        });
    }

    #[test]
    fn a_store_whose_destructor_panics_while_recycled_frees_its_allocation() {
        struct Panics;
        impl Drop for Panics {
            fn drop(&mut self) {
                panic!("store destructor");
            }
        }
        on_new_thread(|| {
            let value = FreshValue::recycled(Panics, 6).into_value();
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| value.recycle(6)));
            assert!(result.is_err());
            assert_eq!(cached(6), None);
        });
    }

    #[test]
    fn a_heap_frame_whose_store_panics_when_dropped_drops_the_others_and_frees_itself() {
        struct Panics;
        impl Drop for Panics {
            fn drop(&mut self) {
                panic!("store destructor");
            }
        }
        let drops = Arc::new(AtomicUsize::new(0));
        let frame = SharedFrame::EMPTY
            .with(1, Some(Some(Value::new(Arc::new(Panics)))))
            .with(2, counted(&drops))
            .with(3, counted(&drops));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(frame)));
        assert!(result.is_err());
        // Both other stores dropped; Miri reports the frame's allocation if it leaked.
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    /// A scope's store that nothing shared is recycled without the locked check (debug builds
    /// still make it, and fail if the store was shared); one that was shared on this thread (an
    /// `Arc` handed out, a promoted frame kept) is left to its other holders.
    #[test]
    fn a_scope_recycles_its_store_only_when_this_thread_never_shared_it() {
        on_new_thread(|| {
            let cell = CurrentFrame::new();
            let drops = Arc::new(AtomicUsize::new(0));
            // As `run` makes its stores: in the allocation cached at the storage's slot.
            let store = || Some(FreshValue::recycled(Counted(drops.clone()), 2));
            // Unshared: read by reference only, then recycled.
            stacked(&cell, 2, store(), || {
                assert!(present(&cell, 2));
            });
            assert_eq!(drops.load(Ordering::SeqCst), 1);
            let recycled = cached(2).expect("recycled");

            // Shared through an `Arc`, as `get_store` hands out: the allocation stays with it.
            let kept = stacked(&cell, 2, store(), || {
                cell.clone_store(&NoDefault(PositionHint::new()), Key::<Counted>::from_raw(2))
                    .unwrap()
            });
            assert_eq!(drops.load(Ordering::SeqCst), 1, "still held by the `Arc`");
            assert_eq!(cached(2), None, "the kept store's allocation is not reused");
            assert_eq!(NonNull::from(&*kept).cast::<()>(), recycled);
            drop(kept);
            assert_eq!(drops.load(Ordering::SeqCst), 2);

            // Shared through a promoted frame kept past the scope.
            let captured = stacked(&cell, 2, store(), || cell.get());
            assert_eq!(
                drops.load(Ordering::SeqCst),
                2,
                "still held by the captured frame"
            );
            assert!(captured.lookup(2).is_some());
            drop(captured);
            assert_eq!(drops.load(Ordering::SeqCst), 3);

            // A share of another store also counts: the check is made, and the store recycled.
            let other = FreshValue::new(5u64).into_value();
            stacked(&cell, 2, store(), || drop(other.clone()));
            assert_eq!(drops.load(Ordering::SeqCst), 4);
            assert!(cached(2).is_some());
            assert!(cell.take().ptr_eq(&SharedFrame::EMPTY));
        });
    }
}
