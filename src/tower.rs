//! One async resource and one store per HTTP request, for any tower service: axum's `Router`,
//! tonic's server, or bare hyper through `hyper_util::service::TowerToHyperService`.
//!
//! [`ScopeLayer`] makes each request an async resource of type `HTTPINCOMINGMESSAGE` (Node's
//! name for the same thing) whose context holds the store `make(&request)` returned. The
//! handler runs in that context, and so does every poll of the response body, which is often
//! streamed long after the handler returned:
//!
//! ```
//! use async_hooks::AsyncLocalStorage;
//! use async_hooks::tower::ScopeLayer;
//! use axum::{Router, body::Body, http::Request, routing::get};
//! use tower::ServiceExt;
//!
//! static REQUEST_ID: AsyncLocalStorage<String> = AsyncLocalStorage::new();
//!
//! async fn hello() -> String {
//!     format!("hello from {}", REQUEST_ID.get_store().unwrap())
//! }
//!
//! let app = Router::new().route("/", get(hello)).layer(ScopeLayer::new(
//!     &REQUEST_ID,
//!     |req: &Request<Body>| match req.headers().get("x-request-id") {
//!         Some(id) => id.to_str().unwrap_or("-").to_owned(),
//!         None => "-".to_owned(),
//!     },
//! ));
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let req = Request::get("/").header("x-request-id", "abc").body(Body::empty()).unwrap();
//! let res = app.oneshot(req).await.unwrap();
//! let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
//! assert_eq!(body, "hello from abc");
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_hooks_core::__private::{ResourceType, bound_resource};
use async_hooks_core::{AsyncLocalStorage, AsyncResource};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// The type of a request's resource, as Node names the resource of an incoming HTTP message.
static HTTP_INCOMING_MESSAGE: ResourceType = ResourceType::new("HTTPINCOMINGMESSAGE");

/// A [`Layer`] that runs each request in its own async resource (type `HTTPINCOMINGMESSAGE`)
/// with `storage`'s store set to `make(&request)`, from the inner service's `call` to the drop
/// of the response body.
///
/// - The resource is created when the service's `call` is invoked, triggered by the execution
///   that called it (`init` fires there). `make` runs before, in the caller's context.
/// - The inner service's `call`, every poll of its future and every poll of the response body
///   run in the resource's context (`before`/`after` around each): `execution_async_id()` is the
///   resource's id and `storage.get_store()` is the request's store, as inside
///   `storage.scope(make(&req), …)`. Work the handler creates (futures, `bind!` closures,
///   spawned bound tasks) captures that context.
/// - The response body is wrapped in a [`ScopeBody`]: frames produced after the handler
///   returned (a streamed body, trailers) still see the store. `destroy` fires when the body is
///   dropped, or when the response future is dropped before it produced a response (a cancelled
///   or failed request).
/// - `poll_ready` is passed through outside every request: it sees the caller's context.
///
/// Layers compose: two `ScopeLayer`s of two storages make two nested resources, and the inner
/// one sees both stores. An `enter_with` inside the handler lasts until the end of that poll
/// (each poll starts from the request's context); use `run` or `scope` for values that must
/// outlive an `.await`.
///
/// Per request, with no hook enabled: two heap allocations (the store's `Arc`, and the
/// request's storage frame), whatever the number of polls.
///
/// ```
/// use async_hooks::{AsyncLocalStorage, execution_async_id};
/// use async_hooks::tower::ScopeLayer;
/// use http::{Request, Response};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// static USER: AsyncLocalStorage<String> = AsyncLocalStorage::new();
///
/// let svc = ServiceBuilder::new()
///     .layer(ScopeLayer::new(&USER, |req: &Request<String>| req.body().clone()))
///     .service(service_fn(|_req: Request<String>| async {
///         let user = USER.get_store().unwrap();
///         Ok::<_, std::convert::Infallible>(Response::new(format!("{user} in {}", execution_async_id())))
///     }));
///
/// let res = futures::executor::block_on(svc.oneshot(Request::new("ada".to_string()))).unwrap();
/// assert!(res.body().get_ref().starts_with("ada in "));
/// ```
pub struct ScopeLayer<T: 'static, M> {
    storage: &'static AsyncLocalStorage<T>,
    make: M,
    pub(crate) on_request: OnRequest,
}

/// What else happens when a request's resource is created (`extract_trace_context`).
#[derive(Clone, Copy, Default)]
pub(crate) struct OnRequest {
    #[cfg(feature = "opentelemetry")]
    pub(crate) extract_trace_context: bool,
}

