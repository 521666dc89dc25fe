//! Hook callbacks, the registry of enabled hooks, and dispatch.
//!
//! The registry is a global list in enable order behind a mutex, published as an immutable
//! [`HookTable`] (one list per event kind) with a version number. Each thread caches the table it
//! last saw and refreshes it only at the start of an outermost dispatch, which gives the
//! deferral rule for free: changes made while a thread is dispatching apply when its outermost
//! dispatch returns.
//!
//! Whether an event is dispatched at all is decided by a word in the thread's own state, the
//! kinds it wants ([`ThreadHooks::wants`]): with no hook enabled for an event kind, emitting it
//! costs one relaxed load of that word and a branch. The registry keeps the list of threads and
//! sets the bits of the kinds a newly published table adds in every thread's word; a thread
//! clears the bits its new table no longer has when it refreshes. Both happen under the
//! registry's lock, so no update is lost, and a word always covers the kinds of the registry's
//! table (so no event a hook wants is skipped) and of the thread's cached table (so events
//! raised inside callbacks still reach it).
//!
//! # Safety
//!
//! Three raw pointers, each valid for as long as it is followed: a thread's cached table is an
//! `Arc` it owns, replaced only by an outermost dispatch's refresh or by the thread's exit, so a
//! borrow of it lasts one dispatch; a registered thread's word is alive until its thread
//! deregisters it, under the registry's lock that its readers hold; and the dispatch record the
//! panic hook reads is on the stack of a dispatch running on the same thread, reset before that
//! dispatch returns.

use std::cell::Cell;
use std::fmt;
use std::ops::BitOr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once, PoisonError};

use self::sync::{AtomicU8, AtomicU64, Mutex, MutexGuard};

use crate::context::{thread_state, with_state};
use crate::id::AsyncId;
use crate::resource::Resource;

/// The registry's synchronisation primitives: std's, or loom's under `--cfg async_hooks_loom`
/// (the model tests in `hooks/loom_tests.rs`). A custom cfg rather than `loom`, which would also
/// switch tokio's own loom code on.
mod sync {
    #[cfg(async_hooks_loom)]
    pub(super) use loom::sync::atomic::{AtomicU8, AtomicU64};
    #[cfg(async_hooks_loom)]
    pub(super) use loom::sync::{Mutex, MutexGuard};
    #[cfg(not(async_hooks_loom))]
    pub(super) use std::sync::atomic::{AtomicU8, AtomicU64};
    #[cfg(not(async_hooks_loom))]
    pub(super) use std::sync::{Mutex, MutexGuard};
}

#[cfg(all(test, async_hooks_loom))]
mod loom_tests;

/// The lifecycle callbacks of a hook, Node's `createHook({ init, before, after, destroy,
/// promiseResolve })`.
///
/// Every method has a default that does nothing, like callbacks inherited through Node's prototype
/// chain. Override [`HookCallbacks::events`] to say which callbacks you implement, so that events
/// you ignore cost nothing.
///
/// A panic inside a callback is fatal, as an exception in a Node hook is: the process prints
/// `Error: <message>` with the event and async id to stderr and exits with code 1.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use async_hooks::{AsyncId, AsyncResource, EventMask, HookCallbacks, Resource, create_hook};
///
/// struct CountInits(AtomicUsize);
///
/// impl HookCallbacks for CountInits {
///     fn init(&self, _id: AsyncId, _ty: &str, _trigger: AsyncId, _resource: &Resource) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
///     fn events(&self) -> EventMask {
///         EventMask::INIT
///     }
/// }
///
/// static COUNT: CountInits = CountInits(AtomicUsize::new(0));
/// struct ByRef;
/// impl HookCallbacks for ByRef {
///     fn init(&self, id: AsyncId, ty: &str, trigger: AsyncId, resource: &Resource) {
///         COUNT.init(id, ty, trigger, resource)
///     }
/// }
/// let hook = create_hook(ByRef).enable();
/// let _job = AsyncResource::new("Job");
/// hook.disable();
/// assert_eq!(COUNT.0.load(Ordering::Relaxed), 1);
/// ```
pub trait HookCallbacks: Send + Sync + 'static {
    /// A resource was created. Runs synchronously in the creator's context (inside it,
    /// `execution_async_id()` is the creator's id). `resource` is the handle that
    /// `execution_async_resource()` returns while the resource runs.
    ///
    /// The shared handle is made only if a callback asks for it: cloning `resource`, comparing
    /// or hashing it, or using its slots ([`Resource::insert`] and friends). Reading its ids
    /// and type costs nothing, so a hook that needs only those adds no allocation per resource.
    fn init(
        &self,
        async_id: AsyncId,
        type_name: &str,
        trigger_async_id: AsyncId,
        resource: &Resource,
    ) {
        let _ = (async_id, type_name, trigger_async_id, resource);
    }

    /// A resource's callback or poll is about to run (the context has already switched to it).
    fn before(&self, async_id: AsyncId) {
        let _ = async_id;
    }

    /// A resource's callback or poll has finished (also when it panicked); the context has not
    /// yet switched back.
    fn after(&self, async_id: AsyncId) {
        let _ = async_id;
    }

    /// A resource was destroyed: dropped, or `emit_destroy()` was called. Exactly once.
    fn destroy(&self, async_id: AsyncId) {
        let _ = async_id;
    }

    /// An instrumented future returned `Ready`; fired inside that poll, before its `after`.
    fn promise_resolve(&self, async_id: AsyncId) {
        let _ = async_id;
    }

    /// Which callbacks this hook implements; events outside the mask are never delivered.
    /// The default, [`EventMask::ALL`], delivers every event.
    fn events(&self) -> EventMask {
        EventMask::ALL
    }
}

