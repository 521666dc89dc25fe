//! `std::thread` with the context bound: the spawned thread runs in the spawner's context.
//!
//! A plain `std::thread::spawn` starts the new thread at the top level, where every storage
//! reads `None`. [`spawn`] and [`BuilderExt::spawn_bound`] make the closure an async resource
//! of type `Thread`, created in the spawner's context (trigger = the spawner's
//! [`execution_async_id`](crate::execution_async_id)) and destroyed when the closure returns
//! or unwinds on the new thread.

use std::io;
use std::thread::{Builder, JoinHandle};

use async_hooks_core::__private::{ResourceType, bound_resource};

static THREAD: ResourceType = ResourceType::new("Thread");

/// [`std::thread::spawn`], with the closure running in the spawner's context as a resource of
/// type `Thread`.
///
/// ```
/// use async_hooks::AsyncLocalStorage;
///
/// static USER: AsyncLocalStorage<&str> = AsyncLocalStorage::new();
///
/// let handle = USER.run("ada", || async_hooks::thread::spawn(|| *USER.get_store().unwrap()));
/// assert_eq!(handle.join().unwrap(), "ada");
/// ```
pub fn spawn<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let resource = bound_resource(&THREAD);
    std::thread::spawn(move || resource.run_in_async_scope(f))
}

/// [`std::thread::Builder`] with the context bound, for named threads or a custom stack size.
///
/// ```
/// use async_hooks::AsyncLocalStorage;
/// use async_hooks::thread::BuilderExt;
///
/// static USER: AsyncLocalStorage<&str> = AsyncLocalStorage::new();
///
/// let handle = USER.run("ada", || {
///     std::thread::Builder::new()
///         .name("worker".into())
///         .spawn_bound(|| *USER.get_store().unwrap())
/// });
/// assert_eq!(handle.unwrap().join().unwrap(), "ada");
/// ```
pub trait BuilderExt: sealed::Sealed {
    /// [`Builder::spawn`], with the closure running in the caller's context as a resource of
    /// type `Thread`. If the thread cannot be created, the resource is destroyed at once.
    ///
    /// ```
    /// use async_hooks::thread::BuilderExt;
    ///
    /// let handle = std::thread::Builder::new().spawn_bound(|| 1 + 1).unwrap();
    /// assert_eq!(handle.join().unwrap(), 2);
    /// ```
    fn spawn_bound<F, T>(self, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static;
}

impl BuilderExt for Builder {
    fn spawn_bound<F, T>(self, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let resource = bound_resource(&THREAD);
        self.spawn(move || resource.run_in_async_scope(f))
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for std::thread::Builder {}
}
