//! `async_hooks::tower::ScopeLayer`: one resource and one store per request, through axum over
//! loopback with a real HTTP client, and through tower services driven by hand where the order
//! of events must be exact.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use async_hooks::tower::{ScopeBody, ScopeLayer};
use async_hooks::{
    AsyncId, AsyncLocalStorage, Hooks, async_resource, bind, create_hook, execution_async_id,
    execution_async_resource,
};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::routing::get;
use futures::StreamExt;
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::{Log, recorder, serial};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

static REQUEST_ID: AsyncLocalStorage<String> = AsyncLocalStorage::new().with_name("request-id");
static USER: AsyncLocalStorage<String> = AsyncLocalStorage::new().with_name("user");

/// Chunks each streamed test body has.
const CHUNKS: usize = 3;

fn header(req: &Request<Body>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

fn request_id_layer() -> ScopeLayer<String, impl Fn(&Request<Body>) -> String + Clone> {
    ScopeLayer::new(&REQUEST_ID, |req: &Request<Body>| {
        header(req, "x-request-id")
    })
}

/// The current request id, `-` outside every request.
fn current_id() -> String {
    REQUEST_ID.with_store(|id| id.map_or_else(|| "-".to_owned(), Clone::clone))
}

fn current_user() -> String {
    USER.with_store(|user| user.map_or_else(|| "-".to_owned(), Clone::clone))
}

#[async_resource]
async fn lookup() -> String {
    tokio::task::yield_now().await;
    format!("{}/{}", current_id(), nested_lookup().await)
}

#[async_resource]
async fn nested_lookup() -> String {
    tokio::task::yield_now().await;
    current_id()
}

/// A body of [`CHUNKS`] chunks `"{id}|"`, each made when the body is polled for it (after the
/// handler returned), from the store current at that poll.
fn streamed_body() -> Body {
    let chunks = futures::stream::unfold(0, |k| async move {
        if k == CHUNKS {
            return None;
        }
        tokio::task::yield_now().await;
        Some((Ok::<_, Infallible>(format!("{}|", current_id())), k + 1))
    });
    Body::from_stream(chunks)
}

/// The handler: echoes the id it reads from the store directly, through nested resources and
/// from a spawned bound task, and streams a body tagged by the store.
async fn handler() -> Response<Body> {
    let seen = current_id();
    let nested = lookup().await;
    let spawned = tokio::spawn(bind!(async {
        tokio::task::yield_now().await;
        current_id()
    }))
    .await
    .unwrap();
    Response::builder()
        .header("x-seen-id", seen)
        .header("x-nested-id", nested)
        .header("x-spawned-id", spawned)
        .body(streamed_body())
        .unwrap()
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Reply {
    headers: http::HeaderMap,
    body: String,
}

async fn get_with_id(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
    id: Option<&str>,
) -> Result<Reply, String> {
    let mut req = Request::get(format!("http://{addr}{path}"));
    if let Some(id) = id {
        req = req.header("x-request-id", id);
    }
    let res = client
        .request(req.body(Full::default()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    if res.status() != StatusCode::OK {
        return Err(format!("status {}", res.status()));
    }
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok(Reply {
        headers,
        body: String::from_utf8(body.to_bytes().to_vec()).unwrap(),
    })
}

fn header_str<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply.headers.get(name).map_or("", |v| v.to_str().unwrap())
}

#[test]
fn a_thousand_concurrent_axum_requests_each_see_their_own_id() {
    let _serial = serial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let (now, max) = (in_flight.clone(), max_in_flight.clone());
    let app = Router::new()
        .route(
            "/",
            get(move || {
                let (now, max) = (now.clone(), max.clone());
                async move {
                    max.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    let res = handler().await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    res
                }
            }),
        )
        .layer(request_id_layer());
    let mismatches = rt.block_on(async {
        let addr = serve(app).await;
        let client = client();
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move {
                    let id = format!("req-{i}");
                    (id.clone(), get_with_id(&client, addr, "/", Some(&id)).await)
                })
            })
            .collect();
        let mut mismatches = Vec::new();
        for task in tasks {
            let (id, reply) = task.await.unwrap();
            let reply = match reply {
                Ok(reply) => reply,
                Err(err) => {
                    mismatches.push(format!("{id}: {err}"));
                    continue;
                }
            };
            let expected_body = format!("{id}|").repeat(CHUNKS);
            let expected_nested = format!("{id}/{id}");
            if header_str(&reply, "x-seen-id") != id
                || header_str(&reply, "x-nested-id") != expected_nested
                || header_str(&reply, "x-spawned-id") != id
                || reply.body != expected_body
            {
                mismatches.push(format!(
                    "{id}: seen {:?}, nested {:?}, spawned {:?}, body {:?}",
                    header_str(&reply, "x-seen-id"),
                    header_str(&reply, "x-nested-id"),
                    header_str(&reply, "x-spawned-id"),
                    reply.body
                ));
            }
        }
        mismatches
    });
    assert_eq!(mismatches, Vec::<String>::new());
    // The requests did overlap: the stores were told apart, not merely serialised.
    assert!(max_in_flight.load(Ordering::SeqCst) > 1);
}