/// A set of hook events, used by [`HookCallbacks::events`].
///
/// ```
/// use async_hooks::EventMask;
///
/// let mask = EventMask::INIT | EventMask::DESTROY;
/// assert!(mask.contains(EventMask::DESTROY));
/// assert!(!mask.contains(EventMask::BEFORE));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EventMask(u8);

impl EventMask {
    /// No event.
    ///
    /// ```
    /// # use async_hooks::EventMask;
    /// assert!(!EventMask::NONE.contains(EventMask::INIT));
    /// ```
    pub const NONE: EventMask = EventMask(0);
    /// `init`.
    ///
    /// ```
    /// # use async_hooks::EventMask;
    /// assert!(EventMask::ALL.contains(EventMask::INIT));
    /// ```
    pub const INIT: EventMask = EventMask(1 << 0);
    /// `before`.
    ///
    /// ```
    /// # use async_hooks::EventMask;
    /// assert!(EventMask::ALL.contains(EventMask::BEFORE));
    /// ```
    pub const BEFORE: EventMask = EventMask(1 << 1);
    /// `after`.
    ///
    /// ```
    /// # use async_hooks::EventMask;
    /// assert!(EventMask::ALL.contains(EventMask::AFTER));
    /// ```
    pub const AFTER: EventMask = EventMask(1 << 2);
    /// `destroy`.
    ///
    /// ```
    /// # use async_hooks::EventMask;
    /// assert!(EventMask::ALL.contains(EventMask::DESTROY));
    /// ```
    pub const DESTROY: EventMask = EventMask(1 << 3);
    /// `promise_resolve`.
    ///
    /// ```
    /// # use async_hooks::EventMask;
    /// assert!(EventMask::ALL.contains(EventMask::PROMISE_RESOLVE));
    /// ```
    pub const PROMISE_RESOLVE: EventMask = EventMask(1 << 4);
    /// Every event.
    ///
    /// ```
    /// # use async_hooks::EventMask;
    /// assert!(EventMask::ALL.contains(EventMask::INIT | EventMask::PROMISE_RESOLVE));
    /// ```
    pub const ALL: EventMask = EventMask(0b1_1111);

    /// Whether every event of `other` is in `self`.
    ///
    /// ```
    /// # use async_hooks::EventMask;
    /// assert!(EventMask::ALL.contains(EventMask::AFTER));
    /// ```
    pub const fn contains(self, other: EventMask) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for EventMask {
    type Output = EventMask;
    fn bitor(self, rhs: EventMask) -> EventMask {
        EventMask(self.0 | rhs.0)
    }
}

impl fmt::Debug for EventMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut set = f.debug_set();
        for kind in Kind::ALL {
            if self.contains(kind.mask()) {
                set.entry(&format_args!("{}", kind.name()));
            }
        }
        set.finish()
    }
}

/// The kind of an event, an index into the per-kind tables.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum Kind {
    Init = 0,
    Before = 1,
    After = 2,
    Destroy = 3,
    PromiseResolve = 4,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Init,
        Kind::Before,
        Kind::After,
        Kind::Destroy,
        Kind::PromiseResolve,
    ];

    const fn mask(self) -> EventMask {
        EventMask(1 << self as u8)
    }

    const fn name(self) -> &'static str {
        match self {
            Kind::Init => "init",
            Kind::Before => "before",
            Kind::After => "after",
            Kind::Destroy => "destroy",
            Kind::PromiseResolve => "promise_resolve",
        }
    }
}

type InitFn = dyn Fn(AsyncId, &str, AsyncId, &Resource) + Send + Sync;
type IdFn = dyn Fn(AsyncId) + Send + Sync;

/// A [`HookCallbacks`] built from closures, for the common case.
///
/// Only the callbacks you set are delivered (the others cost nothing).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use async_hooks::{AsyncResource, Hooks, create_hook};
///
/// let log = Arc::new(Mutex::new(Vec::new()));
/// let (init_log, destroy_log) = (log.clone(), log.clone());
/// let hook = create_hook(
///     Hooks::new()
///         .init(move |id, ty, _trigger, _resource| init_log.lock().unwrap().push(format!("init {ty}({id})")))
///         .destroy(move |id| destroy_log.lock().unwrap().push(format!("destroy {id}"))),
/// )
/// .enable();
/// let job = AsyncResource::new("Job");
/// let id = job.async_id();
/// drop(job);
/// hook.disable();
/// assert_eq!(*log.lock().unwrap(), [format!("init Job({id})"), format!("destroy {id}")]);
/// ```
#[derive(Default)]
pub struct Hooks {
    init: Option<Box<InitFn>>,
    before: Option<Box<IdFn>>,
    after: Option<Box<IdFn>>,
    destroy: Option<Box<IdFn>>,
    promise_resolve: Option<Box<IdFn>>,
}

impl Hooks {
    /// A hook with no callbacks.
    ///
    /// ```
    /// # use async_hooks::{Hooks, HookCallbacks, EventMask};
    /// assert_eq!(Hooks::new().events(), EventMask::NONE);
    /// ```
    pub fn new() -> Hooks {
        Hooks::default()
    }

    /// Sets the `init(async_id, type_name, trigger_async_id, resource)` callback.
    ///
    /// ```
    /// # use async_hooks::{Hooks, HookCallbacks, EventMask};
    /// let hooks = Hooks::new().init(|id, ty, trigger, _res| println!("{ty}({id}) by {trigger}"));
    /// assert_eq!(hooks.events(), EventMask::INIT);
    /// ```
    pub fn init(
        mut self,
        f: impl Fn(AsyncId, &str, AsyncId, &Resource) + Send + Sync + 'static,
    ) -> Hooks {
        self.init = Some(Box::new(f));
        self
    }

