//! `AsyncLocalStorage`, `Snapshot` and the storage frames they live in.
//!
//! The storage context of an execution is one immutable *frame*: a small sorted map from storage
//! key to value, shared by `Arc`. Capturing it (when a resource is created, or by
//! [`Snapshot::capture`]) is one refcount increment, or nothing when it is empty. `run`,
//! `exit` and `enter_with` build a new frame (copy-on-write) and switch the thread to it; `run`
//! and `exit` build theirs on their own stack when it has at most four entries, and copy it to
//! the heap only if something inside keeps it (a resource, a future, a snapshot).

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use crate::context::{ThreadState, with_state};
use crate::id::AsyncId;

#[allow(unsafe_code)]
mod frame;

use frame::StoreSource;
pub(crate) use frame::{AroundFrame, CapturedFrame, CurrentFrame, SharedFrame, Switching};
use frame::{FrameView, FreshValue, KeptValue, Key, PositionHint, SavedEntry, StorageKey};

/// One storage's entry set on the current thread, and what to put back when it ends: the previous
/// entry of that storage only. Shared by `run`, `exit`, `enter_scope` and `scope`.
struct KeyEntry {
    key: u64,
    /// The storage's entry before.
    previous: SavedEntry,
    /// The whole frame before and the frame installed: when the frame is still the installed
    /// one at the end, the frame before goes back as is. `None` once an older guard of the same
    /// storage handed its `previous` over (see [`LiveGuards`]): the frame before then holds
    /// the older guard's store, which must not come back.
    frames: Option<(SharedFrame, SharedFrame)>,
}

impl KeyEntry {
    fn set<T: Send + Sync + 'static>(state: &ThreadState, key: Key<T>, store: T) -> KeyEntry {
        let previous_frame = state.frame.take();
        let installed = previous_frame.with_store(key, store);
        let previous = previous_frame.save(key.raw());
        state.frame.set(installed.clone());
        KeyEntry {
            key: key.raw(),
            previous,
            frames: Some((previous_frame, installed)),
        }
    }

    /// Puts back the storage's previous entry, in place (a guard's drop: moving the entry out of
    /// the guard cost a store-forwarding stall, its fields read back in 16-byte loads).
    /// `current_key` is the storage's key now (see [`restore_entry`]). What is left in the entry
    /// is released with it, after the frame is put back.
    fn restore_in_place(&mut self, state: &ThreadState, current_key: u64) {
        let current = state.frame.take();
        let restored = match &mut self.frames {
            Some((previous_frame, installed)) if current.ptr_eq(installed) => {
                std::mem::take(previous_frame)
            }
            _ => restore_entry(&current, self.previous.take(), current_key),
        };
        state.set_frame(restored);
        drop(current);
    }
}

/// The frame to put back when a scope that set a storage's entry ends and the code inside
/// changed the context meanwhile: `current` with only that entry put back to `previous`, so
/// other storages' `enter_with`s inside survive. If the storage's key is no longer the one
/// saved (`current_key`), it was disabled inside, which exits every context of it: the retired
/// key's entry is dropped instead of restored, and an `enter_with` made under the new key
/// inside the scope ends here, as it would have without the `disable()`.
fn restore_entry(current: &SharedFrame, previous: SavedEntry, current_key: u64) -> SharedFrame {
    let key = previous.key();
    if current_key == key {
        return current.restore(previous);
    }
    let without_old = current.without(key);
    if current_key == 0 {
        without_old
    } else {
        without_old.without(current_key)
    }
}

/// Runs `f` with `key`'s entry set to `value` (`None`: exited), then restores only that entry,
/// also on panic: `run` and `exit`. The frame is built on this stack when it is small (no
/// allocation), else with its entries in one heap block (see [`CurrentFrame::run_with_entry`]).
/// `storage_key` is the storage's key cell, read at restore time (see [`restore_entry`]).
#[inline]
fn scoped<T: Send + Sync + 'static, R>(
    state: &ThreadState,
    storage_key: &StorageKey<T>,
    key: Key<T>,
    value: Option<FreshValue<T>>,
    f: impl FnOnce() -> R,
) -> R {
    let restore = restore_own_entry(storage_key, state.guard_clock.now());
    state.frame.run_with_entry(key, value, f, restore)
}

/// The frame a scope of `key`'s storage puts back when the code inside changed the context:
/// the changed frame with only this storage's entry restored (see [`restore_entry`]). `since`
/// is the guard clock (`ThreadState::guard_clock`) when the scope began.
#[inline(always)]
fn restore_own_entry<T>(
    storage_key: &StorageKey<T>,
    since: u64,
) -> impl FnOnce(&SharedFrame, FrameView<'_>, u64) -> SharedFrame + '_ {
    // Two words, passed in registers: the key comes from the scope, and the state is looked up
    // again rather than captured.
    move |current: &SharedFrame, previous: FrameView<'_>, key: u64| {
        // A guard of this storage made inside and still alive ends here with the entry it set.
        with_state(|state| {
            LiveGuards::orphan(Some(ptr::from_ref(storage_key).addr()), state, since)
        });
        let previous = previous.save(key);
        restore_entry(current, previous, storage_key.read().raw())
    }
}

/// Drops this thread's leftover frame when the thread ends. The thread's frame cell has no
/// `Drop` (the hot paths need a thread state without one), so the operations that can leave a
/// frame in it past every scope register this: `enter_with` at the top level, and `enter_scope`
/// (its guard may be forgotten; the cell's reference is then still released, the guard's own
/// references leak with it, as any forgotten value's do). A no-op after the first call on a
/// thread.
fn release_at_thread_exit() {
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            with_state(|state| drop(state.frame.take()));
        }
    }
    thread_local! {
        static RELEASE: Release = const { Release };
    }
    // Fails only while the thread's locals are being destroyed, when it is too late to register.
    let _ = RELEASE.try_with(|_| ());
}

/// Context-local storage: a value that follows the logical flow of async work — through
/// instrumented futures, bound closures and `AsyncResource`s — like a thread-local follows a
/// thread. Node's `AsyncLocalStorage`.
///
/// Instances are independent. `new` is a `const fn`, so the usual form is a `static`.
///
/// ```
/// use async_hooks::AsyncLocalStorage;
///
/// static REQUEST_ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
///
/// fn log(msg: &str) -> String {
///     match REQUEST_ID.get_store() {
///         Some(id) => format!("{id}: {msg}"),
///         None => format!("-: {msg}"),
///     }
/// }
///
/// assert_eq!(REQUEST_ID.run(7, || log("start")), "7: start");
/// assert_eq!(log("idle"), "-: idle");
/// ```
pub struct AsyncLocalStorage<T> {
    /// This storage's key in frames; none until first used, and again after `disable()`.
    key: StorageKey<T>,
    /// Where this storage's entry was last found in a frame.
    position_hint: PositionHint,
    name: Option<&'static str>,
    /// The default store, if any (set once, by `with_default`).
    default_value: OnceLock<Arc<T>>,
}

