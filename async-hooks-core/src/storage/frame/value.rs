//! Stores as frames hold them: storage keys, the type-erased `Arc` of a store, and the
//! thread's cache of store allocations. Relies on invariants 4 and 5 at the top of the `frame`
//! module.

use std::any::TypeId;
use std::cell::Cell;
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// Storage keys are handed out once and never reused: an entry's key names the one storage,
/// and so the one store type, it was made for.
pub(super) static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// A storage's key cell: 0 until first used, and again after [`StorageKey::retire`]. Only this
/// cell ever holds the keys it mints, so every [`Key<T>`] read from it names entries of `T`s.
pub(crate) struct StorageKey<T> {
    pub(super) key: AtomicU64,
    pub(super) _store: PhantomData<fn() -> T>,
}

/// A key read from a [`StorageKey<T>`]: the entries a frame holds under it are `T`s (0, "no
/// entry anywhere", matches none).
pub(crate) struct Key<T> {
    pub(super) raw: u64,
    pub(super) _store: PhantomData<fn() -> T>,
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
    pub(super) fn from_raw(raw: u64) -> Key<T> {
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
    pub(super) fn mint(&self) -> Key<T> {
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
pub(super) struct Value {
    /// From `Arc::<T>::into_raw`; this `Value` owns one strong reference.
    pub(super) data: NonNull<()>,
    pub(super) ops: &'static ValueOps,
}

/// What a [`Value`] needs to know of its `T`.
pub(super) struct ValueOps {
    pub(super) retain: unsafe fn(NonNull<()>),
    pub(super) release: unsafe fn(NonNull<()>),
    /// Releases a reference; if it was the last, drops the value in place and keeps the
    /// allocation in this thread's [`Recycled`] cache (at the given slot) for the next `run`.
    /// (A caller that knows the type and that the reference is the last calls
    /// [`OpsOf::recycle`] directly: see [`Value::recycle_unshared`].)
    pub(super) recycle: unsafe fn(NonNull<()>, usize),
    /// Frees a cached allocation, whose value was already dropped.
    pub(super) free_empty: unsafe fn(NonNull<()>),
    pub(super) type_id: fn() -> TypeId,
    /// `T`'s size and alignment as one word ([`layout_key`]): a cached allocation is reused for
    /// a store of the same layout (what `Arc::from_raw` requires).
    pub(super) layout: usize,
}

/// A type's size and alignment as one word, so that the reuse check is one compare: distinct
/// for distinct layouts, never 0. 0 (a type too large to encode) is never reused.
pub(super) const fn layout_key(size: usize, align: usize) -> usize {
    if size > usize::MAX >> 7 {
        return 0;
    }
    // The alignment is a power of two, below 2^64: its exponent takes 6 bits.
    ((size << 6) | align.trailing_zeros() as usize) + 1
}

pub(super) struct OpsOf<T>(pub(super) PhantomData<T>);

impl<T: Send + Sync + 'static> OpsOf<T> {
    pub(super) const OPS: &'static ValueOps = &ValueOps {
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
    pub(super) unsafe fn recycle_checked(data: NonNull<()>, slot: usize) {
        // SAFETY: per the caller.
        unsafe { OpsOf::<T>::recycle(data, slot, false) }
    }

    /// # Safety
    ///
    /// As for `release`; with `unshared`, also that no other strong or weak reference to the
    /// store exists.
    #[inline]
    pub(super) unsafe fn recycle(data: NonNull<()>, slot: usize, unshared: bool) {
        // SAFETY: per the caller, the reference is ours to release.
        let mut store = unsafe { Arc::from_raw(data.cast::<T>().as_ptr().cast_const()) };
        if unshared {
            // The caller's proof replaces the locked check; debug builds (every test, Miri
            // included) check it anyway.
            debug_assert!(
                Arc::get_mut(&mut store).is_some(),
                "a store said to be unshared has other references"
            );
        } else if Arc::strong_count(&store) != 1 || Arc::get_mut(&mut store).is_none() {
            // Shared, or a `Weak` exists: released as usual. The plain load first spares the
            // locked check when a capture still holds the store (a spawned resource, a kept
            // `get_store`); a count that drops to 1 meanwhile only costs the recycling.
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
    pub(super) unsafe fn free_empty(data: NonNull<()>) {
        // SAFETY: per the caller; `MaybeUninit` drops no value.
        drop(unsafe { Arc::from_raw(data.cast::<MaybeUninit<T>>().as_ptr().cast_const()) });
    }

    /// # Safety
    ///
    /// `data` must come from `Arc::<T>::into_raw` and still hold a strong reference.
    pub(super) unsafe fn retain(data: NonNull<()>) {
        // SAFETY: per the caller.
        unsafe { Arc::increment_strong_count(data.cast::<T>().as_ptr()) }
    }

    /// # Safety
    ///
    /// As for `retain`; the reference released is the caller's.
    pub(super) unsafe fn release(data: NonNull<()>) {
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
    pub(super) fn new<T: Send + Sync + 'static>(store: Arc<T>) -> Value {
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
    pub(super) fn recycle(self, slot: usize) {
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
    pub(super) unsafe fn recycle_unshared<T: Send + Sync + 'static>(self, slot: usize) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the reference `this` owns, released once, here; a `T`'s, and the last one,
        // per the caller.
        unsafe { OpsOf::<T>::recycle(this.data, slot, true) }
    }

    /// Whether the store is a `T`.
    pub(super) fn is<T: 'static>(&self) -> bool {
        (self.ops.type_id)() == TypeId::of::<T>()
    }

    /// The store, by reference.
    ///
    /// # Safety
    ///
    /// The store must be a `T` (see [`Value::is`]).
    #[inline]
    pub(super) unsafe fn get<T>(&self) -> &T {
        // SAFETY: per the caller it points to a live `T`, kept alive by `self`'s reference.
        unsafe { self.data.cast::<T>().as_ref() }
    }

    /// A new `Arc` to the store.
    ///
    /// # Safety
    ///
    /// The store must be a `T` (see [`Value::is`]).
    #[inline]
    pub(super) unsafe fn to_arc<T>(&self) -> Arc<T> {
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
    pub(super) fn downcast_ref<T: 'static>(&self) -> Option<&T> {
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
pub(super) struct StoreRef<'a, T> {
    pub(super) value: &'a Option<Value>,
    pub(super) _store: PhantomData<fn() -> T>,
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
    pub(super) fn new(entry: &'a Entry, key: Key<T>) -> StoreRef<'a, T> {
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
    pub(super) fn get(self) -> Option<&'a T> {
        // SAFETY: the entry was found under a `Key<T>`, and only `T`s are ever entered under
        // one (see `StorageKey`).
        self.value.as_ref().map(|value| unsafe { value.get::<T>() })
    }

    /// A new `Arc` to the store.
    #[inline(always)]
    pub(super) fn to_arc(self) -> Option<Arc<T>> {
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
    pub(super) key: u64,
    /// Outer `None`: the frame had no entry for the key.
    pub(super) value: Option<Option<Value>>,
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
pub(crate) struct FreshValue<T>(pub(super) Value, pub(super) PhantomData<fn() -> T>);

impl<T: Send + Sync + 'static> FreshValue<T> {
    /// A new store in a new `Arc`.
    pub(super) fn new(store: T) -> FreshValue<T> {
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
    pub(super) fn into_value(self) -> Value {
        self.0
    }
}

/// A store that outlives the scopes that borrow it (a [`Scope`] future's, across its polls),
/// made in and released to the thread's [`Recycled`] cache at `slot`, as a `run`'s store is:
/// a `scope` made where an earlier one ended reuses its allocation.
///
/// [`Scope`]: crate::storage::Scope
pub(crate) struct KeptValue<T> {
    pub(super) value: ManuallyDrop<Value>,
    pub(super) slot: usize,
    pub(super) _store: PhantomData<fn() -> T>,
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
    pub(super) fn value(&self) -> &Value {
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
    pub(super) unsafe fn retain_copy(&self) {
        // SAFETY: `data` holds a strong reference of the type `ops` was made for.
        unsafe { (self.ops.retain)(self.data) };
    }
}

impl Clone for Value {
    #[inline]
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
    #[inline]
    fn drop(&mut self) {
        // SAFETY: as in `clone`; this value's reference is released once, here.
        unsafe { (self.ops.release)(self.data) }
    }
}

/// The number of slots in a thread's [`Recycled`] cache.
pub(super) const RECYCLED_SLOTS: usize = 8;

/// Store allocations that `run` scopes left on this thread when they ended with the only
/// reference to their store: the value is dropped in place when the scope ends, as before, and
/// the next `run` writes its store into the allocation instead of allocating. It saves a
/// `malloc`, a `free` and two atomic decrements per `run` (one `compare_exchange` is paid
/// instead, to prove the reference is the last). One allocation per slot is kept, slots are
/// picked by storage key, and they are freed when the thread exits.
///
/// No `Drop`, so that the thread-local is reached with one plain access; [`ReleaseRecycled`]
/// frees the slots at thread exit, and is armed by the first allocation kept.
pub(super) struct Recycled {
    /// `None` is a free slot. Every slot holds [`CLOSED`] until the thread-exit release is
    /// registered, and again once it has run: keeping an allocation is then one test of the
    /// slot, with arming on the cold path.
    pub(super) slots: [Cell<Option<CachedAllocation>>; RECYCLED_SLOTS],
    /// How many references this thread has added to stores ([`Value`] clones and
    /// [`Value::to_arc`]), wrapping. A `run`'s store is reachable only through its stack frame,
    /// which only this thread's cell points at, until something on this thread adds a reference
    /// to it (a `get_store`, a capture promoting the frame, a frame built from it): when the
    /// count is the same at the end of the `run` as before its store went in, the `run` holds the
    /// only reference, with no `Weak` (made only from an `Arc` that `get_store` returned), and
    /// needs no locked check to reuse the allocation.
    pub(super) shares: Cell<u64>,
}

/// A cached allocation: the only reference to an `Arc` allocation whose value was dropped.
#[derive(Clone, Copy)]
pub(super) struct CachedAllocation {
    pub(super) data: NonNull<()>,
    pub(super) ops: &'static ValueOps,
}

impl CachedAllocation {
    pub(super) fn is_closed(self) -> bool {
        ptr::eq(self.ops, &CLOSED_OPS)
    }
}

/// The table of [`CLOSED`]: its layout (0) matches no store's, so it is never taken, and its
/// functions are never called.
pub(super) static CLOSED_OPS: ValueOps = ValueOps {
    layout: 0,
    ..*OpsOf::<()>::OPS
};

/// A slot that keeps nothing: the thread-exit release is not registered yet, or has run.
pub(super) const CLOSED: CachedAllocation = CachedAllocation {
    data: NonNull::dangling(),
    ops: &CLOSED_OPS,
};

thread_local! {
    pub(super) static RECYCLED: Recycled = const {
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
    pub(super) fn count_share() {
        RECYCLED.with(|recycled| recycled.shares.set(recycled.shares.get().wrapping_add(1)));
    }

    /// The count of references this thread has added to stores: unchanged over a span of code,
    /// nothing on this thread added one, so a store only this thread could reach has none.
    #[inline(always)]
    pub(super) fn shares() -> u64 {
        RECYCLED.with(|recycled| recycled.shares.get())
    }

    /// Takes the allocation at `slot` if its layout is `layout` (a [`layout_key`]).
    #[inline]
    pub(super) fn take(slot: usize, layout: usize) -> Option<NonNull<()>> {
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
    pub(super) fn put(slot: usize, data: NonNull<()>, ops: &'static ValueOps) -> bool {
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
    pub(super) fn put_closed(
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
pub(super) struct ReleaseRecycled;

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