    /// Sets the `before(async_id)` callback.
    ///
    /// ```
    /// # use async_hooks::{Hooks, HookCallbacks, EventMask};
    /// assert_eq!(Hooks::new().before(|_| {}).events(), EventMask::BEFORE);
    /// ```
    pub fn before(mut self, f: impl Fn(AsyncId) + Send + Sync + 'static) -> Hooks {
        self.before = Some(Box::new(f));
        self
    }

    /// Sets the `after(async_id)` callback.
    ///
    /// ```
    /// # use async_hooks::{Hooks, HookCallbacks, EventMask};
    /// assert_eq!(Hooks::new().after(|_| {}).events(), EventMask::AFTER);
    /// ```
    pub fn after(mut self, f: impl Fn(AsyncId) + Send + Sync + 'static) -> Hooks {
        self.after = Some(Box::new(f));
        self
    }

    /// Sets the `destroy(async_id)` callback.
    ///
    /// ```
    /// # use async_hooks::{Hooks, HookCallbacks, EventMask};
    /// assert_eq!(Hooks::new().destroy(|_| {}).events(), EventMask::DESTROY);
    /// ```
    pub fn destroy(mut self, f: impl Fn(AsyncId) + Send + Sync + 'static) -> Hooks {
        self.destroy = Some(Box::new(f));
        self
    }

    /// Sets the `promise_resolve(async_id)` callback.
    ///
    /// ```
    /// # use async_hooks::{Hooks, HookCallbacks, EventMask};
    /// assert_eq!(Hooks::new().promise_resolve(|_| {}).events(), EventMask::PROMISE_RESOLVE);
    /// ```
    pub fn promise_resolve(mut self, f: impl Fn(AsyncId) + Send + Sync + 'static) -> Hooks {
        self.promise_resolve = Some(Box::new(f));
        self
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("events", &self.events())
            .finish()
    }
}

impl HookCallbacks for Hooks {
    #[inline]
    fn init(
        &self,
        async_id: AsyncId,
        type_name: &str,
        trigger_async_id: AsyncId,
        resource: &Resource,
    ) {
        if let Some(f) = &self.init {
            f(async_id, type_name, trigger_async_id, resource)
        }
    }
    #[inline]
    fn before(&self, async_id: AsyncId) {
        if let Some(f) = &self.before {
            f(async_id)
        }
    }
    #[inline]
    fn after(&self, async_id: AsyncId) {
        if let Some(f) = &self.after {
            f(async_id)
        }
    }
    #[inline]
    fn destroy(&self, async_id: AsyncId) {
        if let Some(f) = &self.destroy {
            f(async_id)
        }
    }
    #[inline]
    fn promise_resolve(&self, async_id: AsyncId) {
        if let Some(f) = &self.promise_resolve {
            f(async_id)
        }
    }
    fn events(&self) -> EventMask {
        let mut mask = EventMask::NONE;
        let set = [
            (self.init.is_some(), EventMask::INIT),
            (self.before.is_some(), EventMask::BEFORE),
            (self.after.is_some(), EventMask::AFTER),
            (self.destroy.is_some(), EventMask::DESTROY),
            (self.promise_resolve.is_some(), EventMask::PROMISE_RESOLVE),
        ];
        for (present, event) in set {
            if present {
                mask = mask | event;
            }
        }
        mask
    }
}

struct HookInner {
    callbacks: Callbacks,
    events: EventMask,
    enabled: AtomicBool,
}

/// A hook's callbacks. Those of the [`Hooks`] builder are kept as they are, so that an event
/// calls the user's closure directly: through `dyn HookCallbacks` it took two indirect calls.
enum Callbacks {
    Closures(Hooks),
    Custom(Box<dyn HookCallbacks>),
}