// The key needs no bound on `T`: a `Scope` future's drop, which cannot add bounds, uses it.
impl<T> AsyncLocalStorage<T> {
    /// The key for reads: 0 means "no entry anywhere".
    #[inline]
    fn read_key(&self) -> Key<T> {
        self.key.read()
    }

    /// The key for writes, assigned on first use.
    #[inline]
    fn write_key(&self) -> Key<T> {
        self.key.write()
    }
}

impl<T: Send + Sync + 'static> AsyncLocalStorage<T> {
    /// A new storage with no default and no name.
    ///
    /// ```
    /// # use async_hooks::AsyncLocalStorage;
    /// static STORE: AsyncLocalStorage<String> = AsyncLocalStorage::new();
    /// assert!(STORE.get_store().is_none());
    /// ```
    pub const fn new() -> AsyncLocalStorage<T> {
        AsyncLocalStorage {
            key: StorageKey::new(),
            position_hint: PositionHint::new(),
            name: None,
            default_value: OnceLock::new(),
        }
    }

    /// Names the storage (for debugging; Node's `name` option).
    ///
    /// ```
    /// # use async_hooks::AsyncLocalStorage;
    /// static STORE: AsyncLocalStorage<u8> = AsyncLocalStorage::new().with_name("request-id");
    /// assert_eq!(STORE.name(), Some("request-id"));
    /// ```
    pub const fn with_name(mut self, name: &'static str) -> AsyncLocalStorage<T> {
        self.name = Some(name);
        self
    }

    /// Sets the value `get_store()` returns where no `run`/`enter_with` of this storage applies
    /// (Node's `defaultValue`). Inside `exit` the store is `None`, not the default.
    ///
    /// ```
    /// # use async_hooks::AsyncLocalStorage;
    /// let store = AsyncLocalStorage::new().with_default(0u32);
    /// assert_eq!(store.get_store().as_deref(), Some(&0));
    /// assert_eq!(store.exit(|| store.get_store()), None);
    /// ```
    pub fn with_default(self, value: T) -> AsyncLocalStorage<T> {
        AsyncLocalStorage {
            default_value: OnceLock::from(Arc::new(value)),
            ..self
        }
    }

    /// The name given with [`with_name`](AsyncLocalStorage::with_name).
    ///
    /// ```
    /// # use async_hooks::AsyncLocalStorage;
    /// assert_eq!(AsyncLocalStorage::<u8>::new().name(), None);
    /// ```
    pub fn name(&self) -> Option<&'static str> {
        self.name
    }

    fn default_value(&self) -> Option<&Arc<T>> {
        self.default_value.get()
    }

    /// The current store: the value of the innermost `run`/`enter_with` of this storage in the
    /// current execution, `None` inside `exit`, else the default.
    ///
    /// ```
    /// # use async_hooks::AsyncLocalStorage;
    /// let store = AsyncLocalStorage::new();
    /// store.run(1, || {
    ///     assert_eq!(*store.get_store().unwrap(), 1);
    ///     store.run(2, || assert_eq!(*store.get_store().unwrap(), 2));
    ///     assert_eq!(*store.get_store().unwrap(), 1);
    /// });
    /// ```
    #[inline]
    pub fn get_store(&self) -> Option<Arc<T>> {
        let key = self.read_key();
        // A storage never used (or disabled) has no entry anywhere: the default, without the
        // search a miss would take.
        if key.raw() == 0 {
            return self.default_value().cloned();
        }
        with_state(|state| state.frame.clone_store(self, key))
    }

    /// Calls `f` with a reference to the current store (see
    /// [`get_store`](AsyncLocalStorage::get_store)).
    ///
    /// `f` may change the context (`run`, `enter_with`, poll a future): the store it was given
    /// stays alive until it returns. Cost: no allocation and no lock. Unless `f` changes the
    /// context, there is also no atomic read-modify-write, where `get_store` adds the `Arc`'s
    /// increment and the caller's decrement. Inside a `run`, a resource's scope or a poll, it
    /// reads the frame through a remembered position and a key check. After an `enter_with`,
    /// or outside every scope, it also lends the thread's frame to `f` and takes it back
    /// afterwards.
    ///
    /// ```
    /// # use async_hooks::AsyncLocalStorage;
    /// let store = AsyncLocalStorage::new();
    /// let len = store.run(String::from("abc"), || store.with_store(|s| s.map_or(0, String::len)));
    /// assert_eq!(len, 3);
    /// ```
    #[inline]
    pub fn with_store<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        // No early return for key 0 (never used, or disabled): no frame has an entry with that
        // key, so the lookup below misses and reads the default. A branch less on the hit path.
        let key = self.read_key();
        // The thread's frame is lent to this call, not cloned: `f` may change the context
        // (`run`, `enter_with`, poll a future) and the store it looks at stays alive anyway.
        with_state(|state| state.frame.with_store(self, key, f))
    }

    /// Runs `f` with `store` as the current store, then restores this storage's previous store —
    /// also when `f` panics. Everything created inside (resources, futures, bound closures)
    /// captures `store`. Only this storage is restored: an `enter_with` of another storage
    /// inside `f` survives it.
    ///
    /// Cost: the store goes into an `Arc` (which `get_store` hands out), usually without
    /// allocating: when a `run` ends holding the only reference to its store, the store is
    /// dropped there as always, but its allocation stays with the thread for the next `run` of
    /// the storage there (at most eight kept per thread, freed when the thread exits). Proving
    /// that reference is the only one takes no atomic operation when nothing on this thread
    /// shared any store during the `run` (no `get_store`, no capture), and one otherwise. The
    /// new context is built on this call's stack while it holds at most four storages (with
    /// more, its entries go to one heap allocation, copied without touching any reference
    /// count), and copied to a shared heap frame once only if something created inside keeps
    /// it; what keeps a context of this one store keeps the store itself, with no copy.
    ///
    /// ```
    /// # use async_hooks::AsyncLocalStorage;
    /// let a = AsyncLocalStorage::new();
    /// let b = AsyncLocalStorage::new();
    /// a.run(1, || b.enter_with("kept"));
    /// assert_eq!(a.get_store(), None);
    /// assert_eq!(b.get_store().as_deref(), Some(&"kept"));
    /// ```
    #[inline]
    pub fn run<R>(&self, store: T, f: impl FnOnce() -> R) -> R {
        let key = self.write_key();
        // Kept by the thread when the scope ends holding its only reference: the next `run` of
        // the storage on this thread reuses the allocation.
        let value = FreshValue::recycled(store, key.raw() as usize);
        with_state(|state| scoped(state, &self.key, key, Some(value), f))
    }

    /// Runs `f` outside this storage's context: inside, `get_store()` is `None` (not the
    /// default), also in everything created inside.
    ///
    /// ```
    /// # use async_hooks::AsyncLocalStorage;
    /// let store = AsyncLocalStorage::new();
    /// store.run(1, || {
    ///     assert_eq!(store.exit(|| store.get_store()), None);
    ///     assert_eq!(store.get_store().as_deref(), Some(&1));
    /// });
    /// ```
    pub fn exit<R>(&self, f: impl FnOnce() -> R) -> R {
        let key = self.write_key();
        with_state(|state| scoped::<T, R>(state, &self.key, key, None, f))
    }

    /// Makes `store` the current store for the rest of the current execution: until the
    /// innermost enclosing scope (a poll of an instrumented future, a `run_in_async_scope`, a
    /// bound call) ends, or a `run`/`exit`/guard of this storage restores its previous store.
    /// Unlike Node's, it can never leak out of that scope into the caller or a sibling task.
    ///
    /// ```
    /// # use async_hooks::{AsyncLocalStorage, AsyncResource};
    /// let store = AsyncLocalStorage::new();
    /// let job = AsyncResource::new("Job");
    /// job.run_in_async_scope(|| {
    ///     store.enter_with(5);
    ///     assert_eq!(store.get_store().as_deref(), Some(&5));
    /// });
    /// assert_eq!(store.get_store(), None);
    /// ```
    pub fn enter_with(&self, store: T) {
        let key = self.write_key();
        release_at_thread_exit();
        with_state(|state| {
            let frame = state.frame.take();
            let next = frame.with_store(key, store);
            state.frame.set(next);
            drop(frame);
        })
    }

    /// Like [`run`](AsyncLocalStorage::run) without a closure: `store` is current until the
    /// returned guard is dropped, which restores this storage's previous store (Node's
    /// `withScope`). The guard is `!Send`: drop it on the thread that created it. Guards nest
    /// like `run`s, also when dropped out of order (see [`StorageGuard`]).
    ///
    /// ```
    /// # use async_hooks::AsyncLocalStorage;
    /// let store = AsyncLocalStorage::new();
    /// {
    ///     let _guard = store.enter_scope(3);
    ///     assert_eq!(store.get_store().as_deref(), Some(&3));
    /// }
    /// assert_eq!(store.get_store(), None);
    /// ```
    pub fn enter_scope(&self, store: T) -> StorageGuard<'_, T> {
        let key = self.write_key();
        release_at_thread_exit();
        let execution = with_state(|state| state.execution_async_id());
        let entry = with_state(|state| KeyEntry::set(state, key, store));
        let storage = ptr::from_ref(&self.key).addr();
        StorageGuard {
            entry: Some(entry),
            at: LiveGuards::register(
                storage,
                key.raw(),
                execution,
                with_state(|state| state.guard_clock.tick()),
            ),
            execution,
            storage: self,
            _not_send: PhantomData,
        }
    }

    /// Exits every context of this storage: `get_store()` returns the default (or `None`)
    /// everywhere — also in resources captured before — until the next `run`/`enter_with`.
    /// The stores become unreachable; each is freed when the last frame holding it goes (the
    /// current thread's frame lets go at once).
    ///
    /// ```
    /// # use async_hooks::{AsyncLocalStorage, AsyncResource};
    /// let store = AsyncLocalStorage::new();
    /// let job = store.run(1, || AsyncResource::new("Job"));
    /// store.enter_with(2);
    /// store.disable();
    /// assert_eq!(store.get_store(), None);
    /// assert_eq!(job.run_in_async_scope(|| store.get_store()), None);
    /// store.run(3, || assert_eq!(store.get_store().as_deref(), Some(&3)));
    /// ```
    pub fn disable(&self) {
        let old = self.key.retire();
        if old != 0 {
            with_state(|state| {
                let frame = state.frame.take();
                let next = frame.without(old);
                state.frame.set(next);
                drop(frame);
            });
        }
    }

    /// The async `run`: a future that makes `store` current during every poll of `future`, and
    /// while `future` is dropped (as tokio's `scope` does: destructors of values held across an
    /// `.await` see the store).
    ///
    /// Cost: each poll is a `run` of the store, its frame built on the poll's stack (no
    /// allocation, no reference count); the store goes into an `Arc`, whose allocation is
    /// reused as `run`'s is: the thread that drops the future keeps it for its next `scope` or
    /// `run` of the storage.
    ///
    /// ```
    /// # use async_hooks::AsyncLocalStorage;
    /// static STORE: AsyncLocalStorage<u32> = AsyncLocalStorage::new();
    /// let seen = futures::executor::block_on(STORE.scope(9, async { *STORE.get_store().unwrap() }));
    /// assert_eq!(seen, 9);
    /// ```
    pub fn scope<F: Future>(&self, store: T, future: F) -> Scope<'_, T, F> {
        Scope {
            storage: self,
            value: KeptValue::new(store, self.write_key().raw() as usize),
            future: Some(future),
        }
    }

    /// A snapshot of the whole storage context, Node's `AsyncLocalStorage.snapshot()`.
    ///
    /// ```
    /// # use async_hooks::AsyncLocalStorage;
    /// let store = AsyncLocalStorage::new();
    /// let snapshot = store.run(1, AsyncLocalStorage::<i32>::snapshot);
    /// assert_eq!(snapshot.run(|| store.get_store()).as_deref(), Some(&1));
    /// ```
    pub fn snapshot() -> Snapshot {
        Snapshot::capture()
    }
}

