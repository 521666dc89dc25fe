//! Resources: the `Resource` handle, resource types (Node's providers) and `AsyncResource`.
//!
//! # Safety
//!
//! A resource in its `init` callbacks is a pending handle ([`PendingInit`]) on `emit_init`'s
//! stack: the `Resource` that points at it is only lent to those callbacks, never kept (a clone
//! makes a shared handle), so the pointer is followed only while `emit_init` runs; a shared
//! handle it makes is published once and owned by the identity word afterwards. The word itself
//! is the `identity` module's.

use std::any::{Any, TypeId};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use crate::context::{ThreadState, with_state};
use crate::error::{Error, ErrorKind};
use crate::execution;
use crate::hooks::{self, Kind};
use crate::id::{self, AsyncId};
use crate::storage::CapturedFrame;

mod identity;

pub(crate) use identity::{Identity, ROOT_IDENTITY};

/// A resource type (Node's "provider"): a name with a stable numeric id, registered in
/// [`async_wrap_providers`] the first time a resource of that type is created.
///
/// The macros declare one `static` per call site; [`AsyncResource::new`] interns names given at
/// run time (each distinct name is kept for the life of the process, like Node's provider table).
#[doc(hidden)]
pub struct ResourceType {
    name: &'static str,
    provider: AtomicU32,
}

/// The interned type for a resource created with `type_name`: `ERR_ASYNC_TYPE` if the name is
/// empty while an `init` hook would see it.
fn checked_type(type_name: &str) -> Result<&'static ResourceType, Error> {
    if type_name.is_empty() && hooks::would_reach_a_hook(Kind::Init) {
        return Err(Error::new(
            ErrorKind::AsyncType,
            "the resource type name is empty; give the resource a non-empty type name such as \"WorkerTask\"",
        ));
    }
    Ok(ResourceType::intern(type_name))
}

/// The type of the root resource.
pub(crate) static ROOT_TYPE: ResourceType = ResourceType::new("ROOT");

impl ResourceType {
    /// A resource type named `name`, registered on first use.
    pub const fn new(name: &'static str) -> ResourceType {
        ResourceType {
            name,
            provider: AtomicU32::new(0),
        }
    }

    /// The type name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Makes sure the type appears in [`async_wrap_providers`]; one relaxed load once done.
    #[inline(always)]
    pub(crate) fn register(&'static self) {
        if self.provider.load(Ordering::Relaxed) == 0 {
            self.register_slow();
        }
    }

    #[cold]
    fn register_slow(&'static self) {
        let id = providers().provider_id(self.name);
        self.provider.store(id, Ordering::Relaxed);
    }

    /// The interned type for a name given at run time.
    pub(crate) fn intern(name: &str) -> &'static ResourceType {
        thread_local! {
            // Most programs create many resources of a few types: skip the lock on a repeat.
            static LAST: Cell<Option<&'static ResourceType>> = const { Cell::new(None) };
        }
        if let Ok(Some(last)) = LAST.try_with(Cell::get)
            && last.name == name
        {
            return last;
        }
        let ty = providers().intern(name);
        let _ = LAST.try_with(|last| last.set(Some(ty)));
        ty
    }
}

impl fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ResourceType").field(&self.name).finish()
    }
}

#[derive(Default)]
struct Providers {
    ids: BTreeMap<&'static str, u32>,
    interned: BTreeMap<&'static str, &'static ResourceType>,
}

static PROVIDERS: Mutex<Providers> = Mutex::new(Providers {
    ids: BTreeMap::new(),
    interned: BTreeMap::new(),
});

fn providers() -> std::sync::MutexGuard<'static, Providers> {
    PROVIDERS.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Providers {
    fn provider_id(&mut self, name: &'static str) -> u32 {
        let next = self.ids.len() as u32 + 1;
        *self.ids.entry(name).or_insert(next)
    }

    fn intern(&mut self, name: &str) -> &'static ResourceType {
        if let Some(ty) = self.interned.get(name) {
            return ty;
        }
        let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
        let ty: &'static ResourceType = Box::leak(Box::new(ResourceType::new(name)));
        ty.provider.store(self.provider_id(name), Ordering::Relaxed);
        self.interned.insert(name, ty);
        ty
    }
}