/// Polls a body frame by frame, by hand, outside every request.
fn frames<B: http_body::Body<Data = Bytes>>(body: B) -> Vec<String>
where
    B::Error: std::fmt::Debug,
{
    let mut body = pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(frame)) => {
                let frame = frame.unwrap().into_data().unwrap();
                out.push(String::from_utf8(frame.to_vec()).unwrap());
            }
            Poll::Ready(None) => return out,
            Poll::Pending => {}
        }
        // Between polls, the test is outside the request.
        assert_eq!(current_id(), "-");
        assert_eq!(execution_async_id(), AsyncId::ROOT);
    }
}

/// A stream body whose chunks record the store and execution at the poll that makes them.
fn probing_body(
    log: Option<Log>,
) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
    let chunks = futures::stream::iter(0..CHUNKS).map(move |k| {
        if let Some(log) = &log {
            log.push(format!("frame {k} in {}", execution_async_id()));
        }
        Ok(Frame::data(Bytes::from(format!("{}|", current_id()))))
    });
    StreamBody::new(chunks)
}

#[test]
fn a_body_polled_after_the_handler_returned_reads_the_store() {
    let _serial = serial();
    let handler_ids = Arc::new(Mutex::new(Vec::new()));
    let ids = handler_ids.clone();
    let svc = request_id_layer().layer(service_fn(move |_req: Request<Body>| {
        let ids = ids.clone();
        async move {
            ids.lock().unwrap().push(execution_async_id());
            Ok::<_, Infallible>(Response::new(probing_body(None)))
        }
    }));
    let req = Request::get("/")
        .header("x-request-id", "late")
        .body(Body::empty())
        .unwrap();
    let res = futures::executor::block_on(svc.oneshot(req)).unwrap();
    // The handler's future has returned and been dropped; nothing of the request is current.
    assert_eq!(current_id(), "-");
    assert_eq!(handler_ids.lock().unwrap().len(), 1);
    assert_eq!(frames(res.into_body()), ["late|"; CHUNKS]);
}