impl<T> StoreSource<T> for AsyncLocalStorage<T> {
    #[inline(always)]
    fn hint(&self) -> &PositionHint {
        &self.position_hint
    }

    #[inline(always)]
    fn default_store(&self) -> Option<&Arc<T>> {
        self.default_value.get()
    }
}

impl<T: Send + Sync + 'static> Default for AsyncLocalStorage<T> {
    fn default() -> Self {
        AsyncLocalStorage::new()
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for AsyncLocalStorage<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncLocalStorage")
            .field("name", &self.name)
            .field("key", &self.read_key().raw())
            .finish()
    }
}

/// The guard of [`AsyncLocalStorage::enter_scope`]: restores the storage's previous store when
/// dropped.
///
/// ```
/// # use async_hooks::AsyncLocalStorage;
/// static USER: AsyncLocalStorage<&str> = AsyncLocalStorage::new();
///
/// let guard = USER.enter_scope("ada");
/// assert_eq!(USER.get_store().as_deref(), Some(&"ada"));
/// drop(guard);
/// assert_eq!(USER.get_store(), None);
/// ```
///
/// Guards nest like `run`s. Two guards of one storage dropped out of order still end as
/// nested scopes would: dropping the older one first changes nothing (the younger one's store
/// stays current), and dropping the younger one then puts back the store from before both.
///
/// ```
/// # use async_hooks::AsyncLocalStorage;
/// static USER: AsyncLocalStorage<&str> = AsyncLocalStorage::new();
///
/// let outer = USER.enter_scope("ada");
/// let inner = USER.enter_scope("bob");
/// drop(outer);
/// assert_eq!(USER.get_store().as_deref(), Some(&"bob"));
/// drop(inner);
/// assert_eq!(USER.get_store(), None);
/// ```
///
/// A guard kept across `.await`s in an instrumented future stays in that future's execution.
/// A guard that outlives the scope it was made in ends with that scope, and its drop changes
/// nothing afterwards: a `run`, `exit` or [`Scope`] poll of the same storage, a
/// [`Snapshot::run`], or another execution (returned out of a `run_in_async_scope` closure, say).
/// Putting its previous store back then would bring back a store of that ended scope.
///
/// ```
/// # use async_hooks::AsyncLocalStorage;
/// static USER: AsyncLocalStorage<&str> = AsyncLocalStorage::new();
///
/// let guard = USER.run("ada", || USER.enter_scope("bob"));
/// assert_eq!(USER.get_store(), None);
/// drop(guard);
/// assert_eq!(USER.get_store(), None);
/// ```
#[must_use = "the store is current only while the guard lives"]
pub struct StorageGuard<'a, T> {
    /// What the drop puts back; `None` once dropped.
    entry: Option<KeyEntry>,
    /// The guard's place in this thread's [`LiveGuards`] (`UNLISTED`: not listed).
    at: usize,
    /// The execution that made the guard: its scope is that execution's.
    execution: AsyncId,
    storage: &'a AsyncLocalStorage<T>,
    _not_send: PhantomData<*const ()>,
}