/// Every resource type created so far with its stable numeric id, Node's
/// `async_hooks.asyncWrapProviders`.
///
/// ```
/// use async_hooks::{AsyncResource, async_wrap_providers};
///
/// let _ = AsyncResource::new("MyProvider");
/// let providers = async_wrap_providers();
/// assert!(providers["MyProvider"] > 0);
/// ```
pub fn async_wrap_providers() -> BTreeMap<String, u32> {
    providers()
        .ids
        .iter()
        .map(|(name, id)| (name.to_string(), *id))
        .collect()
}

/// A handle to an async resource: cheap to clone, equal by identity.
///
/// It is what `init` hooks receive and what [`execution_async_resource`](crate::execution_async_resource)
/// returns while the resource runs, and it carries typed slots so that state can ride on a
/// resource (Node's `executionAsyncResource()[sym] = value`).
///
/// ```
/// use async_hooks::{AsyncResource, execution_async_resource};
///
/// struct User(&'static str);
///
/// let request = AsyncResource::new("Request");
/// request.resource().insert(User("ada"));
/// request.run_in_async_scope(|| {
///     let user = execution_async_resource().get::<User>().unwrap();
///     assert_eq!(user.0, "ada");
/// });
/// ```
pub struct Resource {
    repr: Repr,
}

#[cfg(test)]
impl Resource {
    /// A probe that says whether the shared handle has been released (by every holder).
    pub(crate) fn released_probe(&self) -> impl Fn() -> bool + use<> {
        let weak = match &self.repr {
            Repr::Shared(inner) => Arc::downgrade(inner),
            Repr::Pending(_) => unreachable!("only `init` callbacks see a pending resource"),
        };
        move || weak.upgrade().is_none()
    }
}

enum Repr {
    Shared(Arc<ResourceInner>),
    /// The resource being created, behind the `&Resource` that `init` callbacks get (see
    /// [`PendingInit`]): its shared handle is made only if a callback asks for one.
    Pending(NonNull<PendingInit>),
}

/// A resource during its `init` callbacks, on `emit_init`'s stack. Most `init` hooks read only
/// the ids and the type; a callback that keeps the resource (`clone`), compares it or uses its
/// slots makes the shared handle then, once, and `emit_init` keeps that handle for the resource.
struct PendingInit {
    async_id: AsyncId,
    trigger_async_id: AsyncId,
    ty: &'static ResourceType,
    /// The handle once made (from `Arc::into_raw`, owning one strong reference that passes to
    /// the identity word), else null. Not a `OnceLock`: moving its 16 bytes out at the end cost
    /// a store-forwarding stall on every resource.
    handle: AtomicPtr<ResourceInner>,
}

impl PendingInit {
    /// The handle, made now if no callback made it yet (a callback may share the resource with
    /// other threads, so it is published with a compare-and-swap): the pointer from
    /// `Arc::into_raw`, valid for as long as `self` is.
    fn handle(&self) -> *const ResourceInner {
        let mut handle = self.handle.load(Ordering::Acquire);
        if handle.is_null() {
            let ours = Arc::into_raw(Arc::new(ResourceInner::new(
                self.async_id,
                self.trigger_async_id,
                self.ty,
            )))
            .cast_mut();
            handle = match self.handle.compare_exchange(
                ptr::null_mut(),
                ours,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => ours,
                Err(theirs) => {
                    // SAFETY: `ours` was never published; this gives back its only reference.
                    #[allow(unsafe_code)]
                    drop(unsafe { Arc::from_raw(ours) });
                    theirs
                }
            };
        }
        handle
    }
}

// SAFETY: a shared handle is an `Arc` of `Send + Sync` data (ids, a static, a `Mutex` of
// `Send + Sync` values). A pending one exists only as the local in `emit_init` that its `init`
// callbacks borrow: no owned `Resource` ever holds `Repr::Pending` beyond that call (`clone`
// makes a shared handle), and `PendingInit` is `Sync` (its handle is published atomically).
#[allow(unsafe_code)]
unsafe impl Send for Resource {}
// SAFETY: see `Send`.
#[allow(unsafe_code)]
unsafe impl Sync for Resource {}

type Slot = (TypeId, Arc<dyn Any + Send + Sync>);

struct ResourceInner {
    async_id: AsyncId,
    trigger_async_id: AsyncId,
    ty: &'static ResourceType,
    slots: Mutex<Vec<Slot>>,
}

impl ResourceInner {
    fn new(async_id: AsyncId, trigger_async_id: AsyncId, ty: &'static ResourceType) -> Self {
        ResourceInner {
            async_id,
            trigger_async_id,
            ty,
            slots: Mutex::new(Vec::new()),
        }
    }
}