#[test]
fn destroy_comes_after_the_last_body_frame_and_only_when_the_body_is_dropped() {
    let _serial = serial();
    let log = Log::default();
    let hook = recorder("h", &log).enable();
    let frame_log = log.clone();
    let svc = request_id_layer().layer(service_fn(move |_req: Request<Body>| {
        let frame_log = frame_log.clone();
        async move {
            frame_log.push(format!("handler in {}", execution_async_id()));
            Ok::<_, Infallible>(Response::new(probing_body(Some(frame_log))))
        }
    }));
    let req = Request::get("/")
        .header("x-request-id", "d")
        .body(Body::empty())
        .unwrap();
    let res = futures::executor::block_on(svc.oneshot(req)).unwrap();
    // Read to the end and dropped by `frames`.
    assert_eq!(frames(res.into_body()), ["d|"; CHUNKS]);
    hook.disable();
    let events = log.take();

    let init = events
        .iter()
        .find(|e| e.contains("init HTTPINCOMINGMESSAGE("))
        .unwrap_or_else(|| panic!("no request resource: {events:#?}"));
    let id = init
        .split_once("HTTPINCOMINGMESSAGE(")
        .and_then(|(_, rest)| rest.split_once(')'))
        .unwrap()
        .0
        .to_owned();
    assert!(init.ends_with("trigger=1"), "{init}");
    let position = |line: &str| events.iter().position(|e| e == line);
    assert!(
        position(&format!("handler in {id}")).is_some(),
        "the handler ran in the request's resource: {events:#?}"
    );
    let last_frame = position(&format!("frame {} in {id}", CHUNKS - 1))
        .unwrap_or_else(|| panic!("frames ran in the request's resource: {events:#?}"));
    let destroy = position(&format!("h destroy {id}"))
        .unwrap_or_else(|| panic!("the request was destroyed: {events:#?}"));
    assert!(destroy > last_frame, "{events:#?}");
    let befores = events
        .iter()
        .filter(|e| **e == format!("h before {id}"))
        .count();
    // Before/after around the call, the handler's poll, each frame and the body's end.
    assert!(befores > 1 + 1 + CHUNKS, "{events:#?}");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("h destroy ") && e.ends_with(&format!(" {id}")))
            .count(),
        1
    );
}

#[test]
fn the_request_lives_until_the_body_is_dropped() {
    let _serial = serial();
    let log = Log::default();
    let hook = recorder("h", &log).enable();
    let svc = request_id_layer().layer(service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
    }));
    let req = Request::get("/")
        .header("x-request-id", "x")
        .body(Body::empty())
        .unwrap();
    let mut body: ScopeBody<Full<Bytes>> = futures::executor::block_on(svc.oneshot(req))
        .unwrap()
        .into_body();
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(
        Pin::new(&mut body).poll_frame(&mut cx),
        Poll::Ready(Some(Ok(_)))
    ));
    assert!(body.is_end_stream());
    let before_drop = log.take();
    drop(body);
    let after_drop = log.take();
    hook.disable();
    assert!(
        !before_drop.iter().any(|e| e.contains(" destroy ")),
        "{before_drop:#?}"
    );
    // The inner body is dropped inside the request (a before/after pair), then destroy.
    let destroys: Vec<_> = after_drop
        .iter()
        .filter(|e| e.starts_with("h destroy "))
        .collect();
    assert_eq!(destroys.len(), 1, "{after_drop:#?}");
    assert_eq!(after_drop.last(), Some(destroys[0]), "{after_drop:#?}");
}

#[test]
fn a_future_dropped_before_its_response_destroys_the_request_then() {
    let _serial = serial();
    let log = Log::default();
    let hook = recorder("h", &log).enable();
    let drops_seen = Arc::new(Mutex::new(Vec::new()));
    let seen = drops_seen.clone();
    let mut svc = request_id_layer().layer(service_fn(move |_req: Request<Body>| {
        let guard = DropProbe(seen.clone());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }
    }));
    let req = Request::get("/")
        .header("x-request-id", "cancel")
        .body(Body::empty())
        .unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = Box::pin(svc.call(req));
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    drop(fut);
    hook.disable();
    let events = log.take();
    assert!(
        events.last().is_some_and(|e| e.starts_with("h destroy ")),
        "{events:#?}"
    );
    // The handler's state was dropped inside the request, before its destroy.
    assert_eq!(*drops_seen.lock().unwrap(), ["cancel"]);
    assert_eq!(current_id(), "-");
}

struct DropProbe(Arc<Mutex<Vec<String>>>);

impl Drop for DropProbe {
    fn drop(&mut self) {
        self.0.lock().unwrap().push(current_id());
    }
}