impl<T> Drop for StorageGuard<'_, T> {
    fn drop(&mut self) {
        // Used in place: moving the entry out cost a store-forwarding stall.
        let Some(entry) = &mut self.entry else {
            return;
        };
        let mut released = Released::default();
        let restore = self.at == UNLISTED || LiveGuards::end(self.at, entry, &mut released);
        // A guard dropped in another execution than the one that made it (returned out of a
        // resource's scope, say) ended with that execution's scope: putting its previous store
        // back here would bring a store of that scope into this one.
        if restore && with_state(|state| state.execution_async_id()) == self.execution {
            let current_key = self.storage.key.read().raw();
            with_state(|state| entry.restore_in_place(state, current_key));
        }
        // What is left of the entry is released here, `released` last, with the list of guards
        // no longer borrowed (a store's `Drop` may make guards).
        self.entry = None;
        drop(released);
    }
}

/// What ending a guard no longer needs, dropped once the list of guards is no longer borrowed.
#[derive(Default)]
struct Released {
    previous: Vec<SavedEntry>,
    frames: Option<(SharedFrame, SharedFrame)>,
}

/// [`StorageGuard::at`] of a guard made while the thread's locals are being destroyed, when
/// its list is gone: it restores on its own.
const UNLISTED: usize = usize::MAX;

/// This thread's guards, each with its place in the order they were made, so that a guard
/// dropped while a younger guard of the same storage lives (out of order) is told apart from one
/// dropped last. Guards of one storage in one execution nest like `run`s: dropping an older one
/// first ends it inside the younger one's scope, where it changes nothing; what it would have put
/// back is kept in its slot here, and the younger one puts that back instead of its own previous
/// store (which is the older one's, whose guard is gone).
///
/// A scope that restores a storage (`run`, `exit`, a [`Scope`] poll; every storage for
/// [`Snapshot::run`]) ends the guards of that storage made inside it and still alive: their drop
/// changes nothing afterwards ([`LiveGuards::orphan`]).
///
/// A slot is free again as soon as nothing needs it, so the list is as long as the guards alive
/// (plus those handed on) whatever order guards of interleaved futures end in.
struct LiveGuards {
    slots: Vec<ListedGuard>,
    /// Free slots.
    free: Vec<usize>,
    /// How many slots are [`ListedState::Handed`] or [`ListedState::Stale`], and how many of
    /// those are stale: while both are 0 (guards dropped in order), a drop looks at no other
    /// slot.
    handed: usize,
    stale: usize,
}

/// A guard's slot in [`LiveGuards`].
struct ListedGuard {
    /// When the guard was made, a tick of the thread's guard clock: after every scope that
    /// began before it.
    created: u64,
    /// The address of the storage's key cell, which stays put while the guard borrows it.
    storage: usize,
    key: u64,
    execution: AsyncId,
    state: ListedState,
}

enum ListedState {
    Live,
    /// Alive, but the scope it was made in has ended (and restored its storage): its drop
    /// changes nothing.
    Ended,
    /// Dropped out of order: what it would have put back, for the younger guard of its storage
    /// to put back instead.
    Handed(SavedEntry),
    /// Handed on inside a scope that has ended since: released by the next guard's drop.
    Stale(SavedEntry),
    /// A free slot.
    Free,
}

thread_local! {
    static LIVE_GUARDS: RefCell<LiveGuards> = const {
        RefCell::new(LiveGuards { slots: Vec::new(), free: Vec::new(), handed: 0, stale: 0 })
    };
}

impl LiveGuards {
    /// Lists a new guard; returns its slot ([`UNLISTED`] while the thread's locals are being
    /// destroyed).
    #[inline]
    fn register(storage: usize, key: u64, execution: AsyncId, created: u64) -> usize {
        LIVE_GUARDS
            .try_with(|live| {
                let live = &mut *live.borrow_mut();
                let guard = ListedGuard {
                    created,
                    storage,
                    key,
                    execution,
                    state: ListedState::Live,
                };
                match live.free.pop() {
                    Some(at) => {
                        live.slots[at] = guard;
                        at
                    }
                    None => {
                        live.slots.push(guard);
                        live.slots.len() - 1
                    }
                }
            })
            .unwrap_or(UNLISTED)
    }

    /// A scope of `storage` (`None`: of every storage) that began at `since` (the guard clock)
    /// ends in `state`'s execution: the guards made inside it and still alive end with it. Only
    /// marks them (it runs while the scope puts its frame back): what they hold is released when
    /// they are dropped, or by the next guard's drop.
    fn orphan(storage: Option<usize>, state: &ThreadState, since: u64) {
        if state.guard_clock.now() == since {
            // No guard was made since the scope began (making one moves the count).
            return;
        }
        let execution = state.execution_async_id();
        let _ = LIVE_GUARDS.try_with(|live| {
            // Not borrowed here unless a guard's own bookkeeping panicked.
            let Ok(mut live) = live.try_borrow_mut() else {
                return;
            };
            let mut stale = 0;
            for guard in &mut live.slots {
                if guard.execution == execution
                    && guard.created > since
                    && storage.is_none_or(|storage| storage == guard.storage)
                {
                    guard.state = match std::mem::replace(&mut guard.state, ListedState::Free) {
                        ListedState::Live => ListedState::Ended,
                        ListedState::Handed(previous) => {
                            stale += 1;
                            ListedState::Stale(previous)
                        }
                        other => other,
                    };
                }
            }
            live.stale += stale;
        });
    }

