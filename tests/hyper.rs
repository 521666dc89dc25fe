//! `async_hooks::hyper::BindingExecutor`: hyper's HTTP/2 stream tasks carry the context of the
//! connection that spawned them, over loopback with a real HTTP/2 client; with a plain executor
//! (the control) they carry nothing.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_hooks::hyper::BindingExecutor;
use async_hooks::tower::ScopeLayer;
use async_hooks::{AsyncId, AsyncLocalStorage, BindContext, execution_async_resource};
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use futures::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::rt::Executor;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use support::serial;
use tokio::net::TcpStream;

/// The number of the connection being served.
static CONNECTION: AsyncLocalStorage<u64> = AsyncLocalStorage::new().with_name("connection");
static REQUEST_ID: AsyncLocalStorage<String> = AsyncLocalStorage::new().with_name("request-id");

fn connection() -> String {
    CONNECTION
        .get_store()
        .map_or_else(|| "-".to_owned(), |c| c.to_string())
}

fn request_id() -> String {
    REQUEST_ID.with_store(|id| id.map_or_else(|| "-".to_owned(), Clone::clone))
}

/// The connections' resource ids, by connection number.
type Connections = Arc<Mutex<HashMap<u64, AsyncId>>>;

/// Accepts connections on `127.0.0.1`, each served by `serve` inside its own resource (type
/// `Connection`), as connection `n` in `CONNECTION`.
async fn listen<F>(serve: F, connections: Connections) -> SocketAddr
where
    F: Fn(TokioIo<TcpStream>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for n in 0.. {
            let (stream, _) = listener.accept().await.unwrap();
            let conn = CONNECTION.run(n, || {
                serve(TokioIo::new(stream)).bind_context_as("Connection")
            });
            connections.lock().unwrap().insert(n, conn.async_id());
            tokio::spawn(conn);
        }
    });
    addr
}

/// A `listen` callback serving `$service` (HTTP/1 or HTTP/2, auto-detected) with `$exec`.
macro_rules! serving {
    ($exec:expr, $service:expr) => {{
        let (exec, service) = ($exec, $service);
        move |io: TokioIo<TcpStream>| -> Pin<Box<dyn Future<Output = ()> + Send>> {
            let (exec, service) = (exec.clone(), service.clone());
            Box::pin(async move {
                let _ = auto::Builder::new(exec).serve_connection(io, service).await;
            })
        }
    }};
}

/// Three HTTP/2 clients (one connection each), `per_client` concurrent requests each; returns
/// every response's headers, by client.
async fn h2_requests(addr: SocketAddr, per_client: usize) -> Vec<Vec<http::HeaderMap>> {
    let mut clients = Vec::new();
    for c in 0..3 {
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        clients.push(tokio::spawn(async move {
            let requests = (0..per_client).map(|i| {
                let client = client.clone();
                async move {
                    let req = Request::get(format!("http://{addr}/"))
                        .header("x-request-id", format!("c{c}-r{i}"))
                        .body(Full::default())
                        .unwrap();
                    let res = client.request(req).await.unwrap();
                    assert_eq!(res.version(), http::Version::HTTP_2);
                    let (mut parts, body) = res.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    parts
                        .headers
                        .insert("x-body", http::HeaderValue::from_bytes(&body).unwrap());
                    parts.headers.insert(
                        "x-sent-id",
                        http::HeaderValue::from_str(&format!("c{c}-r{i}")).unwrap(),
                    );
                    parts.headers
                }
            });
            futures::future::join_all(requests).await
        }));
    }
    let mut out = Vec::new();
    for client in clients {
        out.push(client.await.unwrap());
    }
    out
}

fn header(headers: &http::HeaderMap, name: &str) -> String {
    headers[name].to_str().unwrap().to_owned()
}

