//! The request-id logger as a real axum service: `ScopeLayer` makes each request an async
//! resource whose store is its `x-request-id`, and every log line written while serving it —
//! in the handler, in nested `#[async_resource]` fns, in a spawned task on any worker thread,
//! and in the response body's chunks, streamed after the handler returned — is tagged with
//! that id, read back with `get_store()`. Nothing passes the id down by hand.
//!
//! tower-http's `SetRequestIdLayer` gives a UUID to requests that come without an
//! `x-request-id` and `PropagateRequestIdLayer` echoes the id in the response. The server
//! speaks HTTP/1.1 and HTTP/2 (prior knowledge) on `127.0.0.1` (an ephemeral port) through
//! hyper-util's `auto::Builder` with `BindingExecutor`, so that hyper's HTTP/2 stream tasks
//! carry their connection's context (here, the connection number in `CONNECTION`).
//!
//! The program then fires `--requests N` (default 20) requests at itself with hyper-util's
//! client, at most `--concurrency C` (default 8) at a time, odd ones over HTTP/2; every fifth
//! request has no id. It prints the first 20 log lines, checks that every line and every
//! response carries its request's id, and ends with `requests: N, mismatches: M` (exit code 0
//! only when M is 0).
//!
//! Run with `cargo run --example axum_service -- --requests 200 --concurrency 32`.

#[path = "support/flags.rs"]
mod flags;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use async_hooks::hyper::BindingExecutor;
use async_hooks::tower::ScopeLayer;
use async_hooks::{AsyncLocalStorage, async_resource};
use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, Request, Response, StatusCode, Version};
use axum::routing::get;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::ServiceBuilderExt;
use tower_http::request_id::MakeRequestUuid;

/// The id of the request being served, wherever its work happens to run.
static REQUEST_ID: AsyncLocalStorage<String> = AsyncLocalStorage::new().with_name("request-id");
/// The number of the connection a request came in on.
static CONNECTION: AsyncLocalStorage<u64> = AsyncLocalStorage::new().with_name("connection");

/// Chunks in each response body.
const CHUNKS: usize = 3;
/// Log lines each request writes: start, db, audit, one per chunk.
const LINES_PER_REQUEST: usize = 3 + CHUNKS;
/// Log lines printed as they happen.
const PRINTED_LINES: usize = 20;

static LOG: Mutex<Vec<LogLine>> = Mutex::new(Vec::new());

struct LogLine {
    /// The id from `REQUEST_ID.get_store()` when the line was logged.
    store: Option<String>,
    /// The request's id as the handler got it from the request's header, carried along by hand
    /// only to check the store against it.
    expected: String,
    msg: String,
}

/// Prefixes the message with the current request id (`-` if none).
fn log_with_id(expected: &str, msg: String) {
    let store = REQUEST_ID.get_store().map(|id| (*id).clone());
    let mut log = LOG.lock().unwrap();
    if log.len() < PRINTED_LINES {
        println!("{}: {msg}", store.as_deref().unwrap_or("-"));
    }
    log.push(LogLine {
        store,
        expected: expected.to_owned(),
        msg,
    });
}

/// `GET /orders/{n}`: looks the order up through nested resources, audits it in a spawned
/// task, and streams the order back in chunks made after this function returned.
async fn order(Path(n): Path<u64>, headers: HeaderMap) -> Response<Body> {
    let expected = headers["x-request-id"].to_str().unwrap_or("?").to_owned();
    let connection = CONNECTION
        .get_store()
        .map_or_else(|| "-".to_owned(), |c| c.to_string());
    log_with_id(
        &expected,
        format!("start order {n} on connection {connection}"),
    );
    let total = load_order(expected.clone(), n).await;
    let audited = expected.clone();
    let audit = async_hooks::tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1 + n % 3)).await;
        log_with_id(&audited, format!("audit order {n}"));
    });
    audit.await.expect("the audit task panicked");

    let handler_id = REQUEST_ID
        .get_store()
        .map_or_else(String::new, |id| (*id).clone());
    let chunks = futures::stream::iter(0..CHUNKS).then(move |k| {
        let expected = expected.clone();
        async move {
            // Written while the client is already reading the response.
            tokio::time::sleep(Duration::from_millis(1)).await;
            log_with_id(&expected, format!("chunk {k}"));
            let id = REQUEST_ID
                .get_store()
                .map_or_else(|| "-".to_owned(), |id| (*id).clone());
            Ok::<_, Infallible>(format!("{id} order {n} total {total} chunk {k}\n"))
        }
    });
    Response::builder()
        .header("x-handler-id", handler_id)
        .header("x-connection", connection)
        .body(Body::from_stream(chunks))
        .unwrap()
}

#[async_resource(type = "LoadOrder")]
async fn load_order(expected: String, n: u64) -> u64 {
    let rows = query_db(expected, n).await;
    rows * 10
}

#[async_resource(type = "DBQuery")]
async fn query_db(expected: String, n: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(1 + n % 5)).await;
    log_with_id(&expected, format!("db query for order {n}"));
    n + 1
}

fn app() -> Router {
    Router::new().route("/orders/{n}", get(order)).layer(
        ServiceBuilder::new()
            .set_x_request_id(MakeRequestUuid)
            .propagate_x_request_id()
            .layer(ScopeLayer::new(&REQUEST_ID, |req: &Request<Body>| {
                // Set by `set_x_request_id` when the client sent none.
                let id = req.headers().get("x-request-id");
                id.and_then(|id| id.to_str().ok()).unwrap_or("-").to_owned()
            })),
    )
}