    /// Ends the guard at `at`, whose entry is `entry`; returns whether its drop restores the
    /// entry. If an older guard of the same storage in the same execution was dropped out of
    /// order, `entry` puts back what that one would have. What `entry` and the list no longer
    /// need goes to `released`, for the caller to drop once the list is no longer borrowed (a
    /// store's `Drop` may make guards).
    #[inline]
    fn end(at: usize, entry: &mut KeyEntry, released: &mut Released) -> bool {
        LIVE_GUARDS
            .try_with(|live| live.borrow_mut().end_at(at, entry, released))
            // The list is gone (the thread's locals are being destroyed): restore on its own.
            .unwrap_or(true)
    }

    fn end_at(&mut self, at: usize, entry: &mut KeyEntry, released: &mut Released) -> bool {
        if self.stale > 0 {
            for stale in 0..self.slots.len() {
                if let ListedState::Stale(_) = self.slots[stale].state {
                    if let ListedState::Stale(previous) =
                        std::mem::replace(&mut self.slots[stale].state, ListedState::Free)
                    {
                        released.previous.push(previous);
                    }
                    self.free.push(stale);
                }
            }
            self.handed -= self.stale;
            self.stale = 0;
        }
        if let ListedState::Ended = self.slots[at].state {
            // Its scope ended already, and restored what it would have.
            self.free_slot(at);
            return false;
        }
        let this = &self.slots[at];
        let (created, storage, execution) = (this.created, this.storage, this.execution);
        let same = |guard: &ListedGuard| {
            guard.storage == storage
                && guard.execution == execution
                && !matches!(guard.state, ListedState::Free)
        };
        // With this guard alone in the list, no other is younger.
        let younger_lives = self.slots.len() - self.free.len() > 1
            && self.slots.iter().any(|guard| {
                same(guard) && guard.created > created && matches!(guard.state, ListedState::Live)
            });
        if younger_lives {
            // Out of order: hand what this guard would put back to the younger one.
            self.slots[at].state = ListedState::Handed(entry.previous.take());
            self.handed += 1;
            return false;
        }
        self.free_slot(at);
        if self.handed == 0 {
            // No guard was dropped out of order: nothing handed on to take over.
            return true;
        }
        // The innermost guard of its storage here. Older ones dropped meanwhile handed on what
        // they would have put back, nearest first; the oldest of an unbroken run of them wins.
        // Ended ones are passed over: their scope is gone.
        let mut below = created;
        while let Some(older) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, guard)| same(guard) && guard.created < below)
            .max_by_key(|(_, guard)| guard.created)
            .map(|(at, _)| at)
        {
            below = self.slots[older].created;
            let key = self.slots[older].key;
            match std::mem::replace(&mut self.slots[older].state, ListedState::Free) {
                ListedState::Live => {
                    self.slots[older].state = ListedState::Live;
                    break;
                }
                ListedState::Ended => {
                    self.slots[older].state = ListedState::Ended;
                    continue;
                }
                ListedState::Handed(previous) if key == entry.key => {
                    self.handed -= 1;
                    let replaced = std::mem::replace(&mut entry.previous, previous);
                    released.previous.push(replaced);
                    // The frame before this guard holds the older guard's store: not put back.
                    if let Some(frames) = entry.frames.take() {
                        released.frames = Some(frames);
                    }
                }
                // Disabled in between: the older guard's entry went with its key.
                ListedState::Handed(previous) => {
                    self.handed -= 1;
                    released.previous.push(previous);
                }
                ListedState::Stale(_) | ListedState::Free => {
                    unreachable!("stale slots were released above; `same` skips free ones")
                }
            }
            self.free.push(older);
        }
        true
    }

    #[inline]
    fn free_slot(&mut self, at: usize) {
        self.slots[at].state = ListedState::Free;
        self.free.push(at);
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for StorageGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageGuard").finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    /// The future returned by [`AsyncLocalStorage::scope`]: the store is current during every
    /// poll of the inner future, on whatever thread polls it.
    ///
    /// ```
    /// # use async_hooks::AsyncLocalStorage;
    /// static TRACE: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
    ///
    /// let rt = tokio::runtime::Runtime::new().unwrap();
    /// let task = TRACE.scope(42, async {
    ///     tokio::task::yield_now().await;
    ///     *TRACE.get_store().unwrap()
    /// });
    /// let seen = rt.block_on(async { tokio::spawn(task).await.unwrap() });
    /// assert_eq!(seen, 42);
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct Scope<'a, T, F> {
        storage: &'a AsyncLocalStorage<T>,
        // The store, an `Arc<T>`: each poll's frame entry borrows it.
        value: KeptValue<T>,
        // `None` once dropped, inside the scope: in the poll that returns `Ready`, or by the
        // drop below.
        #[pin]
        future: Option<F>,
    }

    impl<T, F> PinnedDrop for Scope<'_, T, F> {
        fn drop(this: Pin<&mut Self>) {
            // The inner future is dropped with the store current, as tokio's `scope` does: its
            // destructors (a guard held across an `.await`, say) see the store they ran with.
            let mut this = this.project();
            if this.future.is_some() {
                in_scope(this.storage, this.value, || this.future.set(None));
            }
        }
    }
}

impl<T: Send + Sync + 'static, F: Future> Future for Scope<'_, T, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut future = this.future;
        in_scope(this.storage, this.value, || {
            let poll = future
                .as_mut()
                .as_pin_mut()
                .expect("`Scope` future polled after it returned `Poll::Ready`")
                .poll(cx);
            if poll.is_ready() {
                // Dropped now, still inside: the scope's drop then has nothing to do.
                future.set(None);
            }
            poll
        })
    }
}

/// Runs `f` in a `Scope`'s context: a `run` of its store with the frame on this stack, no
/// allocation and no reference count, whatever the caller's context (the scope's own reference
/// keeps the store alive meanwhile). Each poll and the inner future's drop run in it.
#[inline(always)]
fn in_scope<T, R>(
    storage: &AsyncLocalStorage<T>,
    store: &KeptValue<T>,
    f: impl FnOnce() -> R,
) -> R {
    let key = storage.write_key();
    with_state(|state| {
        let restore = restore_own_entry(&storage.key, state.guard_clock.now());
        state.frame.run_with_borrowed_entry(key, store, f, restore)
    })
}

impl<T: Send + Sync + 'static, F> fmt::Debug for Scope<'_, T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