#[test]
fn an_error_from_the_inner_service_destroys_the_request_at_once() {
    let _serial = serial();
    let log = Log::default();
    let hook = recorder("h", &log).enable();
    let svc = request_id_layer().layer(service_fn(|_req: Request<Body>| async {
        Err::<Response<Body>, _>(current_id())
    }));
    let req = Request::get("/")
        .header("x-request-id", "e")
        .body(Body::empty())
        .unwrap();
    let err = futures::executor::block_on(svc.oneshot(req)).unwrap_err();
    hook.disable();
    assert_eq!(err, "e");
    let events = log.take();
    assert!(
        events.iter().any(|e| e.starts_with("h destroy ")),
        "{events:#?}"
    );
}

/// A service that records the store and execution its `poll_ready` sees.
#[derive(Clone)]
struct ReadinessProbe(Arc<Mutex<Vec<(String, AsyncId)>>>);

impl Service<Request<Body>> for ReadinessProbe {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0
            .lock()
            .unwrap()
            .push((current_id(), execution_async_id()));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<Body>) -> Self::Future {
        Box::pin(async { Ok(Response::new(Body::from(current_id()))) })
    }
}

#[test]
fn poll_ready_sees_no_request_store() {
    let _serial = serial();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut svc = request_id_layer().layer(ReadinessProbe(seen.clone()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // By hand: the second `poll_ready` comes while the first request's body is alive.
    let body = rt.block_on(async {
        let first = svc
            .ready()
            .await
            .unwrap()
            .call(
                Request::get("/")
                    .header("x-request-id", "one")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        svc.ready().await.unwrap();
        first.into_body()
    });
    assert_eq!(frames(body), ["one"]);
    // Through axum over loopback: `route_service` polls readiness inside the router's future.
    let app = Router::new().route_service("/probe", svc);
    let replies = rt.block_on(async {
        let addr = serve(app).await;
        let client = client();
        let mut replies = Vec::new();
        for id in ["two", "three"] {
            replies.push(
                get_with_id(&client, addr, "/probe", Some(id))
                    .await
                    .unwrap()
                    .body,
            );
        }
        replies
    });
    assert_eq!(replies, ["two", "three"]);
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 4, "{seen:?}");
    for (store, _) in seen.iter() {
        assert_eq!(store, "-", "{seen:?}");
    }
    // By hand, outside every resource.
    assert_eq!(seen[0].1, AsyncId::ROOT);
    assert_eq!(seen[1].1, AsyncId::ROOT);
}

#[test]
fn two_stacked_scope_layers_both_hold() {
    let _serial = serial();
    let log = Log::default();
    let hook = recorder("h", &log).enable();
    let handler_log = log.clone();
    let svc = ServiceBuilder::new()
        .layer(request_id_layer())
        .layer(ScopeLayer::new(&USER, |req: &Request<Body>| {
            header(req, "x-user")
        }))
        .service(service_fn(move |_req: Request<Body>| {
            let handler_log = handler_log.clone();
            async move {
                let resource = execution_async_resource();
                handler_log.push(format!(
                    "handler {} {} in {} triggered by {}",
                    current_id(),
                    current_user(),
                    resource.async_id(),
                    resource.trigger_async_id()
                ));
                let body = futures::stream::iter(0..2).map(|_| {
                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!(
                        "{}+{};",
                        current_id(),
                        current_user()
                    ))))
                });
                Ok::<_, Infallible>(Response::new(StreamBody::new(body)))
            }
        }));
    let req = Request::get("/")
        .header("x-request-id", "r1")
        .header("x-user", "ada")
        .body(Body::empty())
        .unwrap();
    let body = futures::executor::block_on(svc.oneshot(req))
        .unwrap()
        .into_body();
    assert_eq!(frames(body), ["r1+ada;", "r1+ada;"]);
    hook.disable();
    let events = log.take();
    let inits: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| e.strip_prefix("h init HTTPINCOMINGMESSAGE("))
        .map(|rest| {
            let (id, trigger) = rest.split_once(") trigger=").unwrap();
            (id.to_owned(), trigger.to_owned())
        })
        .collect();
    assert_eq!(inits.len(), 2, "{events:#?}");
    let (outer, inner) = (&inits[0], &inits[1]);
    assert_eq!(outer.1, "1");
    // The inner layer's request is created inside the outer one's.
    assert_eq!(inner.1, outer.0);
    assert!(
        events.contains(&format!(
            "handler r1 ada in {} triggered by {}",
            inner.0, outer.0
        )),
        "{events:#?}"
    );
    // The inner request ends first: destroy in nesting order.
    let destroy = |id: &str| {
        events
            .iter()
            .position(|e| *e == format!("h destroy {id}"))
            .unwrap()
    };
    assert!(destroy(&inner.0) < destroy(&outer.0), "{events:#?}");
}