impl Callbacks {
    fn new<C: HookCallbacks>(callbacks: C) -> Callbacks {
        let mut slot = Some(callbacks);
        if let Some(hooks) = (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<Hooks>>() {
            return Callbacks::Closures(hooks.take().expect("set just above"));
        }
        Callbacks::Custom(Box::new(slot.expect("not taken")))
    }
}

/// Each method calls the builder's closure or the custom implementation.
impl HookCallbacks for Callbacks {
    #[inline(always)]
    fn init(
        &self,
        async_id: AsyncId,
        type_name: &str,
        trigger_async_id: AsyncId,
        resource: &Resource,
    ) {
        match self {
            Callbacks::Closures(hooks) => {
                hooks.init(async_id, type_name, trigger_async_id, resource)
            }
            Callbacks::Custom(custom) => {
                custom.init(async_id, type_name, trigger_async_id, resource)
            }
        }
    }
    #[inline(always)]
    fn before(&self, async_id: AsyncId) {
        match self {
            Callbacks::Closures(hooks) => hooks.before(async_id),
            Callbacks::Custom(custom) => custom.before(async_id),
        }
    }
    #[inline(always)]
    fn after(&self, async_id: AsyncId) {
        match self {
            Callbacks::Closures(hooks) => hooks.after(async_id),
            Callbacks::Custom(custom) => custom.after(async_id),
        }
    }
    #[inline(always)]
    fn destroy(&self, async_id: AsyncId) {
        match self {
            Callbacks::Closures(hooks) => hooks.destroy(async_id),
            Callbacks::Custom(custom) => custom.destroy(async_id),
        }
    }
    #[inline(always)]
    fn promise_resolve(&self, async_id: AsyncId) {
        match self {
            Callbacks::Closures(hooks) => hooks.promise_resolve(async_id),
            Callbacks::Custom(custom) => custom.promise_resolve(async_id),
        }
    }
    fn events(&self) -> EventMask {
        match self {
            Callbacks::Closures(hooks) => hooks.events(),
            Callbacks::Custom(custom) => custom.events(),
        }
    }
}

/// A hook created by [`create_hook`]: a cheap `Clone` handle. Created disabled.
///
/// An enabled hook stays registered when its handles are dropped (as in Node); only
/// [`AsyncHook::disable`] removes it.
///
/// ```
/// use async_hooks::{Hooks, create_hook};
///
/// let hook = create_hook(Hooks::new().init(|_, _, _, _| {})).enable();
/// assert!(hook.is_enabled());
/// hook.enable(); // a no-op
/// assert!(!hook.disable().is_enabled());
/// ```
#[derive(Clone)]
pub struct AsyncHook {
    inner: Arc<HookInner>,
}

impl fmt::Debug for AsyncHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncHook")
            .field("events", &self.inner.events)
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

/// Creates a hook from its callbacks, Node's `async_hooks.createHook(callbacks)`. The hook starts
/// disabled; call [`AsyncHook::enable`].
///
/// ```
/// use async_hooks::{Hooks, create_hook};
///
/// let hook = create_hook(Hooks::new().before(|id| println!("before {id}")));
/// assert!(!hook.is_enabled());
/// ```
pub fn create_hook(callbacks: impl HookCallbacks) -> AsyncHook {
    let events = callbacks.events();
    AsyncHook {
        inner: Arc::new(HookInner {
            callbacks: Callbacks::new(callbacks),
            events,
            enabled: AtomicBool::new(false),
        }),
    }
}

impl AsyncHook {
    /// Enables the hook: it receives events from now on, after the hooks enabled before it.
    /// Enabling an enabled hook does nothing. Returns a handle to the same hook.
    ///
    /// Called while this thread is dispatching an event (from inside a callback), the change
    /// takes effect when that dispatch returns.
    ///
    /// ```
    /// # use async_hooks::{Hooks, create_hook};
    /// let hook = create_hook(Hooks::new()).enable();
    /// assert!(hook.is_enabled());
    /// # hook.disable();
    /// ```
    pub fn enable(&self) -> AsyncHook {
        install_panic_hook();
        registry().enable(&self.inner);
        self.clone()
    }

    /// Disables the hook: it receives no new events. Disabling a disabled hook does nothing.
    /// Returns a handle to the same hook.
    ///
    /// Called from inside a callback, the hook still receives the events this thread is already
    /// dispatching.
    ///
    /// ```
    /// # use async_hooks::{Hooks, create_hook};
    /// let hook = create_hook(Hooks::new()).enable().disable();
    /// assert!(!hook.is_enabled());
    /// ```
    pub fn disable(&self) -> AsyncHook {
        registry().disable(&self.inner);
        self.clone()
    }

    /// Whether the hook is enabled.
    ///
    /// ```
    /// # use async_hooks::{Hooks, create_hook};
    /// assert!(!create_hook(Hooks::new()).is_enabled());
    /// ```
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::Relaxed)
    }
}

/// The enabled hooks of each event kind, in enable order. Immutable once published.
#[derive(Default)]
struct HookTable {
    by_kind: [Vec<Arc<HookInner>>; 5],
    /// The kinds whose list is not empty, as [`EventMask`] bits.
    kinds: u8,
}

impl HookTable {
    /// The hooks an event of `kind` is delivered to, in enable order.
    fn list(&self, kind: Kind) -> &[Arc<HookInner>] {
        &self.by_kind[kind as usize]
    }
}

/// A registered thread's [`ThreadHooks::wants`] word.
struct ThreadWord(std::ptr::NonNull<AtomicU8>);

// SAFETY: the pointer is only used to reach an atomic, under the registry's lock, and the word's
// thread removes it from the registry (under the same lock) before the word goes away.
#[allow(unsafe_code)]
unsafe impl Send for ThreadWord {}

impl ThreadWord {
    fn of(hooks: &ThreadHooks) -> ThreadWord {
        ThreadWord(std::ptr::NonNull::from(&hooks.wants))
    }

    /// Adds `kinds` to the thread's word; called with the registry's lock held.
    fn add(&self, kinds: u8) {
        // SAFETY: a registered word is alive: its thread deregisters it, under the lock the
        // caller holds, before it goes away (`ThreadHooks::release`).
        #[allow(unsafe_code)]
        let word = unsafe { self.0.as_ref() };
        word.fetch_or(kinds, Ordering::Relaxed);
    }
}

/// The enabled hooks in enable order, the last table published from them, and the threads whose
/// words `publish` keeps up to date.
struct Registry {
    enabled: Vec<Arc<HookInner>>,
    table: Option<Arc<HookTable>>,
    version: u64,
    threads: Vec<ThreadWord>,
}

/// The registry behind its lock, with the version readers check without taking it. The process
/// has one, [`registry()`]; the loom tests make one per model run.
struct HookRegistry {
    locked: Mutex<Registry>,
    /// Bumped (under the lock) each time a new table is published.
    version: AtomicU64,
}

#[cfg(not(async_hooks_loom))]
static REGISTRY: HookRegistry = HookRegistry::new();

/// The process's registry.
#[cfg(not(async_hooks_loom))]
#[inline(always)]
fn registry() -> &'static HookRegistry {
    &REGISTRY
}

/// The process's registry (loom's primitives cannot be built in a `static`).
#[cfg(async_hooks_loom)]
fn registry() -> &'static HookRegistry {
    loom::lazy_static! {
        static ref REGISTRY: HookRegistry = HookRegistry::new();
    }
    &REGISTRY
}