impl Resource {
    pub(crate) fn new(
        async_id: AsyncId,
        trigger_async_id: AsyncId,
        ty: &'static ResourceType,
    ) -> Resource {
        Resource {
            repr: Repr::Shared(Arc::new(ResourceInner::new(async_id, trigger_async_id, ty))),
        }
    }

    /// The shared handle's data, made now for a resource still in its `init` callbacks.
    fn shared(&self) -> &ResourceInner {
        match &self.repr {
            Repr::Shared(inner) => inner,
            Repr::Pending(pending) => {
                // SAFETY: a pending resource is only reachable while `emit_init` runs its
                // callbacks, and its `PendingInit` lives on that call's stack until they return.
                #[allow(unsafe_code)]
                let pending = unsafe { pending.as_ref() };
                // SAFETY: a published handle holds a strong reference until the identity word
                // that takes it over is dropped, after this `PendingInit` is gone.
                #[allow(unsafe_code)]
                unsafe {
                    &*pending.handle()
                }
            }
        }
    }

    /// The ids and type, without making a handle.
    fn parts(&self) -> (AsyncId, AsyncId, &'static ResourceType) {
        match &self.repr {
            Repr::Shared(inner) => (inner.async_id, inner.trigger_async_id, inner.ty),
            Repr::Pending(pending) => {
                // SAFETY: as in `shared`.
                #[allow(unsafe_code)]
                let pending = unsafe { pending.as_ref() };
                (pending.async_id, pending.trigger_async_id, pending.ty)
            }
        }
    }

    /// The root resource: the same handle on every thread.
    pub(crate) fn root() -> Resource {
        static ROOT: LazyLock<Resource> =
            LazyLock::new(|| Resource::new(AsyncId::ROOT, AsyncId::NONE, &ROOT_TYPE));
        ROOT.clone()
    }

    /// The resource's async id.
    ///
    /// ```
    /// # use async_hooks::AsyncResource;
    /// let r = AsyncResource::new("Job");
    /// assert_eq!(r.resource().async_id(), r.async_id());
    /// ```
    pub fn async_id(&self) -> AsyncId {
        self.parts().0
    }

    /// The id of the execution that created the resource.
    ///
    /// ```
    /// # use async_hooks::{AsyncId, AsyncResource};
    /// assert_eq!(AsyncResource::new("Job").resource().trigger_async_id(), AsyncId::ROOT);
    /// ```
    pub fn trigger_async_id(&self) -> AsyncId {
        self.parts().1
    }

    /// The resource's type name, e.g. `"DBQuery"`; `"ROOT"` for the root resource.
    ///
    /// ```
    /// # use async_hooks::{AsyncResource, execution_async_resource};
    /// assert_eq!(AsyncResource::new("DBQuery").resource().type_name(), "DBQuery");
    /// assert_eq!(execution_async_resource().type_name(), "ROOT");
    /// ```
    pub fn type_name(&self) -> &'static str {
        self.parts().2.name
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.shared()
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `value` in the slot for its type, replacing what was there.
    ///
    /// ```
    /// # use async_hooks::AsyncResource;
    /// let r = AsyncResource::new("Job").resource();
    /// r.insert(1u32);
    /// r.insert(2u32);
    /// assert_eq!(*r.get::<u32>().unwrap(), 2);
    /// ```
    pub fn insert<T: Send + Sync + 'static>(&self, value: T) {
        let value: Arc<dyn Any + Send + Sync> = Arc::new(value);
        let old = {
            let mut slots = self.slots();
            match slots.iter_mut().find(|(ty, _)| *ty == TypeId::of::<T>()) {
                Some(slot) => Some(std::mem::replace(&mut slot.1, value)),
                None => {
                    slots.push((TypeId::of::<T>(), value));
                    None
                }
            }
        };
        // The old value's Drop runs outside the lock: it may touch this resource.
        drop(old);
    }

    /// The value in the slot for `T`, if any.
    ///
    /// ```
    /// # use async_hooks::AsyncResource;
    /// let r = AsyncResource::new("Job").resource();
    /// assert!(r.get::<String>().is_none());
    /// r.insert(String::from("state"));
    /// assert_eq!(r.get::<String>().as_deref().map(String::as_str), Some("state"));
    /// ```
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        let value = self
            .slots()
            .iter()
            .find(|(ty, _)| *ty == TypeId::of::<T>())
            .map(|(_, value)| value.clone())?;
        value.downcast().ok()
    }

    /// Removes and returns the value in the slot for `T`.
    ///
    /// ```
    /// # use async_hooks::AsyncResource;
    /// let r = AsyncResource::new("Job").resource();
    /// r.insert(5u8);
    /// assert_eq!(r.remove::<u8>().as_deref(), Some(&5));
    /// assert!(r.get::<u8>().is_none());
    /// ```
    pub fn remove<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        let value = {
            let mut slots = self.slots();
            let index = slots.iter().position(|(ty, _)| *ty == TypeId::of::<T>())?;
            slots.swap_remove(index).1
        };
        value.downcast().ok()
    }
}