/// Serves HTTP/1.1 and HTTP/2 on every accepted connection; HTTP/2 stream tasks are spawned
/// through `BindingExecutor`, so they keep the connection's context.
async fn run_server(listener: TcpListener) {
    let service = TowerToHyperService::new(app());
    let builder = auto::Builder::new(BindingExecutor::new(TokioExecutor::new()));
    for n in 0.. {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                eprintln!("accept failed: {err}");
                continue;
            }
        };
        let (builder, service) = (builder.clone(), service.clone());
        tokio::spawn(CONNECTION.scope(n, async move {
            if let Err(err) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("server connection error: {err}");
            }
        }));
    }
}

struct Reply {
    version: Version,
    /// The id echoed by `PropagateRequestIdLayer`.
    request_id: String,
    handler_id: String,
    connection: String,
    body: String,
}

async fn fetch(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    i: u64,
    id: Option<&str>,
) -> Result<Reply, Box<dyn std::error::Error + Send + Sync>> {
    let mut req = Request::get(format!("http://{addr}/orders/{i}"));
    if let Some(id) = id {
        req = req.header("x-request-id", id);
    }
    let res = client.request(req.body(Full::default())?).await?;
    if res.status() != StatusCode::OK {
        return Err(format!("status {}", res.status()).into());
    }
    let header = |name: &str| -> String {
        let value = res.headers().get(name);
        value.and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
    };
    let (version, request_id) = (res.version(), header("x-request-id"));
    let (handler_id, connection) = (header("x-handler-id"), header("x-connection"));
    let body = res.into_body().collect().await?.to_bytes();
    Ok(Reply {
        version,
        request_id,
        handler_id,
        connection,
        body: String::from_utf8(body.to_vec())?,
    })
}

/// What request `i`'s response must be, given the id it was served under.
fn expected_body(id: &str, i: u64) -> String {
    (0..CHUNKS)
        .map(|k| format!("{id} order {i} total {} chunk {k}\n", (i + 1) * 10))
        .collect()
}

struct Args {
    requests: u64,
    concurrency: usize,
}

const USAGE: &str = "usage: axum_service [--requests N] [--concurrency C]";

const PROGRAM: &str = "axum_service";

fn parse_args() -> Args {
    let mut args = Args {
        requests: 20,
        concurrency: 8,
    };
    flags::parse(
        PROGRAM,
        USAGE,
        &["--requests", "--concurrency"],
        |name, value| {
            match name {
                "--requests" => args.requests = flags::number(name, value)?,
                _ => {
                    args.concurrency = flags::number(name, value)?;
                    if args.concurrency == 0 {
                        return Err("--concurrency must be at least 1".into());
                    }
                }
            }
            Ok(())
        },
    );
    args
}

fn main() -> ExitCode {
    let args = parse_args();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let replies = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let server = tokio::spawn(run_server(listener));
        let http1: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let http2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let replies: Vec<_> = futures::stream::iter(0..args.requests)
            .map(|i| {
                let client = if i % 2 == 1 { &http2 } else { &http1 };
                // Every fifth request comes without an id: the server makes one up.
                let id = (i % 5 != 4).then(|| format!("req-{i}"));
                async move {
                    let reply = fetch(client, addr, i, id.as_deref()).await;
                    (i, id, reply.map_err(|e| e.to_string()))
                }
            })
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
        server.abort();
        replies
    });

    let log = LOG.lock().unwrap();
    if log.len() > PRINTED_LINES {
        println!("... ({} more log lines)", log.len() - PRINTED_LINES);
    }
    let mut mismatches = 0;
    for line in log.iter().filter(|l| l.store.as_ref() != Some(&l.expected)) {
        mismatches += 1;
        eprintln!(
            "mismatch: request {} logged {:?} with store {:?}",
            line.expected, line.msg, line.store
        );
    }
    let (mut over_http2, mut generated) = (0, 0);
    for (i, sent, reply) in &replies {
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) => {
                mismatches += 1;
                eprintln!("mismatch: request {i} failed: {err}");
                continue;
            }
        };
        let id = &reply.request_id;
        let id_ok = match sent {
            Some(sent) => id == sent,
            None => {
                generated += 1;
                !id.is_empty() && !id.starts_with("req-")
            }
        };
        let version = if i % 2 == 1 {
            over_http2 += 1;
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        if !id_ok
            || reply.handler_id != *id
            || reply.body != expected_body(id, *i)
            || reply.version != version
            || reply.connection.parse::<u64>().is_err()
        {
            mismatches += 1;
            eprintln!(
                "mismatch: request {i} (sent {sent:?}) got id {id:?}, handler id {:?}, \
                 connection {:?}, {:?}, body {:?}",
                reply.handler_id, reply.connection, reply.version, reply.body
            );
        }
    }
    let expected_lines = LINES_PER_REQUEST * args.requests as usize;
    if log.len() != expected_lines {
        mismatches += 1;
        eprintln!(
            "mismatch: {} log lines, expected {expected_lines}",
            log.len()
        );
    }
    println!(
        "log lines: {}, responses: {} ({over_http2} over HTTP/2, {generated} with a generated id)",
        log.len(),
        replies.len()
    );
    println!("requests: {}, mismatches: {mismatches}", args.requests);
    if mismatches == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