impl Registry {
    /// No hook enabled, nothing published yet, no thread registered.
    const EMPTY: Registry = Registry {
        enabled: Vec::new(),
        table: None,
        version: 0,
        threads: Vec::new(),
    };

    /// The kinds of the published table.
    fn kinds(&self) -> u8 {
        self.table.as_ref().map_or(0, |table| table.kinds)
    }
}

// Two constructors only because loom's primitives cannot be built in a `const fn` (the std one
// must be, for the `static`).
impl HookRegistry {
    #[cfg(not(async_hooks_loom))]
    const fn new() -> HookRegistry {
        HookRegistry {
            locked: Mutex::new(Registry::EMPTY),
            version: AtomicU64::new(0),
        }
    }

    #[cfg(async_hooks_loom)]
    fn new() -> HookRegistry {
        HookRegistry {
            locked: Mutex::new(Registry::EMPTY),
            version: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock cannot leave the registry half-updated: `publish` builds
        // the new table before touching shared state.
        self.locked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `hook` unless it is enabled, and publishes. Returns whether anything changed.
    fn enable(&self, hook: &Arc<HookInner>) -> bool {
        let mut registry = self.lock();
        if registry.enabled.iter().any(|h| Arc::ptr_eq(h, hook)) {
            return false;
        }
        registry.enabled.push(hook.clone());
        hook.enabled.store(true, Ordering::Relaxed);
        self.publish(&mut registry);
        true
    }

    /// Removes `hook` if it is enabled, and publishes. Returns whether anything changed.
    fn disable(&self, hook: &Arc<HookInner>) -> bool {
        let mut registry = self.lock();
        let before = registry.enabled.len();
        registry.enabled.retain(|h| !Arc::ptr_eq(h, hook));
        if registry.enabled.len() == before {
            return false;
        }
        hook.enabled.store(false, Ordering::Relaxed);
        self.publish(&mut registry);
        true
    }

    /// Builds the table of `registry.enabled` and publishes it; called with the lock held.
    fn publish(&self, registry: &mut Registry) {
        let mut table = HookTable::default();
        for hook in &registry.enabled {
            for kind in Kind::ALL {
                if hook.events.contains(kind.mask()) {
                    table.by_kind[kind as usize].push(hook.clone());
                    table.kinds |= kind.mask().0;
                }
            }
        }
        // Every registered word covers the old table's kinds; the new ones are added before the
        // version is bumped. Kinds the table no longer has are left set: each thread clears them
        // when its next event takes it to a refresh (a disable writes no thread's word).
        let added = table.kinds & !registry.kinds();
        if added != 0 {
            for thread in &registry.threads {
                thread.add(added);
            }
        }
        registry.table = Some(Arc::new(table));
        registry.version += 1;
        self.version.store(registry.version, Ordering::Release);
    }
}

/// A thread's view of the registry (the event it is dispatching is in the thread's hot state,
/// `ThreadState::dispatching`). It is part of the thread's state, whose thread-local has no
/// destructor: the reference to the cached table that it owns, and its place in the registry's
/// list of threads, are released at thread exit by [`ReleaseTable`].
pub(crate) struct ThreadHooks {
    /// The kinds of event this thread takes to [`dispatch`], as [`EventMask`] bits: every kind
    /// until the thread first refreshes (which registers it), then at least the kinds of the
    /// registry's table and of `table`; none once the thread's exit has released it. Written
    /// only under the registry's lock (by `publish` and by `refresh`, and by `release` when the
    /// thread exits), read with one relaxed load for every event.
    wants: AtomicU8,
    /// The registry version `table` was published as; [`STALE`] when none is cached (and then
    /// the thread is not in the registry's list).
    version: Cell<u64>,
    /// The cached table: null, or from `Arc::into_raw`, owning one strong reference. Replaced
    /// only at the start of an outermost dispatch (depth 0), so a dispatch reads it without a
    /// guard while it runs.
    table: Cell<*const HookTable>,
}

/// An event being dispatched, recorded on its dispatch's stack; the thread's state points at the
/// innermost one (see `ThreadState::dispatching`).
pub(crate) struct Dispatching {
    kind: Kind,
    async_id: AsyncId,
}

/// A version the registry never publishes: the cache is empty and must refresh.
const STALE: u64 = u64::MAX;

impl ThreadHooks {
    /// A thread that has not seen the registry yet: its first event of each kind goes to
    /// [`dispatch`], whose refresh registers it.
    #[cfg(not(async_hooks_loom))]
    pub(crate) const fn new() -> Self {
        ThreadHooks {
            wants: AtomicU8::new(EventMask::ALL.0),
            version: Cell::new(STALE),
            table: Cell::new(std::ptr::null()),
        }
    }

    #[cfg(async_hooks_loom)]
    pub(crate) fn new() -> Self {
        ThreadHooks {
            wants: AtomicU8::new(EventMask::ALL.0),
            version: Cell::new(STALE),
            table: Cell::new(std::ptr::null()),
        }
    }

    /// Whether an event of `kind` goes to [`dispatch`] on this thread: one relaxed load and a
    /// bit test. A set bit may be stale (a hook since disabled): the dispatch then finds no hook.
    #[inline(always)]
    fn wants(&self, kind: Kind) -> bool {
        self.wants.load(Ordering::Relaxed) & kind.mask().0 != 0
    }

    /// The table an event is dispatched to on this thread: refreshed from `registry` at the
    /// start of an outermost dispatch only, so that changes made while this thread dispatches
    /// apply when its outermost dispatch returns.
    #[inline(always)]
    fn dispatch_table(&self, registry: &HookRegistry, outermost: bool) -> Option<&HookTable> {
        if outermost && registry.version.load(Ordering::Acquire) != self.version.get() {
            self.refresh(registry);
        }
        // SAFETY: a non-null pointer owns a strong reference, and is replaced (and the reference
        // released) only by `refresh` in an outermost dispatch or by `release`, neither of which
        // can run while the returned borrow is in use: callers use it within one dispatch, whose
        // nested dispatches are not outermost, and the thread's exit runs no dispatch in between.
        #[allow(unsafe_code)]
        unsafe {
            self.table.get().as_ref()
        }
    }

    /// Caches the registry's current table and sets `wants` to its kinds, registering the thread
    /// on its first call (slow path: a hook was enabled or disabled since, or this is the
    /// thread's first event of a kind).
    #[cold]
    #[inline(never)]
    fn refresh(&self, registry: &HookRegistry) {
        if !ReleaseTable::armed() {
            // This thread is exiting and its cache was already released (or never made): events
            // are no longer delivered on it. Not registered, so no other thread writes `wants`.
            self.wants.store(0, Ordering::Relaxed);
            return;
        }
        let table = {
            let mut locked = registry.lock();
            if self.version.get() == STALE {
                locked.threads.push(ThreadWord::of(self));
            }
            // Exactly the new table's kinds: a bit that `publish` set for a table since replaced
            // is cleared here, under the lock, so no bit a concurrent `publish` adds is lost.
            self.wants.store(locked.kinds(), Ordering::Relaxed);
            self.version.set(locked.version);
            locked.table.clone()
        };
        let table = table.map_or(std::ptr::null(), Arc::into_raw);
        let old = self.table.replace(table);
        // Released last: dropping the old table may drop a hook's callbacks, which may run user
        // code (raising events of its own).
        Self::release_raw(old);
    }

    /// Leaves `registry`'s list of threads and releases the cached table (at thread exit, or at
    /// the end of a loom model run). Events raised on the thread afterwards are not dispatched.
    // Under loom only the models call it (`ReleaseTable` does nothing there).
    #[cfg_attr(all(async_hooks_loom, not(test)), allow(dead_code))]
    fn release(&self, registry: &HookRegistry) {
        if self.version.get() != STALE {
            let mut locked = registry.lock();
            let word = ThreadWord::of(self).0;
            let at = locked.threads.iter().position(|thread| thread.0 == word);
            locked
                .threads
                .swap_remove(at.expect("a thread with a cached version is registered"));
            self.wants.store(0, Ordering::Relaxed);
        }
        self.version.set(STALE);
        Self::release_raw(self.table.replace(std::ptr::null()));
    }

    fn release_raw(table: *const HookTable) {
        if !table.is_null() {
            // SAFETY: a non-null cached pointer came from `Arc::into_raw` and owned one strong
            // reference; it was just taken out of the cache, so it is released once.
            #[allow(unsafe_code)]
            drop(unsafe { Arc::from_raw(table) });
        }
    }
}

/// Deregisters the thread and releases its cached table when the thread exits. Its
/// thread-local is touched by every refresh, which registers the destructor.
struct ReleaseTable;

impl ReleaseTable {
    /// Whether the thread-exit release is registered and has not run yet.
    fn armed() -> bool {
        RELEASE_TABLE.try_with(|_| ()).is_ok()
    }
}

impl Drop for ReleaseTable {
    fn drop(&mut self) {
        // Under loom, the models' threads release their own views (and the process's registry
        // cannot be reached outside a model).
        #[cfg(not(async_hooks_loom))]
        thread_hooks().release(registry());
    }
}

thread_local! {
    static RELEASE_TABLE: ReleaseTable = const { ReleaseTable };
}

// The thread's state holds it, and the hot checks depend on that state's thread-local having no
// drop glue (one with drop glue is reached through a lazily registering accessor instead).
const _: () = assert!(!std::mem::needs_drop::<ThreadHooks>());

/// This thread's [`ThreadHooks`], part of its hot state: the check of every event is a load
/// relative to the state the poll or scope already addresses.
#[cfg(not(async_hooks_loom))]
#[inline(always)]
fn thread_hooks<'a>() -> &'a ThreadHooks {
    &thread_state().hooks
}

/// This thread's [`ThreadHooks`] (loom's atomics cannot be built in a `const` thread-local; the
/// loom models give each of their threads its own instead, and run no real event).
#[cfg(async_hooks_loom)]
fn thread_hooks<'a>() -> &'a ThreadHooks {
    thread_local! {
        static THREAD_HOOKS: ThreadHooks = ThreadHooks::new();
    }
    let hooks = THREAD_HOOKS.with(std::ptr::from_ref);
    // SAFETY: only for the loom build, which raises no event on a real thread; the pointer is
    // valid while the thread's locals are.
    #[allow(unsafe_code)]
    unsafe {
        &*hooks
    }
}

/// Whether an event of `kind` would reach a hook on this thread: one relaxed load of the
/// thread's word and a branch (see [`ThreadHooks::wants`]).
#[inline(always)]
pub(crate) fn wants(kind: Kind) -> bool {
    thread_hooks().wants(kind)
}

/// Whether an event of `kind` raised now on this thread would reach a hook: exact where
/// [`wants`] may be stale, for decisions that depend on it (an empty type name is an error only
/// while an `init` hook would see it). Takes the table a dispatch would, refreshing it when not
/// inside a dispatch.
#[inline]
pub(crate) fn would_reach_a_hook(kind: Kind) -> bool {
    wants(kind) && {
        let outermost = thread_state().dispatching.get().is_null();
        thread_hooks()
            .dispatch_table(registry(), outermost)
            .is_some_and(|table| !table.list(kind).is_empty())
    }
}

/// Emits `init` for a new resource. The caller checked [`wants`]`(Kind::Init)` (it made the
/// handle for it).
#[cold]
#[inline(never)]
pub(crate) fn emit_init(
    async_id: AsyncId,
    type_name: &str,
    trigger_async_id: AsyncId,
    resource: &Resource,
) {
    dispatch(Kind::Init, async_id, |hook| {
        hook.init(async_id, type_name, trigger_async_id, resource)
    });
}

/// Emits a `before`/`after`/`destroy`/`promise_resolve` event: the fast path builds nothing.
#[inline(always)]
pub(crate) fn emit_id(kind: Kind, async_id: AsyncId) {
    if wants(kind) {
        // Each call site passes a constant kind, so this picks one entry at compile time.
        match kind {
            Kind::Before => dispatch_id::<{ Kind::Before as u8 }>(async_id),
            Kind::After => dispatch_id::<{ Kind::After as u8 }>(async_id),
            Kind::Destroy => dispatch_id::<{ Kind::Destroy as u8 }>(async_id),
            Kind::PromiseResolve => dispatch_id::<{ Kind::PromiseResolve as u8 }>(async_id),
            Kind::Init => unreachable!("init carries a resource: use `emit_init`"),
        }
    }
}

// `extern "C"`: a panic cannot unwind out of it (one that escaped the callbacks' own
// `catch_unwind` aborts). Callers rely on that: `before` fires while the thread points at a
// resource that only the guard being built will switch away from, and with no unwind edge the
// guard is built in place instead of being copied between stack slots (a store-forwarding stall
// on every poll). One function per kind: no jump on the kind at run time.
#[cold]
#[inline(never)]
extern "C" fn dispatch_id<const KIND: u8>(async_id: AsyncId) {
    const BEFORE: u8 = Kind::Before as u8;
    const AFTER: u8 = Kind::After as u8;
    const DESTROY: u8 = Kind::Destroy as u8;
    const PROMISE_RESOLVE: u8 = Kind::PromiseResolve as u8;
    match KIND {
        BEFORE => dispatch(Kind::Before, async_id, |hook| hook.before(async_id)),
        AFTER => dispatch(Kind::After, async_id, |hook| hook.after(async_id)),
        DESTROY => dispatch(Kind::Destroy, async_id, |hook| hook.destroy(async_id)),
        PROMISE_RESOLVE => dispatch(Kind::PromiseResolve, async_id, |hook| {
            hook.promise_resolve(async_id)
        }),
        _ => unreachable!("init carries a resource: use `emit_init`"),
    }
}

/// Emits a `before`/`after`/`promise_resolve` event of the running resource, whose id the cold
/// path reads from the thread's state: then no call argument is set up on the hot path (LLVM
/// loaded it ahead of the branch, an instruction per event).
#[inline(always)]
pub(crate) fn emit_current(kind: Kind) {
    if wants(kind) {
        match kind {
            Kind::Before => dispatch_current::<{ Kind::Before as u8 }>(),
            Kind::After => dispatch_current::<{ Kind::After as u8 }>(),
            Kind::PromiseResolve => dispatch_current::<{ Kind::PromiseResolve as u8 }>(),
            Kind::Destroy | Kind::Init => {
                unreachable!("only the running resource's own events: use `emit_id`")
            }
        }
    }
}

// `extern "C"` for the reason `dispatch_id` is.
#[cold]
#[inline(never)]
extern "C" fn dispatch_current<const KIND: u8>() {
    dispatch_id::<KIND>(thread_state().execution_async_id());
}

/// Emits `destroy` (from a drop path).
#[inline(always)]
pub(crate) fn emit_destroy(async_id: AsyncId) {
    emit_id(Kind::Destroy, async_id);
}

/// Delivers an event to this thread's table of hooks for `kind`, in enable order. Once the
/// thread's exit has released its view of the registry, events are not delivered.
#[inline(always)]
fn dispatch(kind: Kind, async_id: AsyncId, deliver: impl Fn(&Callbacks)) {
    let state = thread_state();
    let outer = state.dispatching.get();
    let Some(table) = thread_hooks().dispatch_table(registry(), outer.is_null()) else {
        return;
    };
    let list = table.list(kind);
    if list.is_empty() {
        return;
    }
    let event = Dispatching { kind, async_id };
    // No guard puts `outer` back: nothing unwinds out of here (a panicking callback is fatal,
    // below), so the store at the end always runs, before `event` goes.
    state.dispatching.set(&event);
    if let [hook] = list {
        // The common case, one hook for the kind: no loop state to keep across the call.
        deliver_to(kind, async_id, &deliver, hook);
    } else {
        deliver_to_each(kind, async_id, &deliver, list);
    }
    state.dispatching.set(outer);
}

/// Delivers an event to one hook; a panicking callback is fatal.
#[inline(always)]
fn deliver_to(kind: Kind, async_id: AsyncId, deliver: &impl Fn(&Callbacks), hook: &HookInner) {
    let result = panic::catch_unwind(AssertUnwindSafe(|| deliver(&hook.callbacks)));
    if let Err(payload) = result {
        fatal(kind, async_id, panic_message(&*payload));
    }
}

/// Delivers an event to several hooks, in enable order.
#[inline(never)]
fn deliver_to_each(
    kind: Kind,
    async_id: AsyncId,
    deliver: &impl Fn(&Callbacks),
    list: &[Arc<HookInner>],
) {
    for hook in list {
        deliver_to(kind, async_id, deliver, hook);
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "a hook callback panicked"
    }
}

/// Node treats an exception in a hook callback as fatal: there is no safe way to continue, since
/// the hook may have left its own bookkeeping half-done.
#[cold]
fn fatal(kind: Kind, async_id: AsyncId, message: &str) -> ! {
    eprintln!(
        "Error: {message}\n    in the `{}` hook callback for async id {async_id}\n    \
         (a panic inside an async hook callback is fatal; the process exits with code 1)",
        kind.name()
    );
    std::process::exit(1)
}

/// Installs (once) a panic hook that turns a panic inside a hook callback into the fatal report
/// *before* the default panic message, so stderr starts with `Error:` as in Node. Panics
/// elsewhere go to the previously installed hook unchanged.
fn install_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let event = with_state(|state| state.dispatching.get());
            // SAFETY: a non-null pointer is the record of a dispatch that is running on this
            // thread, further up the stack than this panic (it is reset before that dispatch
            // returns).
            #[allow(unsafe_code)]
            match unsafe { event.as_ref() } {
                Some(event) => fatal(event.kind, event.async_id, panic_message(info.payload())),
                None => previous(info),
            }
        }));
    });
}