/// A clone is a shared handle, also of a resource still in its `init` callbacks (whose handle is
/// made then, and kept by the resource).
impl Clone for Resource {
    fn clone(&self) -> Resource {
        let inner = match &self.repr {
            Repr::Shared(inner) => inner.clone(),
            Repr::Pending(pending) => {
                // SAFETY: as in `shared`.
                #[allow(unsafe_code)]
                let inner = unsafe { pending.as_ref() }.handle();
                // SAFETY: the handle's published reference outlives this call; the new `Arc`
                // takes one of its own.
                #[allow(unsafe_code)]
                unsafe {
                    Arc::increment_strong_count(inner);
                    Arc::from_raw(inner)
                }
            }
        };
        Resource {
            repr: Repr::Shared(inner),
        }
    }
}

impl PartialEq for Resource {
    fn eq(&self, other: &Resource) -> bool {
        ptr::eq(self.shared(), other.shared())
    }
}

impl Eq for Resource {}

impl std::hash::Hash for Resource {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(self.shared(), state)
    }
}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resource")
            .field("type", &self.type_name())
            .field("async_id", &self.async_id())
            .field("trigger_async_id", &self.trigger_async_id())
            .finish()
    }
}

/// Options for [`AsyncResource::with_options`], Node's `new AsyncResource(type, options)`.
///
/// ```
/// use async_hooks::{AsyncId, AsyncResource, AsyncResourceOptions};
///
/// let parent = AsyncResource::new("Parent");
/// let child = AsyncResource::with_options(
///     "Child",
///     AsyncResourceOptions { trigger_async_id: Some(parent.async_id()), ..Default::default() },
/// )
/// .unwrap();
/// assert_eq!(child.trigger_async_id(), parent.async_id());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AsyncResourceOptions {
    /// The id of the execution that caused this resource; `None` means the current
    /// `execution_async_id()`.
    pub trigger_async_id: Option<AsyncId>,
    /// When `true`, dropping the resource does not emit `destroy`: call
    /// [`AsyncResource::emit_destroy`] yourself.
    pub require_manual_destroy: bool,
}

/// An async resource you create and drive yourself: Node's `AsyncResource`, the embedder API for
/// worker pools, connection pools and event emitters.
///
/// `init` fires when it is created (in the creator's context), `before`/`after` around every
/// [`run_in_async_scope`](AsyncResource::run_in_async_scope), `destroy` on
/// [`emit_destroy`](AsyncResource::emit_destroy) or when it is dropped.
///
/// ```
/// use async_hooks::{AsyncLocalStorage, AsyncResource};
///
/// static REQUEST: AsyncLocalStorage<u32> = AsyncLocalStorage::new();
///
/// // Created inside request 7: remembers its ids and request 7's storage.
/// let task = REQUEST.run(7, || AsyncResource::new("WorkerTask"));
/// // Run later, from anywhere:
/// let seen = task.run_in_async_scope(|| *REQUEST.get_store().unwrap());
/// assert_eq!(seen, 7);
/// ```
pub struct AsyncResource {
    /// Its handle is made on first use, like a future's, and published atomically: the
    /// resource is shared (`&self`, `Sync`), and every thread must see the same handle.
    identity: Identity,
    /// The storage frame captured at creation; each scope starts from it.
    frame: CapturedFrame,
    /// [`DESTROYED`] and [`MANUAL_DESTROY`], in one word-sized field: a resource is often moved
    /// right after it is made (into an `Arc`, a `Result`, a struct), and a copy with word-sized
    /// loads of fields written a byte at a time stalls the CPU's store forwarding.
    flags: AtomicUsize,
}

/// `destroy` was emitted by [`AsyncResource::emit_destroy`].
const DESTROYED: usize = 1;
/// The resource was created with `require_manual_destroy`: dropping it emits nothing.
const MANUAL_DESTROY: usize = 2;