impl<T: Send + Sync + 'static, M> ScopeLayer<T, M> {
    /// A layer that gives each request the store `make(&request)` in `storage`.
    ///
    /// `make` is usually a closure over the request (a header, an extension, a counter); its
    /// argument type names the request body type the layer will see, e.g.
    /// `&http::Request<axum::body::Body>`.
    ///
    /// ```
    /// use async_hooks::AsyncLocalStorage;
    /// use async_hooks::tower::ScopeLayer;
    /// use http::Request;
    ///
    /// static PATH: AsyncLocalStorage<String> = AsyncLocalStorage::new();
    /// let layer = ScopeLayer::new(&PATH, |req: &Request<()>| req.uri().path().to_owned());
    /// # let _ = layer;
    /// ```
    pub fn new(storage: &'static AsyncLocalStorage<T>, make: M) -> ScopeLayer<T, M>
    where
        M: Clone,
    {
        ScopeLayer {
            storage,
            make,
            on_request: OnRequest::default(),
        }
    }
}

impl<T: 'static, M: Clone> Clone for ScopeLayer<T, M> {
    fn clone(&self) -> Self {
        ScopeLayer {
            storage: self.storage,
            make: self.make.clone(),
            on_request: self.on_request,
        }
    }
}

impl<T: Send + Sync + 'static, M> fmt::Debug for ScopeLayer<T, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeLayer")
            .field("storage", self.storage)
            .finish_non_exhaustive()
    }
}

impl<S, T: 'static, M: Clone> Layer<S> for ScopeLayer<T, M> {
    type Service = ScopeService<S, T, M>;

    fn layer(&self, inner: S) -> ScopeService<S, T, M> {
        ScopeService {
            inner,
            storage: self.storage,
            make: self.make.clone(),
            on_request: self.on_request,
        }
    }
}

/// The service [`ScopeLayer`] makes: `inner`, with each request in its own resource and store.
///
/// ```
/// use async_hooks::AsyncLocalStorage;
/// use async_hooks::tower::ScopeLayer;
/// use http::{Request, Response};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// static ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
///
/// let inner = service_fn(|_: Request<()>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(*ID.get_store().unwrap()))
/// });
/// let svc = ScopeLayer::new(&ID, |_: &Request<()>| 7).layer(inner);
/// let res = futures::executor::block_on(svc.oneshot(Request::new(()))).unwrap();
/// assert_eq!(*res.body().get_ref(), 7);
/// ```
pub struct ScopeService<S, T: 'static, M> {
    inner: S,
    storage: &'static AsyncLocalStorage<T>,
    make: M,
    on_request: OnRequest,
}

impl<S: Clone, T: 'static, M: Clone> Clone for ScopeService<S, T, M> {
    fn clone(&self) -> Self {
        ScopeService {
            inner: self.inner.clone(),
            storage: self.storage,
            make: self.make.clone(),
            on_request: self.on_request,
        }
    }
}

impl<S: fmt::Debug, T: Send + Sync + 'static, M> fmt::Debug for ScopeService<S, T, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeService")
            .field("inner", &self.inner)
            .field("storage", self.storage)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResBody, T, M> Service<Request<B>> for ScopeService<S, T, M>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    T: Send + Sync + 'static,
    M: Fn(&Request<B>) -> T,
{
    type Response = Response<ScopeBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // Readiness belongs to the connection, not to a request.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture<S::Future> {
        let store = (self.make)(&req);
        #[cfg(feature = "opentelemetry")]
        let _incoming = self
            .on_request
            .extract_trace_context
            .then(|| crate::otel::incoming(&req));
        // The resource captures the context with the store in it: the future's polls and the
        // body's share it by moving the resource, with no allocation of their own.
        let resource = self
            .storage
            .run(store, || bound_resource(&HTTP_INCOMING_MESSAGE));
        let inner = &mut self.inner;
        let future = resource.run_in_async_scope(|| inner.call(req));
        ResponseFuture {
            future: Some(future),
            resource: Some(resource),
        }
    }
}

