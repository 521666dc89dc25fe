//! Heap allocations `ScopeLayer` adds to a request, counted by a global allocator (no hook
//! enabled in this binary): the request's store, and a storage frame once the context holds
//! more than that one store, whatever the number of polls and body frames.

use std::convert::Infallible;

use async_hooks::AsyncLocalStorage;
use async_hooks::tower::ScopeLayer;
use futures::StreamExt;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Bytes;
use tower::{Layer, Service, ServiceExt, service_fn};

mod support;
use support::counting_alloc;
use support::futures::YieldOnce;

#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

static ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
static OTHER: AsyncLocalStorage<u64> = AsyncLocalStorage::new();

/// Allocations made by one request through `svc` (the body read to its end and dropped), after
/// one warm-up request.
fn allocations_per_request<S, B>(svc: S) -> u64
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let request = |svc: S| {
        futures::executor::block_on(async {
            let res = svc.oneshot(Request::new(Empty::new())).await.unwrap();
            res.into_body().collect().await.unwrap();
        })
    };
    request(svc.clone());
    let before = counting_alloc::allocations();
    request(svc);
    counting_alloc::allocations() - before
}

/// A handler that yields twice and streams three frames: several polls of each.
fn handler() -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<impl http_body::Body<Data = Bytes, Error = Infallible>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(|_req: Request<Empty<Bytes>>| async {
        YieldOnce(false).await;
        YieldOnce(false).await;
        let frames = futures::stream::iter(0..3)
            .map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"x"))));
        Ok::<_, Infallible>(Response::new(StreamBody::new(frames)))
    })
}

#[test]
fn a_request_through_scope_layer_allocates_its_store_only() {
    let bare = allocations_per_request(handler());
    let layered = allocations_per_request(
        ScopeLayer::new(&ID, |_: &Request<Empty<Bytes>>| 7).layer(handler()),
    );
    // The request's resource keeps a frame of one store in place: no heap frame.
    assert_eq!(layered - bare, 1, "bare {bare}, layered {layered}");
}

#[test]
fn a_second_layer_adds_its_store_and_a_frame_of_both() {
    let bare = allocations_per_request(handler());
    let svc = ScopeLayer::new(&ID, |_: &Request<Empty<Bytes>>| 7)
        .layer(ScopeLayer::new(&OTHER, |_: &Request<Empty<Bytes>>| 8).layer(handler()));
    let layered = allocations_per_request(svc);
    // Two stores, and the inner request's resource keeps a heap frame of both.
    assert_eq!(layered - bare, 3, "bare {bare}, layered {layered}");
}