impl AsyncResource {
    /// Creates a resource of type `type_name`, triggered by the current execution.
    ///
    /// # Panics
    ///
    /// If `type_name` is empty while an `init` hook is enabled (Node throws `ERR_ASYNC_TYPE`);
    /// use [`AsyncResource::with_options`] to get that as a `Result`.
    ///
    /// ```
    /// # use async_hooks::{AsyncId, AsyncResource};
    /// let r = AsyncResource::new("Job");
    /// assert_eq!(r.trigger_async_id(), AsyncId::ROOT);
    /// ```
    pub fn new(type_name: &str) -> AsyncResource {
        // Not through `with_options`: its `Result` came back in memory and was copied into ours
        // with wider loads than the stores that wrote it (the two flags), a store-forwarding
        // stall on every resource. Only the type comes back through a `Result` here.
        let ty = match checked_type(type_name) {
            Ok(ty) => ty,
            Err(err) => panic!("{err}"),
        };
        with_state(|state| AsyncResource::create(state, ty, None, false))
    }

    /// Creates a resource with options (explicit trigger id, manual destroy).
    ///
    /// Errors: `ERR_ASYNC_TYPE` if `type_name` is empty while an `init` hook is enabled;
    /// `ERR_INVALID_ASYNC_ID` if the trigger id was never allocated.
    ///
    /// ```
    /// use async_hooks::{AsyncResource, AsyncResourceOptions, Hooks, create_hook};
    ///
    /// let hook = create_hook(Hooks::new().init(|_, _, _, _| {})).enable();
    /// let err = AsyncResource::with_options("", AsyncResourceOptions::default()).unwrap_err();
    /// assert_eq!(err.code(), "ERR_ASYNC_TYPE");
    /// hook.disable();
    /// ```
    pub fn with_options(
        type_name: &str,
        options: AsyncResourceOptions,
    ) -> Result<AsyncResource, Error> {
        if let Some(trigger) = options.trigger_async_id
            && !id::is_allocated(trigger)
        {
            return Err(Error::new(
                ErrorKind::InvalidAsyncId,
                format!(
                    "trigger_async_id {trigger} was never allocated; pass an id taken from \
                     execution_async_id(), a Resource or an AsyncResource, or None for the current execution"
                ),
            ));
        }
        let ty = checked_type(type_name)?;
        Ok(with_state(|state| {
            AsyncResource::create(
                state,
                ty,
                options.trigger_async_id,
                options.require_manual_destroy,
            )
        }))
    }

    /// A resource of a static type, for `bind!` (which declares the type at the call site).
    #[doc(hidden)]
    pub fn __with_type(ty: &'static ResourceType) -> AsyncResource {
        with_state(|state| AsyncResource::create(state, ty, None, false))
    }

    fn create(
        state: &ThreadState,
        ty: &'static ResourceType,
        trigger: Option<AsyncId>,
        manual_destroy: bool,
    ) -> AsyncResource {
        let frame = state.capture_resource_frame();
        let identity = Identity::create(state, ty, trigger);
        AsyncResource {
            identity,
            frame,
            flags: AtomicUsize::new(if manual_destroy { MANUAL_DESTROY } else { 0 }),
        }
    }

