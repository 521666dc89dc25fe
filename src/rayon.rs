//! rayon with the context bound: closures run on pool threads in the caller's context.
//!
//! rayon runs closures on its worker threads (and `scope` runs its closure there too when
//! called from outside the pool), where a storage reads whatever the worker happens to hold:
//! nothing, or the context of a job it is nested in. The helpers here make every closure an
//! async resource of type `Rayon`, created at the call in the caller's context (trigger = the
//! caller's [`execution_async_id`](crate::execution_async_id)) and destroyed once it has run.
//! A worker thread enters the context only while a bound closure runs: after it returns, the
//! worker is back to its own top level.

use std::fmt;

use ::rayon::iter::ParallelIterator;
use ::rayon::iter::plumbing::{Consumer, Folder, Reducer, UnindexedConsumer};
use async_hooks_core::__private::{ResourceType, bound_resource};
use async_hooks_core::AsyncResource;

static RAYON: ResourceType = ResourceType::new("Rayon");

/// [`rayon::spawn`], with the closure running in the caller's context.
///
/// ```
/// use async_hooks::AsyncLocalStorage;
/// use std::sync::mpsc;
///
/// static USER: AsyncLocalStorage<&str> = AsyncLocalStorage::new();
///
/// let (tx, rx) = mpsc::channel();
/// USER.run("ada", || {
///     async_hooks::rayon::spawn(move || tx.send(USER.get_store().map(|u| *u)).unwrap())
/// });
/// assert_eq!(rx.recv().unwrap(), Some("ada"));
/// ```
pub fn spawn<F>(f: F)
where
    F: FnOnce() + Send + 'static,
{
    let resource = bound_resource(&RAYON);
    ::rayon::spawn(move || resource.run_in_async_scope(f));
}

/// [`rayon::join`], with both closures running in the caller's context (a
/// resource each).
///
/// ```
/// use async_hooks::AsyncLocalStorage;
///
/// static USER: AsyncLocalStorage<&str> = AsyncLocalStorage::new();
///
/// let (a, b) = USER.run("ada", || {
///     async_hooks::rayon::join(|| USER.get_store().map(|u| *u), || USER.get_store().map(|u| *u))
/// });
/// assert_eq!((a, b), (Some("ada"), Some("ada")));
/// ```
pub fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    let (ra, rb) = (bound_resource(&RAYON), bound_resource(&RAYON));
    ::rayon::join(
        move || ra.run_in_async_scope(a),
        move || rb.run_in_async_scope(b),
    )
}

/// [`rayon::scope`], with the scope's closure and every closure spawned on the
/// [`Scope`] it gets running in the caller's context (each a resource of its own).
///
/// ```
/// use async_hooks::AsyncLocalStorage;
/// use std::sync::Mutex;
///
/// static USER: AsyncLocalStorage<&str> = AsyncLocalStorage::new();
///
/// let seen = Mutex::new(Vec::new());
/// USER.run("ada", || {
///     async_hooks::rayon::scope(|s| {
///         for _ in 0..4 {
///             s.spawn(|_| seen.lock().unwrap().push(USER.get_store().map(|u| *u)));
///         }
///     })
/// });
/// assert_eq!(*seen.lock().unwrap(), [Some("ada"); 4]);
/// ```
pub fn scope<'scope, OP, R>(op: OP) -> R
where
    OP: FnOnce(&Scope<'_, 'scope>) -> R + Send,
    R: Send,
{
    let resource = bound_resource(&RAYON);
    ::rayon::scope(move |inner| resource.run_in_async_scope(|| op(&Scope { inner })))
}

/// A [`rayon::Scope`] whose [`spawn`](Scope::spawn) binds the context; what
/// [`scope`] passes to its closure.
///
/// ```
/// let total = std::sync::atomic::AtomicUsize::new(0);
/// async_hooks::rayon::scope(|s: &async_hooks::rayon::Scope<'_, '_>| {
///     s.spawn(|_| {
///         total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///     });
/// });
/// assert_eq!(total.into_inner(), 1);
/// ```
#[derive(Clone, Copy)]
pub struct Scope<'a, 'scope> {
    inner: &'a ::rayon::Scope<'scope>,
}