async fn panicking_handler() -> &'static str {
    panic!("handler panicked")
}

#[test]
fn a_panicking_handler_leaves_the_thread_clean() {
    let _serial = serial();
    let destroyed = Arc::new(AtomicUsize::new(0));
    let d = destroyed.clone();
    let hook = create_hook(Hooks::new().destroy(move |_| {
        d.fetch_add(1, Ordering::SeqCst);
    }))
    .enable();
    // By hand: the panic unwinds out of the response future's poll, and out of a body's poll.
    let svc = request_id_layer().layer(service_fn(|req: Request<Body>| async move {
        if req.uri().path() == "/panic" {
            panic!("handler panicked");
        }
        Ok::<_, Infallible>(Response::new(StreamBody::new(
            futures::stream::iter(0..2).map(|k| {
                if k == 1 {
                    panic!("body panicked");
                }
                Ok::<_, Infallible>(Frame::data(Bytes::from(current_id())))
            }),
        )))
    }));
    let req = |path: &str, id: &str| {
        Request::get(path)
            .header("x-request-id", id)
            .body(Body::empty())
            .unwrap()
    };
    let panicked = std::panic::catch_unwind(AssertUnwindSafe(|| {
        futures::executor::block_on(svc.clone().oneshot(req("/panic", "p1")))
    }));
    assert!(panicked.is_err());
    assert_eq!(
        (current_id(), execution_async_id()),
        ("-".to_owned(), AsyncId::ROOT)
    );
    let body = futures::executor::block_on(svc.clone().oneshot(req("/", "p2")))
        .unwrap()
        .into_body();
    let mut body = Box::pin(body);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(
        body.as_mut().poll_frame(&mut cx),
        Poll::Ready(Some(Ok(_)))
    ));
    let panicked = std::panic::catch_unwind(AssertUnwindSafe(|| body.as_mut().poll_frame(&mut cx)));
    assert!(panicked.is_err());
    drop(body);
    assert_eq!(
        (current_id(), execution_async_id()),
        ("-".to_owned(), AsyncId::ROOT)
    );
    let ok = futures::executor::block_on(svc.clone().oneshot(req("/", "p3"))).unwrap();
    let mut body = Box::pin(ok.into_body());
    match body.as_mut().poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => assert_eq!(frame.into_data().unwrap(), "p3"),
        other => panic!("{other:?}"),
    }
    drop(body);
    hook.disable();
    // Both panicked requests were destroyed, and the good ones.
    assert!(destroyed.load(Ordering::SeqCst) >= 3);

    // Over loopback on one thread: the panic ends the connection, the next request is clean.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(handler))
        .route("/panic", get(panicking_handler))
        .layer(request_id_layer());
    let replies = rt.block_on(async {
        let addr = serve(app).await;
        let client = client();
        let mut replies = Vec::new();
        for (path, id) in [
            ("/", "a"),
            ("/panic", "b"),
            ("/", "c"),
            ("/panic", "d"),
            ("/", "e"),
        ] {
            let reply = get_with_id(&client, addr, path, Some(id)).await;
            assert_eq!(
                (current_id(), execution_async_id()),
                ("-".to_owned(), AsyncId::ROOT)
            );
            replies.push(reply.map(|r| (header_str(&r, "x-seen-id").to_owned(), r.body)));
        }
        replies
    });
    for (i, id) in [(0, "a"), (2, "c"), (4, "e")] {
        assert_eq!(
            replies[i].as_ref().unwrap(),
            &(id.to_owned(), format!("{id}|").repeat(CHUNKS))
        );
    }
    assert!(replies[1].is_err(), "{:?}", replies[1].as_ref().map(|_| ()));
    assert!(replies[3].is_err());
}

