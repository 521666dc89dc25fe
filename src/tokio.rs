//! tokio's spawn functions with the context bound: the task runs in the spawner's context.
//!
//! A future passed to a raw `tokio::spawn` is polled by the runtime, outside every `run` of the
//! code that spawned it, so its storages read `None` (unless it was bound by hand). The functions
//! here have tokio's signatures and return tokio's [`JoinHandle`]; each makes the task an async
//! resource created at the call, in the spawner's context (trigger = the spawner's
//! [`execution_async_id`](crate::execution_async_id)), of type `TokioTask`, `TokioBlocking` or
//! `TokioLocalTask`. Every poll (or the blocking call) runs in that context between `before`
//! and `after`; `destroy` fires once, when the task completes, is aborted or its runtime drops it.
//! Each costs what `tokio::spawn(bind!(async move { .. }))` by hand costs.
//!
//! They work on current-thread and multi-thread runtimes, and across
//! [`block_in_place`](https://docs.rs/tokio/1/tokio/task/fn.block_in_place.html) (which keeps the calling task's context).
//! [`spawn_local`] needs a [`LocalSet`](::tokio::task::LocalSet), as tokio's does.

use std::future::Future;

use ::tokio::task::{AbortHandle, JoinHandle, JoinSet};
use async_hooks_core::__private::{Instrumented, ResourceType, bound_resource};

static TOKIO_TASK: ResourceType = ResourceType::new("TokioTask");
static TOKIO_BLOCKING: ResourceType = ResourceType::new("TokioBlocking");
static TOKIO_LOCAL_TASK: ResourceType = ResourceType::new("TokioLocalTask");

/// [`tokio::spawn`], with the task running in the spawner's context as a
/// resource of type `TokioTask`.
///
/// # Panics
///
/// Outside a tokio runtime, as `tokio::spawn` does.
///
/// ```
/// use async_hooks::AsyncLocalStorage;
///
/// static REQUEST_ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
///
/// # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
/// let task = REQUEST_ID.run(7, || {
///     async_hooks::tokio::spawn(async { *REQUEST_ID.get_store().unwrap() })
/// });
/// assert_eq!(task.await.unwrap(), 7);
/// # });
/// ```
#[track_caller]
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    ::tokio::spawn(Instrumented::new(&TOKIO_TASK, future))
}

/// [`tokio::task::spawn_blocking`], with the closure running
/// in the caller's context as a resource of type `TokioBlocking`.
///
/// # Panics
///
/// Outside a tokio runtime, as tokio's does.
///
/// ```
/// use async_hooks::AsyncLocalStorage;
///
/// static REQUEST_ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let job = REQUEST_ID.run(7, || {
///     async_hooks::tokio::spawn_blocking(|| *REQUEST_ID.get_store().unwrap())
/// });
/// assert_eq!(job.await.unwrap(), 7);
/// # });
/// ```
#[track_caller]
pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let resource = bound_resource(&TOKIO_BLOCKING);
    ::tokio::task::spawn_blocking(move || resource.run_in_async_scope(f))
}

/// [`tokio::task::spawn_local`], with the task running in the
/// spawner's context as a resource of type `TokioLocalTask`.
///
/// # Panics
///
/// Outside a [`LocalSet`](::tokio::task::LocalSet), as tokio's does.
///
/// ```
/// use async_hooks::AsyncLocalStorage;
/// use std::rc::Rc;
///
/// static REQUEST_ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
///
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let local = tokio::task::LocalSet::new();
/// let seen = local.block_on(&rt, async {
///     let task = REQUEST_ID.run(7, || {
///         let not_send = Rc::new(());
///         async_hooks::tokio::spawn_local(async move {
///             let _keep = not_send;
///             *REQUEST_ID.get_store().unwrap()
///         })
///     });
///     task.await.unwrap()
/// });
/// assert_eq!(seen, 7);
/// ```
#[track_caller]
pub fn spawn_local<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    ::tokio::task::spawn_local(Instrumented::new(&TOKIO_LOCAL_TASK, future))
}

/// [`JoinSet`] spawns that bind the context, as [`spawn`] and [`spawn_blocking`] do.
///
/// ```
/// use async_hooks::AsyncLocalStorage;
/// use async_hooks::tokio::JoinSetExt;
/// use tokio::task::JoinSet;
///
/// static REQUEST_ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
///
/// # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
/// let mut set = JoinSet::new();
/// for id in 0..3 {
///     REQUEST_ID.run(id, || set.spawn_bound(async { *REQUEST_ID.get_store().unwrap() }));
/// }
/// let mut seen = set.join_all().await;
/// seen.sort();
/// assert_eq!(seen, [0, 1, 2]);
/// # });
/// ```
pub trait JoinSetExt<T>: sealed::Sealed {
    /// [`JoinSet::spawn`], with the task running in the caller's context as a resource of type
    /// `TokioTask`. Dropping the set or aborting the task destroys the resource.
    ///
    /// ```
    /// use async_hooks::tokio::JoinSetExt;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let mut set = tokio::task::JoinSet::new();
    /// set.spawn_bound(async { 1 });
    /// assert_eq!(set.join_next().await.unwrap().unwrap(), 1);
    /// # });
    /// ```
    #[track_caller]
    fn spawn_bound<F>(&mut self, task: F) -> AbortHandle
    where
        F: Future<Output = T> + Send + 'static,
        T: Send;

    /// [`JoinSet::spawn_blocking`], with the closure running in the caller's context as a
    /// resource of type `TokioBlocking`.
    ///
    /// ```
    /// use async_hooks::tokio::JoinSetExt;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let mut set = tokio::task::JoinSet::new();
    /// set.spawn_blocking_bound(|| 1);
    /// assert_eq!(set.join_next().await.unwrap().unwrap(), 1);
    /// # });
    /// ```
    #[track_caller]
    fn spawn_blocking_bound<F>(&mut self, f: F) -> AbortHandle
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send;
}

impl<T: 'static> JoinSetExt<T> for JoinSet<T> {
    #[track_caller]
    fn spawn_bound<F>(&mut self, task: F) -> AbortHandle
    where
        F: Future<Output = T> + Send + 'static,
        T: Send,
    {
        self.spawn(Instrumented::new(&TOKIO_TASK, task))
    }

    #[track_caller]
    fn spawn_blocking_bound<F>(&mut self, f: F) -> AbortHandle
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send,
    {
        let resource = bound_resource(&TOKIO_BLOCKING);
        self.spawn_blocking(move || resource.run_in_async_scope(f))
    }
}

mod sealed {
    pub trait Sealed {}
    impl<T> Sealed for ::tokio::task::JoinSet<T> {}
}