impl<'scope> Scope<'_, 'scope> {
    /// [`rayon::Scope::spawn`](::rayon::Scope::spawn), with `body` running in the context
    /// current here, as a resource of type `Rayon`. `body` gets the scope back, to spawn more.
    ///
    /// ```
    /// use async_hooks::AsyncLocalStorage;
    /// use std::sync::Mutex;
    ///
    /// static DEPTH: AsyncLocalStorage<u32> = AsyncLocalStorage::new();
    ///
    /// let seen = Mutex::new(Vec::new());
    /// async_hooks::rayon::scope(|s| {
    ///     DEPTH.run(1, || {
    ///         s.spawn(|s| {
    ///             seen.lock().unwrap().push(*DEPTH.get_store().unwrap());
    ///             DEPTH.run(2, || s.spawn(|_| seen.lock().unwrap().push(*DEPTH.get_store().unwrap())));
    ///         })
    ///     });
    /// });
    /// assert_eq!(*seen.lock().unwrap(), [1, 2]);
    /// ```
    pub fn spawn<BODY>(&self, body: BODY)
    where
        BODY: FnOnce(&Scope<'_, 'scope>) + Send + 'scope,
    {
        let resource = bound_resource(&RAYON);
        self.inner
            .spawn(move |inner| resource.run_in_async_scope(|| body(&Scope { inner })));
    }

    /// The rayon scope underneath, to spawn a closure that does *not* bind the context.
    ///
    /// ```
    /// async_hooks::rayon::scope(|s| s.as_rayon().spawn(|_| {}));
    /// ```
    pub fn as_rayon(&self) -> &::rayon::Scope<'scope> {
        self.inner
    }
}

impl fmt::Debug for Scope<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope").finish_non_exhaustive()
    }
}

/// Binds a parallel iterator to the caller's context.
///
/// `iter.bind_context()` creates one resource of type `Rayon` at the call. Every closure of the
/// adapters chained *after* it (`map`, `filter`, `for_each`, `fold`, `reduce`, …), on whichever
/// worker runs it, runs inside that resource's scope: one `before`/`after` pair per chunk a
/// worker folds (not per item), one `destroy` when the iteration ends. Several workers are
/// inside the resource at once, so its `before`/`after` pairs nest per thread, not in one
/// global order. Closures of adapters
/// chained *before* it are not bound, so call it right after `par_iter()`/`into_par_iter()`.
/// The result is an unindexed [`ParallelIterator`]: chain indexed adapters (`enumerate`, `zip`)
/// before it.
///
/// ```
/// use async_hooks::AsyncLocalStorage;
/// use async_hooks::rayon::ParallelIteratorExt;
/// use rayon::prelude::*;
///
/// static FACTOR: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
///
/// let scaled: Vec<u64> = FACTOR.run(10, || {
///     (1..=4u64).into_par_iter().bind_context().map(|x| x * *FACTOR.get_store().unwrap()).collect()
/// });
/// assert_eq!(scaled, [10, 20, 30, 40]);
/// ```
pub trait ParallelIteratorExt: ParallelIterator {
    /// Binds the closures chained after this call to the current context (see the trait).
    ///
    /// ```
    /// use async_hooks::AsyncLocalStorage;
    /// use async_hooks::rayon::ParallelIteratorExt;
    /// use rayon::prelude::*;
    ///
    /// static USER: AsyncLocalStorage<&str> = AsyncLocalStorage::new();
    ///
    /// let iter = USER.run("ada", || (0..100).into_par_iter().bind_context());
    /// assert!(iter.all(|_| USER.get_store().is_some_and(|u| *u == "ada")));
    /// ```
    fn bind_context(self) -> ContextBound<Self> {
        ContextBound {
            base: self,
            resource: bound_resource(&RAYON),
        }
    }
}