/// The whole storage context at one moment: every storage's current store. Capturing is O(1).
///
/// ```
/// use async_hooks::{AsyncLocalStorage, Snapshot};
///
/// static USER: AsyncLocalStorage<&str> = AsyncLocalStorage::new();
///
/// let snapshot = USER.run("ada", Snapshot::capture);
/// USER.run("bob", || {
///     assert_eq!(snapshot.run(|| *USER.get_store().unwrap()), "ada");
///     assert_eq!(*USER.get_store().unwrap(), "bob");
/// });
/// ```
#[derive(Clone, Default)]
pub struct Snapshot {
    /// Kept as a resource keeps its frame: entered in place, with no reference count.
    frame: CapturedFrame,
}

impl Snapshot {
    /// Captures the current storage context.
    ///
    /// ```
    /// # use async_hooks::Snapshot;
    /// let empty = Snapshot::capture();
    /// # let _ = empty;
    /// ```
    pub fn capture() -> Snapshot {
        Snapshot {
            frame: with_state(ThreadState::capture_resource_frame),
        }
    }

    /// Runs `f` in the captured storage context, then restores the caller's (also on panic).
    ///
    /// ```
    /// # use async_hooks::{AsyncLocalStorage, Snapshot};
    /// let store = AsyncLocalStorage::new();
    /// let outside = Snapshot::capture();
    /// store.run(1, || assert_eq!(outside.run(|| store.get_store()), None));
    /// ```
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        with_state(|state| {
            // Entered in place, as a resource's scope enters its frame: no reference count.
            let end = EndGuardsMadeInside {
                since: state.guard_clock.now(),
            };
            state.frame.enter_scope(&self.frame, end, f)
        })
    }

    /// A context with no stores: inside [`run`](Snapshot::run) every storage reads as it does at
    /// the top level of a new thread (`None`, or its [`with_default`](AsyncLocalStorage::with_default)
    /// value), and resources created there inherit nothing. Use it to start work that must not
    /// keep the caller's stores alive or see them (a long-lived worker, a cache refresh): the
    /// suppress-flow of .NET's `ExecutionContext.SuppressFlow`. Hooks still see what is created
    /// inside: only the storage context is empty, not the async ids.
    ///
    /// ```
    /// use async_hooks::{AsyncLocalStorage, BindContext, Snapshot};
    ///
    /// static USER: AsyncLocalStorage<&str> = AsyncLocalStorage::new();
    ///
    /// USER.run("ada", || {
    ///     let detached = Snapshot::empty().run(|| async { USER.get_store() }.bind_context());
    ///     assert_eq!(futures::executor::block_on(detached), None);
    ///     assert_eq!(*USER.get_store().unwrap(), "ada");
    /// });
    /// ```
    pub fn empty() -> Snapshot {
        Snapshot::default()
    }

    /// Captures the current context now and returns `f` as a closure that runs every call in it
    /// (Node's `AsyncLocalStorage.bind(fn)`, and the function `AsyncLocalStorage.snapshot()`
    /// returns). Unlike `bind!`, the closure is not an async resource: it switches the storage
    /// context only, not the async ids, and fires no hook.
    ///
    /// Rust picks a closure's kind from its body, so there is one function per kind: `wrap`
    /// for an [`Fn`] (callable from many threads at once when `f` is `Sync`),
    /// [`wrap_mut`](Snapshot::wrap_mut) for an [`FnMut`] and [`wrap_once`](Snapshot::wrap_once)
    /// for an [`FnOnce`]. Each returns a closure of the same kind, `Send`/`Sync` when `f` is.
    ///
    /// ```
    /// use async_hooks::{AsyncLocalStorage, Snapshot};
    ///
    /// static USER: AsyncLocalStorage<&str> = AsyncLocalStorage::new();
    ///
    /// let greet = USER.run("ada", || Snapshot::wrap(|| format!("hi {}", USER.get_store().unwrap())));
    /// USER.run("bob", || assert_eq!(greet(), "hi ada"));
    /// assert_eq!(greet(), "hi ada");
    /// ```
    pub fn wrap<R>(f: impl Fn() -> R) -> impl Fn() -> R {
        let snapshot = Snapshot::capture();
        move || snapshot.run(&f)
    }

    /// [`wrap`](Snapshot::wrap) for a closure that mutates what it captures.
    ///
    /// ```
    /// use async_hooks::{AsyncLocalStorage, Snapshot};
    ///
    /// static STEP: AsyncLocalStorage<u32> = AsyncLocalStorage::new();
    ///
    /// let mut seen = Vec::new();
    /// let mut record = STEP.run(2, || Snapshot::wrap_mut(|| seen.push(*STEP.get_store().unwrap())));
    /// record();
    /// record();
    /// drop(record);
    /// assert_eq!(seen, [2, 2]);
    /// ```
    pub fn wrap_mut<R>(mut f: impl FnMut() -> R) -> impl FnMut() -> R {
        let snapshot = Snapshot::capture();
        move || snapshot.run(&mut f)
    }

    /// [`wrap`](Snapshot::wrap) for a closure called once, such as one that moves what it
    /// captures out (a job handed to a thread or a queue).
    ///
    /// ```
    /// use async_hooks::{AsyncLocalStorage, Snapshot};
    ///
    /// static USER: AsyncLocalStorage<String> = AsyncLocalStorage::new();
    ///
    /// let name = String::from("greeting");
    /// let job = USER.run("ada".to_string(), || {
    ///     Snapshot::wrap_once(move || format!("{name} for {}", USER.get_store().unwrap()))
    /// });
    /// let text = std::thread::spawn(job).join().unwrap();
    /// assert_eq!(text, "greeting for ada");
    /// ```
    pub fn wrap_once<R>(f: impl FnOnce() -> R) -> impl FnOnce() -> R {
        let snapshot = Snapshot::capture();
        move || snapshot.run(f)
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("keys", &self.frame)
            .finish()
    }
}

/// Ends every storage's guard made inside a [`Snapshot::run`] and still alive, when the run
/// ends (also on panic), just before the caller's frame goes back.
struct EndGuardsMadeInside {
    /// The guard clock (`ThreadState::guard_clock`) when the run began.
    since: u64,
}

impl AroundFrame for EndGuardsMadeInside {
    #[inline(always)]
    fn enter(&mut self, _: &Switching) {}

    #[inline]
    fn leave(self, _: &Switching) {
        with_state(|state| LiveGuards::orphan(None, state, self.since));
    }
}

#[cfg(test)]
mod tests {
    //! `with_store` lends the thread's frame instead of cloning it. These tests switch the context
    //! in every way user code can while a store is lent, and run under Miri in CI.
    use super::*;
    use crate::future::BindContext;
    use crate::resource::AsyncResource;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering;
    use std::task::Waker;

    struct Counted {
        value: u64,
        drops: Arc<AtomicUsize>,
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counted(value: u64, drops: &Arc<AtomicUsize>) -> Counted {
        Counted {
            value,
            drops: drops.clone(),
        }
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
        }
    }