pin_project! {
    /// The response future of a [`ScopeService`]: the inner service's future, polled in the
    /// request's resource. Its response's body is a [`ScopeBody`] that takes the resource over.
    ///
    /// ```
    /// use async_hooks::AsyncLocalStorage;
    /// use async_hooks::tower::{ResponseFuture, ScopeLayer};
    /// use http::{Request, Response};
    /// use tower::{Layer, Service, service_fn};
    ///
    /// static ID: AsyncLocalStorage<u8> = AsyncLocalStorage::new();
    /// let inner = service_fn(|_: Request<()>| async { Ok::<_, ()>(Response::new(())) });
    /// let mut svc = ScopeLayer::new(&ID, |_: &Request<()>| 1).layer(inner);
    /// let future: ResponseFuture<_> = svc.call(Request::new(()));
    /// drop(future); // never polled: the request's resource is destroyed here
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F> {
        // `None` once dropped, inside the resource: in the poll that returns `Ready`, or by the
        // drop below.
        #[pin]
        future: Option<F>,
        // Moved into the body with the response; dropped here (`destroy`) if there is none.
        resource: Option<AsyncResource>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // The inner future's destructors see the request's context, as its polls did.
            let mut this = this.project();
            if let (Some(resource), true) = (this.resource.as_ref(), this.future.is_some()) {
                resource.run_in_async_scope(|| this.future.set(None));
            }
        }
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ScopeBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resource = this
            .resource
            .as_ref()
            .expect("`ResponseFuture` polled after it returned `Poll::Ready`");
        let mut future = this.future;
        let result = ready!(resource.run_in_async_scope(|| {
            let poll = future
                .as_mut()
                .as_pin_mut()
                .expect("`ResponseFuture` polled after it returned `Poll::Ready`")
                .poll(cx);
            if poll.is_ready() {
                future.set(None);
            }
            poll
        }));
        // An error ends the request here (the resource is dropped: `destroy`); a response
        // carries it on in its body.
        let resource = this.resource.take();
        Poll::Ready(result.map(|response| {
            response.map(|body| ScopeBody {
                body: Some(body),
                resource,
            })
        }))
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field(
                "async_id",
                &self.resource.as_ref().map(AsyncResource::async_id),
            )
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// A response body polled in its request's resource: every frame, including those produced
    /// after the handler returned and the trailers, sees the request's store. Dropping it
    /// destroys the request's resource. `is_end_stream` and `size_hint` need no context and
    /// are passed through.
    ///
    /// ```
    /// use async_hooks::AsyncLocalStorage;
    /// use async_hooks::tower::ScopeLayer;
    /// use futures::StreamExt;
    /// use http::{Request, Response};
    /// use http_body::Frame;
    /// use http_body_util::{BodyExt, StreamBody};
    /// use hyper::body::Bytes;
    /// use std::convert::Infallible;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// static ID: AsyncLocalStorage<u32> = AsyncLocalStorage::new();
    ///
    /// let inner = service_fn(|_: Request<()>| async {
    ///     // Each chunk is made when the body is polled, after the handler returned.
    ///     let chunks = futures::stream::repeat_with(|| {
    ///         Ok::<_, Infallible>(Frame::data(Bytes::from(ID.get_store().unwrap().to_string())))
    ///     });
    ///     Ok::<_, Infallible>(Response::new(StreamBody::new(chunks.take(3))))
    /// });
    /// let svc = ScopeLayer::new(&ID, |_: &Request<()>| 42).layer(inner);
    /// futures::executor::block_on(async {
    ///     let body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    ///     assert_eq!(body.collect().await.unwrap().to_bytes(), "424242");
    /// });
    /// ```
    pub struct ScopeBody<B> {
        // `None` only once dropped, inside the resource, by the drop below.
        #[pin]
        body: Option<B>,
        // Dropped after the body: `destroy` comes after its last frame and its destructors.
        // `None` only for a default (empty) body, made outside every request.
        resource: Option<AsyncResource>,
    }

    impl<B> PinnedDrop for ScopeBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if let Some(resource) = this.resource.as_ref() {
                resource.run_in_async_scope(|| this.body.set(None));
            }
        }
    }
}

impl<B> ScopeBody<B> {
    /// The inner body.
    ///
    /// ```
    /// use async_hooks::AsyncLocalStorage;
    /// use async_hooks::tower::ScopeLayer;
    /// use http::{Request, Response};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// static ID: AsyncLocalStorage<u8> = AsyncLocalStorage::new();
    /// let inner = service_fn(|_: Request<()>| async { Ok::<_, ()>(Response::new("hi")) });
    /// let svc = ScopeLayer::new(&ID, |_: &Request<()>| 1).layer(inner);
    /// let res = futures::executor::block_on(svc.oneshot(Request::new(()))).unwrap();
    /// assert_eq!(*res.body().get_ref(), "hi");
    /// ```
    pub fn get_ref(&self) -> &B {
        // `None` only inside the drop, which no `&self` can overlap.
        self.body
            .as_ref()
            .expect("`ScopeBody` used while it was dropped")
    }
}

/// An empty body outside every request, for middleware that makes its own responses (a
/// timeout, a CORS preflight) around a [`ScopeService`].
impl<B: Default> Default for ScopeBody<B> {
    fn default() -> Self {
        ScopeBody {
            body: Some(B::default()),
            resource: None,
        }
    }
}

impl<B: Body> Body for ScopeBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let Some(body) = this.body.as_pin_mut() else {
            return Poll::Ready(None);
        };
        match this.resource.as_ref() {
            Some(resource) => resource.run_in_async_scope(|| body.poll_frame(cx)),
            None => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), B::size_hint)
    }
}

impl<B> fmt::Debug for ScopeBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeBody")
            .field(
                "async_id",
                &self.resource.as_ref().map(AsyncResource::async_id),
            )
            .finish_non_exhaustive()
    }
}