impl<I: ParallelIterator> ParallelIteratorExt for I {}

/// The parallel iterator [`ParallelIteratorExt::bind_context`] returns.
///
/// ```
/// use async_hooks::rayon::{ContextBound, ParallelIteratorExt};
/// use rayon::prelude::*;
///
/// let iter: ContextBound<rayon::range::Iter<u32>> = (0..3u32).into_par_iter().bind_context();
/// assert_eq!(iter.sum::<u32>(), 3);
/// ```
#[must_use = "iterator adapters are lazy and do nothing unless consumed"]
pub struct ContextBound<I> {
    base: I,
    resource: AsyncResource,
}

impl<I> fmt::Debug for ContextBound<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextBound")
            .field("async_id", &self.resource.async_id())
            .finish_non_exhaustive()
    }
}

impl<I: ParallelIterator> ParallelIterator for ContextBound<I> {
    type Item = I::Item;

    fn drive_unindexed<C>(self, consumer: C) -> C::Result
    where
        C: UnindexedConsumer<Self::Item>,
    {
        let ContextBound { base, resource } = self;
        // Borrowed by every split of the consumer; destroyed when the whole iteration is done.
        base.drive_unindexed(Bound {
            inner: consumer,
            resource: &resource,
        })
    }

    fn opt_len(&self) -> Option<usize> {
        self.base.opt_len()
    }
}

/// A consumer, folder or reducer whose every call that may run user code runs in the resource's
/// scope.
struct Bound<'r, C> {
    inner: C,
    resource: &'r AsyncResource,
}

impl<'r, C> Bound<'r, C> {
    fn with<D>(&self, inner: D) -> Bound<'r, D> {
        Bound {
            inner,
            resource: self.resource,
        }
    }
}

impl<'r, T, C: Consumer<T>> Consumer<T> for Bound<'r, C> {
    type Folder = Bound<'r, C::Folder>;
    type Reducer = Bound<'r, C::Reducer>;
    type Result = C::Result;

    fn split_at(self, index: usize) -> (Self, Self, Self::Reducer) {
        let Bound { inner, resource } = self;
        let (left, right, reducer) = inner.split_at(index);
        let bound = |inner| Bound { inner, resource };
        (
            bound(left),
            bound(right),
            Bound {
                inner: reducer,
                resource,
            },
        )
    }

    fn into_folder(self) -> Self::Folder {
        // `fold`'s and `map_init`'s identity closures run here.
        let Bound { inner, resource } = self;
        let inner = resource.run_in_async_scope(|| inner.into_folder());
        Bound { inner, resource }
    }

    fn full(&self) -> bool {
        self.inner.full()
    }
}

impl<T, C: UnindexedConsumer<T>> UnindexedConsumer<T> for Bound<'_, C> {
    fn split_off_left(&self) -> Self {
        self.with(self.inner.split_off_left())
    }

    fn to_reducer(&self) -> Self::Reducer {
        self.with(self.inner.to_reducer())
    }
}

impl<T, F: Folder<T>> Folder<T> for Bound<'_, F> {
    type Result = F::Result;

    fn consume(self, item: T) -> Self {
        let Bound { inner, resource } = self;
        let inner = resource.run_in_async_scope(|| inner.consume(item));
        Bound { inner, resource }
    }

    fn consume_iter<I>(self, iter: I) -> Self
    where
        I: IntoIterator<Item = T>,
    {
        // A whole chunk in one scope.
        let Bound { inner, resource } = self;
        let inner = resource.run_in_async_scope(|| inner.consume_iter(iter));
        Bound { inner, resource }
    }

    fn complete(self) -> F::Result {
        self.resource.run_in_async_scope(|| self.inner.complete())
    }

    fn full(&self) -> bool {
        self.inner.full()
    }
}

impl<R, Red: Reducer<R>> Reducer<R> for Bound<'_, Red> {
    fn reduce(self, left: R, right: R) -> R {
        self.resource
            .run_in_async_scope(|| self.inner.reduce(left, right))
    }
}