    #[test]
    fn a_run_whose_end_drops_a_panicking_store_still_releases_its_own() {
        /// Counts its drop; panics in it when `.1`.
        struct Flagged(Arc<AtomicUsize>, bool);
        impl Drop for Flagged {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
                if self.1 {
                    panic!("store destructor");
                }
            }
        }
        let store: AsyncLocalStorage<Flagged> = AsyncLocalStorage::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.run(Flagged(drops.clone(), false), || {
                // Restoring the run's previous store at its end drops this one, which panics.
                store.enter_with(Flagged(drops.clone(), true));
            })
        }));
        assert!(result.is_err());
        // The run's own store went too, although the restore unwound.
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        assert!(store.get_store().is_none());
    }

    #[test]
    fn with_store_keeps_its_store_while_the_closure_replaces_the_context() {
        let store: AsyncLocalStorage<Counted> = AsyncLocalStorage::new();
        let drops = Arc::new(AtomicUsize::new(0));
        store.enter_with(counted(1, &drops));
        store.with_store(|outer| {
            let outer = outer.expect("entered");
            // Replaces the current frame (and would free the old one if it were not lent).
            store.enter_with(counted(2, &drops));
            assert_eq!(drops.load(Ordering::SeqCst), 0, "lent store freed early");
            assert_eq!(outer.value, 1);
            assert_eq!(store.get_store().map(|s| s.value), Some(2));
            // A nested read of the new frame, and a `run`/`exit` inside it.
            store.with_store(|inner| assert_eq!(inner.map(|s| s.value), Some(2)));
            store.run(counted(3, &drops), || {
                store.with_store(|s| assert_eq!(s.map(|s| s.value), Some(3)));
                store.exit(|| store.with_store(|s| assert!(s.is_none())));
            });
            assert_eq!(outer.value, 1);
        });
        // The first store went with the lent frame; the `run` store with its frame.
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        assert_eq!(store.get_store().map(|s| s.value), Some(2));
        store.disable();
        assert_eq!(drops.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn with_store_across_polls_scopes_snapshots_and_disable() {
        let store: AsyncLocalStorage<Counted> = AsyncLocalStorage::new();
        let other: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let future = store.run(counted(10, &drops), || {
            async {
                other.enter_with(5);
                store.with_store(|s| s.map(|s| s.value))
            }
            .bind_context()
        });
        let snapshot = other.run(7, Snapshot::capture);
        let resource = AsyncResource::new("Job");
        store.enter_with(counted(1, &drops));
        store.with_store(|outer| {
            // A poll points the thread at the future's frame and back; the future drops its
            // frame when done.
            assert_eq!(block_on(future), Some(10));
            assert_eq!(snapshot.run(|| *other.get_store().unwrap()), 7);
            resource.run_in_async_scope(|| store.enter_with(counted(2, &drops)));
            let guard = other.enter_scope(8);
            drop(guard);
            // Exits every context of the storage, dropping the thread's entry under the lend.
            store.disable();
            assert!(store.get_store().is_none());
            assert_eq!(outer.map(|s| s.value), Some(1));
        });
        drop(resource);
        assert_eq!(drops.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn scope_polls_borrow_the_store_and_drop_the_future_inside() {
        let store: AsyncLocalStorage<Counted> = AsyncLocalStorage::new();
        let others: [AsyncLocalStorage<u64>; 4] = [const { AsyncLocalStorage::new() }; 4];
        let drops = Arc::new(AtomicUsize::new(0));
        let mut cx = Context::from_waker(Waker::noop());
        // Pending once; meanwhile it reads, captures, enters another storage and, over four
        // other storages, spills.
        let captured = std::cell::RefCell::new(None);
        let mut future = Box::pin(store.scope(counted(1, &drops), async {
            std::future::poll_fn(|_| {
                store.with_store(|s| assert_eq!(s.map(|s| s.value), Some(1)));
                *captured.borrow_mut() = Some(async { store.get_store() }.bind_context());
                others[0].enter_with(9);
                others[0].run(1, || {
                    others[1].run(2, || {
                        others[2].run(3, || {
                            others[3].run(4, || {
                                assert_eq!(store.with_store(|s| s.map(|s| s.value)), Some(1))
                            })
                        })
                    })
                });
                Poll::Ready(())
            })
            .await;
            let held = counted(2, &drops);
            std::future::pending::<()>().await;
            drop(held);
        }));
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert!(store.get_store().is_none());
        assert_eq!(
            *others[0].get_store().unwrap(),
            9,
            "another storage's enter_with survives"
        );
        // The capture holds the store beyond the poll.
        let capture = captured.borrow_mut().take().unwrap();
        assert_eq!(block_on(capture).map(|s| s.value), Some(1));
        // Dropped pending: the held value is dropped with the store current, then the store.
        drop(future);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        assert!(store.get_store().is_none());
    }

    /// A `Scope`'s store goes back to the thread's cache only when nothing else holds it: a
    /// store handed out by a poll (also by one that panicked) outlives the future, intact.
    #[test]
    fn scope_store_outlives_the_future_when_a_poll_shared_it() {
        let store: AsyncLocalStorage<Counted> = AsyncLocalStorage::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let mut cx = Context::from_waker(Waker::noop());

        // Never shared: the next scope's store reuses its allocation.
        let address = |s: Option<&Counted>| s.map(|s| s as *const Counted as usize);
        let first = block_on(store.scope(counted(1, &drops), async { store.with_store(address) }));
        let second = block_on(store.scope(counted(2, &drops), async { store.with_store(address) }));
        assert!(first.is_some());
        assert_eq!(first, second, "an unshared scope store is recycled");
        assert_eq!(drops.load(Ordering::SeqCst), 2);

        // Shared in the second poll, after an unshared first one.
        let kept = std::cell::RefCell::new(None);
        let mut future = Box::pin(store.scope(counted(3, &drops), async {
            let mut polls = 0;
            std::future::poll_fn(|_| {
                polls += 1;
                if polls == 1 {
                    return Poll::Pending;
                }
                *kept.borrow_mut() = store.get_store();
                Poll::Ready(())
            })
            .await;
        }));
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert!(future.as_mut().poll(&mut cx).is_ready());
        drop(future);
        let held = kept.borrow_mut().take().unwrap();
        assert_eq!(held.value, 3);
        assert_eq!(drops.load(Ordering::SeqCst), 2, "the shared store is alive");
        drop(held);
        assert_eq!(drops.load(Ordering::SeqCst), 3);

        // Shared by a poll that panics.
        let mut future = Box::pin(store.scope(counted(4, &drops), async {
            *kept.borrow_mut() = store.get_store();
            panic!("a poll that panics after sharing its store");
        }));
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = future.as_mut().poll(&mut cx);
        }));
        assert!(unwound.is_err());
        drop(future);
        let held = kept.borrow_mut().take().unwrap();
        assert_eq!(held.value, 4);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            3,
            "the store shared before the panic is alive"
        );
        drop(held);
        assert_eq!(drops.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn with_store_inside_run_reads_the_stack_frame_while_the_closure_changes_the_context() {
        let store: AsyncLocalStorage<Counted> = AsyncLocalStorage::new();
        let other: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
        let drops = Arc::new(AtomicUsize::new(0));
        store.run(counted(1, &drops), || {
            store.with_store(|outer| {
                // Promotes `run`'s stack frame and replaces it in the cell, twice.
                other.enter_with(2);
                store.enter_with(counted(3, &drops));
                let future = async { store.with_store(|s| s.map(|s| s.value)) }.bind_context();
                assert_eq!(block_on(future), Some(3));
                store.disable();
                assert_eq!(outer.map(|s| s.value), Some(1));
                assert_eq!(
                    drops.load(Ordering::SeqCst),
                    1,
                    "the entered store, disabled"
                );
            });
            assert!(store.get_store().is_none());
            assert_eq!(other.get_store().as_deref(), Some(&2));
        });
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        // `run` restores only its own storage: the other one's `enter_with` survives it.
        assert_eq!(other.get_store().as_deref(), Some(&2));
        other.disable();
    }

    /// Guards dropped out of order inside a `run` (a stack frame under them), across a
    /// `disable`, and with a store whose `Drop` makes and drops a guard of its own while the
    /// releases run: every store is dropped exactly once, and the right one is current.
    #[test]
    fn guards_dropped_out_of_order_release_every_store_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let store: AsyncLocalStorage<Counted> = AsyncLocalStorage::new();
        let value = |s: &AsyncLocalStorage<Counted>| s.with_store(|c| c.map(|c| c.value));
        store.run(counted(1, &drops), || {
            let a = store.enter_scope(counted(2, &drops));
            let b = store.enter_scope(counted(3, &drops));
            let c = store.enter_scope(counted(4, &drops));
            drop(b);
            drop(a);
            assert_eq!(value(&store), Some(4));
            assert_eq!(drops.load(Ordering::SeqCst), 0);
            drop(c);
            assert_eq!(value(&store), Some(1));
            assert_eq!(drops.load(Ordering::SeqCst), 3);
            let d = store.enter_scope(counted(5, &drops));
            store.disable();
            let e = store.enter_scope(counted(6, &drops));
            drop(d);
            assert_eq!(value(&store), Some(6));
            drop(e);
            assert_eq!(value(&store), None);
        });
        assert_eq!(drops.load(Ordering::SeqCst), 6);

        struct Reentrant(&'static AsyncLocalStorage<u64>);
        impl Drop for Reentrant {
            fn drop(&mut self) {
                let guard = self.0.enter_scope(9);
                assert_eq!(self.0.get_store().as_deref(), Some(&9));
                drop(guard);
            }
        }
        // Guards made and dropped out of order while `with_store` lends the frame they replace.
        store.enter_with(counted(7, &drops));
        store.with_store(|lent| {
            let older = store.enter_scope(counted(8, &drops));
            let younger = store.enter_scope(counted(9, &drops));
            drop(older);
            assert_eq!(lent.map(|c| c.value), Some(7));
            drop(younger);
            assert_eq!(value(&store), Some(7));
        });
        assert_eq!(drops.load(Ordering::SeqCst), 8);
        store.disable();
        assert_eq!(drops.load(Ordering::SeqCst), 9);

        static OTHER: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
        let reentrant: AsyncLocalStorage<Reentrant> = AsyncLocalStorage::new();
        let a = reentrant.enter_scope(Reentrant(&OTHER));
        let b = reentrant.enter_scope(Reentrant(&OTHER));
        drop(a);
        drop(b);
        assert!(reentrant.get_store().is_none());
        assert_eq!(OTHER.get_store(), None);
    }

    /// Guards that outlive the `run` they were made in: one ended by the `run`, and one dropped
    /// out of order inside it, whose handed-on store goes stale with the `run` and is released by
    /// the next guard's drop.
    #[test]
    fn guards_outliving_their_run_end_with_it_and_release_their_stores() {
        let drops = Arc::new(AtomicUsize::new(0));
        let store: AsyncLocalStorage<Counted> = AsyncLocalStorage::new();
        let value = |s: &AsyncLocalStorage<Counted>| s.with_store(|c| c.map(|c| c.value));
        let younger = store.run(counted(1, &drops), || {
            let older = store.enter_scope(counted(2, &drops));
            let younger = store.enter_scope(counted(3, &drops));
            drop(older);
            younger
        });
        assert_eq!(value(&store), None);
        // Stores 1 and 2 are held: by the handed-on record and the guard's frame from before.
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        // The handed-on record (store 1, what `older` would have put back) went stale with the
        // `run`; the next guard's drop (this one) releases it, with stores 2 and 3.
        drop(younger);
        assert_eq!(value(&store), None);
        assert_eq!(drops.load(Ordering::SeqCst), 3);
        drop(store.enter_scope(counted(4, &drops)));
        assert_eq!(drops.load(Ordering::SeqCst), 4);
        assert_eq!(value(&store), None);
    }

    /// Two executions that each keep a guard and replace it, in turn: the list of guards stays as
    /// long as the guards alive (it grew by one record a round when only its end was trimmed).
    #[test]
    fn guards_of_interleaved_executions_leave_no_records_behind() {
        let store: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
        let executions = [AsyncResource::new("A"), AsyncResource::new("B")];
        let mut held = [None, None];
        for round in 0..200 {
            let k = round % 2;
            executions[k].run_in_async_scope(|| {
                held[k] = None;
                held[k] = Some(store.enter_scope(round as u64));
                assert_eq!(store.get_store().as_deref(), Some(&(round as u64)));
            });
        }
        let records = LIVE_GUARDS.with(|live| live.borrow().slots.len());
        assert!(records <= 3, "{records} records for 2 live guards");
        for (k, execution) in executions.iter().enumerate() {
            execution.run_in_async_scope(|| held[k] = None);
        }
        let live = LIVE_GUARDS.with(|live| {
            let live = live.borrow();
            live.slots.len() - live.free.len()
        });
        assert_eq!(live, 0);
    }

    #[test]
    fn with_store_panicking_restores_the_frame() {
        let store: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
        store.enter_with(4);
        let result = std::panic::catch_unwind(|| {
            store.with_store(|_| {
                store.enter_with(5);
                panic!("inside with_store");
            })
        });
        assert!(result.is_err());
        assert_eq!(store.get_store().as_deref(), Some(&5));
        let result = std::panic::catch_unwind(|| store.with_store(|_| panic!("untouched")));
        assert!(result.is_err());
        assert_eq!(store.with_store(|s| s.copied()), Some(5));
    }
}