#[cfg(all(test, not(async_hooks_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// The cached table's raw pointer under Miri: replaced by a refresh while a hook's callbacks
    /// are alive, read by nested dispatches while a refresh is pending, and released when the
    /// thread exits.
    #[test]
    fn the_cached_table_is_replaced_read_while_nested_and_released_at_exit() {
        // Ids no resource gets, so that events of other tests running meanwhile (which reach
        // these hooks while they are enabled) are not counted.
        const BASE: u64 = u64::MAX - 16;
        let id = |n: u64| AsyncId::from_u64(BASE + n);
        let ours = |id: AsyncId| id.as_u64() >= BASE;
        static NESTED: AtomicU64 = AtomicU64::new(0);
        let seen = Arc::new(AtomicU64::new(0));
        let witness = Arc::new(());
        let (s, w) = (seen.clone(), witness.clone());
        let first = create_hook(Hooks::new().before(move |event| {
            let _keep = &w;
            if !ours(event) {
                return;
            }
            s.fetch_add(1, Ordering::Relaxed);
            if event == id(1) {
                // A change and a nested event inside a dispatch: the nested event goes to the
                // table this dispatch started with.
                let second = create_hook(Hooks::new().before(move |event| {
                    if ours(event) {
                        NESTED.fetch_add(1, Ordering::Relaxed);
                    }
                }))
                .enable();
                emit_id(Kind::Before, id(2));
                second.disable();
            }
        }));
        std::thread::spawn(move || {
            let first = first.enable();
            emit_id(Kind::Before, id(1));
            assert_eq!(seen.load(Ordering::Relaxed), 2, "outer and nested event");
            assert_eq!(
                NESTED.load(Ordering::Relaxed),
                0,
                "enabled inside the dispatch"
            );
            first.disable();
            // Refreshes to a table without `first`, releasing the old one.
            emit_id(Kind::Before, id(3));
            assert_eq!(seen.load(Ordering::Relaxed), 2);
            let again = first.enable();
            emit_id(Kind::Before, id(4));
            assert_eq!(seen.load(Ordering::Relaxed), 3);
            again.disable();
            // The thread exits holding a table with `first` in it.
        })
        .join()
        .unwrap();
        // The thread released its cache when it exited. Test threads that dispatched while the
        // hook was enabled may hold a table with it until they refresh or exit: wait for them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while Arc::strong_count(&witness) != 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the hook's callbacks are still referenced"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// The registry's raw pointers to threads' words under Miri: threads register with their
    /// first event and leave when they exit, while enabling a hook writes every registered word.
    /// A thread that did not leave would be written after its word is gone.
    #[test]
    fn threads_register_with_their_first_event_and_leave_the_registry_when_they_exit() {
        let hook = create_hook(Hooks::new().promise_resolve(|_| {}));
        for _ in 0..if cfg!(miri) { 3 } else { 20 } {
            let thread = std::thread::spawn(|| {
                let word = ThreadWord::of(thread_hooks()).0;
                let listed = || registry().lock().threads.iter().any(|t| t.0 == word);
                assert!(!listed(), "listed before its first event");
                assert!(
                    wants(Kind::Destroy),
                    "a new thread takes its first event to dispatch"
                );
                emit_destroy(AsyncId::from_u64(u64::MAX));
                assert!(listed(), "not listed after its first event");
            });
            // Races the thread's exit: adds `promise_resolve` to every registered word.
            hook.enable();
            thread.join().unwrap();
            hook.disable();
        }
        // Registered, and then the enable reached this thread's word.
        emit_destroy(AsyncId::from_u64(u64::MAX));
        hook.enable();
        assert!(wants(Kind::PromiseResolve));
        hook.disable();
    }

    #[test]
    fn builder_closures_are_kept_as_closures_and_custom_callbacks_boxed() {
        static SEEN: AtomicU64 = AtomicU64::new(0);
        struct Custom;
        impl HookCallbacks for Custom {
            fn before(&self, async_id: AsyncId) {
                SEEN.fetch_add(async_id.as_u64() * 10, Ordering::Relaxed);
            }
        }
        let closures = Callbacks::new(Hooks::new().before(|id| {
            SEEN.fetch_add(id.as_u64(), Ordering::Relaxed);
        }));
        let custom = Callbacks::new(Custom);
        assert!(matches!(closures, Callbacks::Closures(_)));
        assert!(matches!(custom, Callbacks::Custom(_)));
        assert_eq!(closures.events(), EventMask::BEFORE);
        closures.before(AsyncId::from_u64(2));
        custom.before(AsyncId::from_u64(3));
        closures.after(AsyncId::from_u64(100));
        assert_eq!(SEEN.load(Ordering::Relaxed), 32);
    }
}