#[test]
fn over_loopback_the_request_is_destroyed_after_its_last_frame_was_sent() {
    let _serial = serial();
    let log = Log::default();
    let frame_log = log.clone();
    let app = Router::new()
        .route(
            "/",
            get(move || {
                let frame_log = frame_log.clone();
                async move {
                    frame_log.push(format!("handler in {}", execution_async_id()));
                    let chunks = futures::stream::iter(0..CHUNKS).then(move |k| {
                        let frame_log = frame_log.clone();
                        async move {
                            tokio::task::yield_now().await;
                            frame_log.push(format!("frame {k} in {}", execution_async_id()));
                            Ok::<_, Infallible>(format!("{}|", current_id()))
                        }
                    });
                    Body::from_stream(chunks)
                }
            }),
        )
        .layer(request_id_layer());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let hook = recorder("h", &log).enable();
    let destroyed = Arc::new(AtomicUsize::new(0));
    let d = destroyed.clone();
    let counter = create_hook(Hooks::new().destroy(move |_| {
        d.fetch_add(1, Ordering::SeqCst);
    }))
    .enable();
    let events = rt.block_on(async {
        let addr = serve(app).await;
        let reply = get_with_id(&client(), addr, "/", Some("wire"))
            .await
            .unwrap();
        assert_eq!(reply.body, "wire|".repeat(CHUNKS));
        // The server drops the body once it has written the last frame, maybe after the
        // client has read it: wait for the destroy (or give up after 10 s).
        for _ in 0..1000 {
            if destroyed.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        log.take()
    });
    hook.disable();
    counter.disable();
    let id = events
        .iter()
        .find_map(|e| e.strip_prefix("h init HTTPINCOMINGMESSAGE("))
        .and_then(|rest| rest.split_once(')'))
        .unwrap_or_else(|| panic!("no request resource: {events:#?}"))
        .0
        .to_owned();
    let position = |line: String| {
        events
            .iter()
            .position(|e| *e == line)
            .unwrap_or_else(|| panic!("no {line:?} in {events:#?}"))
    };
    let handler = position(format!("handler in {id}"));
    let last_frame = position(format!("frame {} in {id}", CHUNKS - 1));
    let destroy = position(format!("h destroy {id}"));
    assert!(handler < last_frame && last_frame < destroy, "{events:#?}");
}

#[test]
fn trailers_are_made_in_the_request_too() {
    let _serial = serial();
    let svc = request_id_layer().layer(service_fn(|_req: Request<Body>| async {
        let frames = futures::stream::iter(0..2).map(|k| {
            Ok::<_, Infallible>(if k == 0 {
                Frame::data(Bytes::from(current_id()))
            } else {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("x-id", current_id().parse().unwrap());
                Frame::trailers(trailers)
            })
        });
        Ok::<_, Infallible>(Response::new(StreamBody::new(frames)))
    }));
    let req = Request::get("/")
        .header("x-request-id", "t")
        .body(Body::empty())
        .unwrap();
    let collected = futures::executor::block_on(async {
        let body = svc.oneshot(req).await.unwrap().into_body();
        body.collect().await.unwrap()
    });
    assert_eq!(collected.trailers().unwrap()["x-id"], "t");
    assert_eq!(collected.to_bytes(), "t");
}

/// Middleware that answers by itself (a timeout, a CORS preflight) needs `Default` bodies.
fn default_body<B: Default>() -> B {
    B::default()
}

#[test]
fn a_default_body_is_empty_and_belongs_to_no_request() {
    let _serial = serial();
    let log = Log::default();
    let hook = recorder("h", &log).enable();
    let body: ScopeBody<Full<Bytes>> = default_body();
    assert!(format!("{body:?}").contains("async_id: None"), "{body:?}");
    assert_eq!(frames(body), Vec::<String>::new());
    hook.disable();
    assert_eq!(log.take(), Vec::<String>::new());
}
