//! Context through the tasks hyper spawns.
//!
//! hyper hands its background work to an executor: each HTTP/2 stream of a server connection
//! (the request's service future and its response body), the HTTP/2 client's connection task,
//! upgraded streams. A plain executor starts them with no context. [`BindingExecutor`] binds
//! each one to the context where hyper spawned it, so an HTTP/2 stream's task sees the
//! connection's stores (and its resource as trigger), as an HTTP/1 connection's requests do.

use std::future::Future;

use async_hooks_core::__private::ResourceType;
use async_hooks_core::Instrumented;
use hyper::rt::Executor;

/// The type of the resource of each future a [`BindingExecutor`] spawns.
static HYPER_TASK: ResourceType = ResourceType::new("HyperTask");

/// A [`hyper::rt::Executor`] that binds every future hyper spawns to the context current where
/// hyper spawned it, then hands it to `inner`.
///
/// Each spawned future is an async resource of type `HyperTask`, triggered by the execution
/// that spawned it; its polls see the stores of that moment (on any worker thread), and
/// `destroy` fires when it is dropped.
///
/// On a server, hyper spawns each HTTP/2 stream from its connection's task, so the streams see
/// the connection's context. On a client, a pooled connection's task is spawned by the request
/// that opened the connection and keeps that request's context for the connection's life: give
/// the client a plain executor unless that is what you want.
///
/// ```
/// use async_hooks::AsyncLocalStorage;
/// use async_hooks::hyper::BindingExecutor;
/// use hyper::rt::Executor;
/// use hyper_util::rt::TokioExecutor;
///
/// static CONNECTION: AsyncLocalStorage<u32> = AsyncLocalStorage::new();
///
/// let rt = tokio::runtime::Runtime::new().unwrap();
/// rt.block_on(async {
///     let exec = BindingExecutor::new(TokioExecutor::new());
///     let (tx, rx) = tokio::sync::oneshot::channel();
///     // What hyper does for each HTTP/2 stream, inside the connection's context:
///     CONNECTION.run(3, || {
///         exec.execute(async move { tx.send(CONNECTION.get_store().map(|c| *c)).unwrap() })
///     });
///     assert_eq!(rx.await.unwrap(), Some(3));
/// });
/// ```
///
/// Serving HTTP/2 with hyper-util:
///
/// ```no_run
/// use async_hooks::hyper::BindingExecutor;
/// use hyper_util::rt::{TokioExecutor, TokioIo};
/// use hyper_util::server::conn::auto;
/// # async fn serve(stream: tokio::net::TcpStream) {
/// # let service = hyper::service::service_fn(|_req| async {
/// #     Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Empty::<hyper::body::Bytes>::new()))
/// # });
/// auto::Builder::new(BindingExecutor::new(TokioExecutor::new()))
///     .serve_connection(TokioIo::new(stream), service)
///     .await
///     .unwrap();
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BindingExecutor<E> {
    inner: E,
}

impl<E> BindingExecutor<E> {
    /// Wraps `inner`, e.g. `hyper_util::rt::TokioExecutor::new()`.
    ///
    /// ```
    /// use async_hooks::hyper::BindingExecutor;
    /// use hyper_util::rt::TokioExecutor;
    ///
    /// let exec = BindingExecutor::new(TokioExecutor::new());
    /// # let _ = exec;
    /// ```
    pub fn new(inner: E) -> BindingExecutor<E> {
        BindingExecutor { inner }
    }

    /// The wrapped executor.
    ///
    /// ```
    /// use async_hooks::hyper::BindingExecutor;
    /// use hyper_util::rt::TokioExecutor;
    ///
    /// let _tokio: &TokioExecutor = BindingExecutor::new(TokioExecutor::new()).get_ref();
    /// ```
    pub fn get_ref(&self) -> &E {
        &self.inner
    }

    /// Unwraps the executor.
    ///
    /// ```
    /// use async_hooks::hyper::BindingExecutor;
    /// use hyper_util::rt::TokioExecutor;
    ///
    /// let _tokio: TokioExecutor = BindingExecutor::new(TokioExecutor::new()).into_inner();
    /// ```
    pub fn into_inner(self) -> E {
        self.inner
    }
}

impl<E, Fut> Executor<Fut> for BindingExecutor<E>
where
    E: Executor<Instrumented<Fut>>,
    Fut: Future,
{
    fn execute(&self, fut: Fut) {
        self.inner.execute(Instrumented::new(&HYPER_TASK, fut));
    }
}