/// A bare hyper service: reports the connection store, the running resource and its trigger.
async fn bare(_req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    tokio::task::yield_now().await;
    let resource = execution_async_resource();
    Ok(Response::builder()
        .header("x-connection", connection())
        .header("x-type", resource.type_name())
        .header("x-trigger", resource.trigger_async_id().to_string())
        .body(Body::empty())
        .unwrap())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn http2_stream_tasks_carry_the_connection_context() {
    let _serial = serial();
    let connections = Connections::default();
    let rt = runtime();
    let replies = rt.block_on(async {
        let service = hyper::service::service_fn(bare);
        let exec = BindingExecutor::new(TokioExecutor::new());
        let addr = listen(serving!(exec, service), connections.clone()).await;
        h2_requests(addr, 20).await
    });
    let connections = connections.lock().unwrap();
    let mut seen = Vec::new();
    for client in &replies {
        // One connection per client, and all its streams see that connection.
        let n = header(&client[0], "x-connection");
        for headers in client {
            assert_eq!(header(headers, "x-connection"), n);
            assert_eq!(header(headers, "x-type"), "HyperTask");
            // Spawned by hyper inside the connection's resource.
            let conn_id = connections[&n.parse::<u64>().unwrap()];
            assert_eq!(header(headers, "x-trigger"), conn_id.to_string());
        }
        seen.push(n);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn http2_stream_tasks_carry_nothing_with_a_plain_executor() {
    // The control: the same server with hyper's executor unwrapped.
    let _serial = serial();
    let rt = runtime();
    let replies = rt.block_on(async {
        let service = hyper::service::service_fn(bare);
        let addr = listen(
            serving!(TokioExecutor::new(), service),
            Connections::default(),
        )
        .await;
        h2_requests(addr, 5).await
    });
    for headers in replies.iter().flatten() {
        assert_eq!(header(headers, "x-connection"), "-");
        assert_eq!(header(headers, "x-type"), "ROOT");
    }
}

/// axum with `ScopeLayer` over HTTP/2: `TowerToHyperService` calls the router inside the stream
/// task, so the request resource is created there and sees the connection's store only through
/// the binding executor; the streamed body sees both stores.
async fn axum_handler() -> Response<Body> {
    let seen = format!("{} {}", request_id(), connection());
    let chunks = futures::stream::iter(0..3).then(|_| async {
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(format!("{}@{};", request_id(), connection()))
    });
    Response::builder()
        .header("x-seen", seen)
        .body(Body::from_stream(chunks))
        .unwrap()
}

fn axum_app() -> Router {
    Router::new()
        .route("/", get(axum_handler))
        .layer(ScopeLayer::new(&REQUEST_ID, |req: &Request<Body>| {
            req.headers()["x-request-id"].to_str().unwrap().to_owned()
        }))
}

#[test]
fn axum_over_http2_sees_the_request_and_the_connection() {
    let _serial = serial();
    for bound in [true, false] {
        let rt = runtime();
        let replies = rt.block_on(async {
            let service = TowerToHyperService::new(axum_app());
            let addr = if bound {
                let exec = BindingExecutor::new(TokioExecutor::new());
                listen(serving!(exec, service), Connections::default()).await
            } else {
                listen(
                    serving!(TokioExecutor::new(), service),
                    Connections::default(),
                )
                .await
            };
            h2_requests(addr, 20).await
        });
        for client in &replies {
            let n = if bound {
                header(&client[0], "x-seen")
                    .split_once(' ')
                    .unwrap()
                    .1
                    .to_owned()
            } else {
                "-".to_owned()
            };
            for headers in client {
                let id = header(headers, "x-sent-id");
                assert_eq!(
                    header(headers, "x-seen"),
                    format!("{id} {n}"),
                    "bound: {bound}"
                );
                assert_eq!(
                    header(headers, "x-body"),
                    format!("{id}@{n};").repeat(3),
                    "bound: {bound}"
                );
            }
        }
        if bound {
            let n: Vec<_> = replies.iter().map(|c| header(&c[0], "x-seen")).collect();
            assert!(n.iter().all(|seen| !seen.ends_with(" -")), "{n:?}");
        }
    }
}

#[test]
fn the_executor_binds_what_it_is_given_where_it_is_given() {
    let _serial = serial();
    let rt = runtime();
    let exec = BindingExecutor::new(TokioExecutor::new());
    let (tx, rx) = std::sync::mpsc::channel();
    rt.block_on(async {
        for n in 0..4u64 {
            let tx = tx.clone();
            CONNECTION.run(n, || {
                exec.execute(async move {
                    tokio::task::yield_now().await;
                    tx.send((n, CONNECTION.get_store().map(|c| *c))).unwrap();
                })
            });
        }
    });
    drop(tx);
    let mut got: Vec<_> = rx.iter().collect();
    got.sort();
    assert_eq!(got, (0..4).map(|n| (n, Some(n))).collect::<Vec<_>>());
    // Clone, Default, Debug: a plain wrapper.
    let copy = exec.clone();
    assert_eq!(format!("{copy:?}"), format!("{exec:?}"));
    let _default: BindingExecutor<TokioExecutor> = BindingExecutor::default();
}

#[test]
fn bare_hyper_serves_a_scope_layered_tower_service() {
    let _serial = serial();
    let rt = runtime();
    let bodies = rt.block_on(async {
        let service = tower::ServiceBuilder::new()
            .layer(ScopeLayer::new(&REQUEST_ID, |req: &Request<Incoming>| {
                req.uri().path().trim_start_matches('/').to_owned()
            }))
            .service(tower::service_fn(|_req: Request<Incoming>| async {
                let chunks = futures::stream::iter(0..2).then(|_| async {
                    tokio::task::yield_now().await;
                    Ok::<_, Infallible>(request_id())
                });
                Ok::<_, Infallible>(Response::new(Body::from_stream(chunks)))
            }));
        let service = TowerToHyperService::new(service);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service = service.clone();
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = conn.await;
                });
            }
        });
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let requests = (0..20).map(|i| {
            let client = client.clone();
            async move {
                let uri = format!("http://{addr}/bare-{i}");
                let res = client.get(uri.parse().unwrap()).await.unwrap();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                (i, String::from_utf8(body.to_vec()).unwrap())
            }
        });
        futures::future::join_all(requests).await
    });
    for (i, body) in bodies {
        assert_eq!(body, format!("bare-{i}bare-{i}"));
    }
}