    /// Calls `f` in this resource's execution context: its ids, and the storage captured when
    /// it was created. `before` fires first and `after` last, and the caller's context is
    /// restored afterwards — also when `f` panics (then `after` fires and the panic continues).
    ///
    /// ```
    /// use async_hooks::{AsyncResource, execution_async_id, trigger_async_id};
    ///
    /// let r = AsyncResource::new("Job");
    /// let ids = r.run_in_async_scope(|| (execution_async_id(), trigger_async_id()));
    /// assert_eq!(ids, (r.async_id(), r.trigger_async_id()));
    /// ```
    pub fn run_in_async_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        with_state(|state| {
            // Each scope starts from the captured frame, used in place (no clone): what the
            // code inside enters ends with the scope.
            execution::scope(state, &self.identity, &self.frame, f)
        })
    }

    /// Node's `asyncResource.bind(fn)`: `f` as a closure that runs each call in this resource's
    /// scope, as [`run_in_async_scope`](AsyncResource::run_in_async_scope) does. The closure
    /// owns the resource, so `destroy` fires when it is dropped (unless emitted before). For
    /// one argument see [`bind1`](AsyncResource::bind1); for any parameter list, or a new
    /// resource per closure, use `bind!`.
    ///
    /// ```
    /// use async_hooks::{AsyncLocalStorage, AsyncResource, execution_async_id};
    ///
    /// static USER: AsyncLocalStorage<&str> = AsyncLocalStorage::new();
    /// let resource = USER.run("ada", || AsyncResource::new("Callback"));
    /// let id = resource.async_id();
    /// let mut callback = resource.bind(move || (execution_async_id() == id, USER.get_store()));
    /// let (in_scope, user) = std::thread::spawn(move || callback()).join().unwrap();
    /// assert!(in_scope);
    /// assert_eq!(user.as_deref(), Some(&"ada"));
    /// ```
    pub fn bind<R>(self, mut f: impl FnMut() -> R) -> impl FnMut() -> R {
        move || self.run_in_async_scope(&mut f)
    }

    /// [`bind`](AsyncResource::bind) for a closure of one argument (what `map`, `for_each` and
    /// most callbacks take).
    ///
    /// ```
    /// use async_hooks::{AsyncLocalStorage, AsyncResource};
    ///
    /// static FACTOR: AsyncLocalStorage<u32> = AsyncLocalStorage::new();
    /// let resource = FACTOR.run(10, || AsyncResource::new("Scale"));
    /// let scaled: Vec<u32> = (1..=3)
    ///     .map(resource.bind1(|x| x * *FACTOR.get_store().unwrap()))
    ///     .collect();
    /// assert_eq!(scaled, [10, 20, 30]);
    /// ```
    pub fn bind1<A, R>(self, mut f: impl FnMut(A) -> R) -> impl FnMut(A) -> R {
        move |argument| self.run_in_async_scope(|| f(argument))
    }

    /// Emits `destroy` now (Node's `emitDestroy`). Dropping the resource afterwards emits nothing.
    ///
    /// Errors with `ERR_INVALID_STATE` if `destroy` was already emitted.
    ///
    /// ```
    /// # use async_hooks::AsyncResource;
    /// let r = AsyncResource::new("Job");
    /// r.emit_destroy().unwrap();
    /// assert_eq!(r.emit_destroy().unwrap_err().code(), "ERR_INVALID_STATE");
    /// ```
    pub fn emit_destroy(&self) -> Result<&AsyncResource, Error> {
        if self.flags.fetch_or(DESTROYED, Ordering::AcqRel) & DESTROYED != 0 {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "emit_destroy() was already called for async id {}; call it at most once \
                     (dropping the resource afterwards emits nothing more)",
                    self.identity.async_id
                ),
            ));
        }
        hooks::emit_destroy(self.identity.async_id);
        Ok(self)
    }

    /// This resource's async id.
    ///
    /// ```
    /// # use async_hooks::{AsyncId, AsyncResource};
    /// assert!(AsyncResource::new("Job").async_id() > AsyncId::ROOT);
    /// ```
    pub fn async_id(&self) -> AsyncId {
        self.identity.async_id
    }

    /// The id of the execution that created this resource (or the explicit trigger).
    ///
    /// ```
    /// # use async_hooks::{AsyncId, AsyncResource};
    /// assert_eq!(AsyncResource::new("Job").trigger_async_id(), AsyncId::ROOT);
    /// ```
    pub fn trigger_async_id(&self) -> AsyncId {
        self.identity.trigger_id
    }

    /// The [`Resource`] handle: the one `init` hooks saw and `execution_async_resource()`
    /// returns inside [`run_in_async_scope`](AsyncResource::run_in_async_scope).
    ///
    /// ```
    /// # use async_hooks::{AsyncResource, execution_async_resource};
    /// let r = AsyncResource::new("Job");
    /// assert_eq!(r.run_in_async_scope(execution_async_resource), r.resource());
    /// ```
    pub fn resource(&self) -> Resource {
        self.identity.handle()
    }

    /// The type name given at creation.
    ///
    /// ```
    /// # use async_hooks::AsyncResource;
    /// assert_eq!(AsyncResource::new("Job").type_name(), "Job");
    /// ```
    pub fn type_name(&self) -> &'static str {
        self.identity.ty().name
    }
}

impl Drop for AsyncResource {
    fn drop(&mut self) {
        // Neither destroyed by hand already nor left to be.
        if *self.flags.get_mut() == 0 {
            hooks::emit_destroy(self.identity.async_id);
        }
    }
}

impl fmt::Debug for AsyncResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResource")
            .field("type", &self.type_name())
            .field("async_id", &self.async_id())
            .field("trigger_async_id", &self.trigger_async_id())
            .finish()
    }
}
