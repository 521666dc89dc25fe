//! The seeds' `executionAsyncResource()` state carrier: continuation-local state without
//! `AsyncLocalStorage` and without a map keyed by async id.
//!
//! An `init` hook copies the state found on the creating resource
//! (`execution_async_resource().get::<State>()`) onto every new resource
//! (`resource.insert(…)`). The HTTP handler — an `#[async_resource]` fn, so each request is a
//! resource — stores `{ state: req.url }` on its own resource, then waits in a `Timeout` resource
//! it creates and answers with the state it finds on the resource executing the timer callback,
//! as JSON (Node: `res.end(JSON.stringify(executionAsyncResource()[sym]))`).
//!
//! The program serves on `127.0.0.1` (an ephemeral port, hyper 1.x, tokio multi-thread runtime)
//! and sends it 10 concurrent requests over loopback, request `i` for `/user/i?delay=…` with
//! delays that make later requests finish first. Each must read back its own URL. It prints one
//! line per request, how many states the hook copied (one per timer) and whether the root
//! resource stayed clean, and exits 1 on any mismatch.
//!
//! Run with `cargo run --example resource_state`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_hooks::{Hooks, async_resource, create_hook, execution_async_resource};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The state riding on resources (the seed's `resource[sym]`).
#[derive(Clone, Debug, PartialEq)]
struct State {
    state: String,
}

impl State {
    fn to_json(&self) -> String {
        format!(r#"{{"state":"{}"}}"#, self.state.escape_default())
    }
}

/// How many resources the `init` hook gave a copy of their creator's state.
static COPIED: AtomicUsize = AtomicUsize::new(0);

/// The seed's `setTimeout(function() { … }, delay)`: the callback runs in a `Timeout` resource
/// created by the caller, so it has the caller's state.
#[async_resource(type = "Timeout")]
async fn set_timeout<R>(delay: Duration, callback: impl FnOnce() -> R + Send) -> R {
    tokio::time::sleep(delay).await;
    callback()
}

/// One request: `executionAsyncResource()[sym] = { state: req.url }`, then answer after the
/// timer with the state the timer's resource carries.
#[async_resource(type = "HTTPINCOMINGMESSAGE")]
async fn serve(url: String, delay: Duration) -> String {
    execution_async_resource().insert(State { state: url });
    set_timeout(delay, || {
        let resource = execution_async_resource();
        match resource.get::<State>() {
            Some(state) => state.to_json(),
            None => format!(
                "no state on {}({})",
                resource.type_name(),
                resource.async_id()
            ),
        }
    })
    .await
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let url = req.uri().to_string();
    let delay = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("delay="))
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_millis(100), Duration::from_millis);
    let body = serve(url, delay).await;
    Ok(Response::new(Full::new(Bytes::from(body))))
}

async fn run_server(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle));
            if let Err(err) = conn.await {
                eprintln!("server connection error: {err}");
            }
        });
    }
}

async fn fetch(
    addr: SocketAddr,
    url: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            eprintln!("client connection error: {err}");
        }
    });
    let req = Request::get(url)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let res = sender.send_request(req).await?;
    let body = res.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(body.to_vec())?)
}

fn main() -> ExitCode {
    const REQUESTS: u64 = 10;

    // The seed's hook: `resource[sym] = executionAsyncResource()[sym]`.
    let hook = create_hook(Hooks::new().init(|_, _, _, resource| {
        if let Some(state) = execution_async_resource().get::<State>() {
            resource.insert(State::clone(&state));
            COPIED.fetch_add(1, Ordering::Relaxed);
        }
    }))
    .enable();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let responses = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let server = tokio::spawn(run_server(listener));
        let requests = (0..REQUESTS).map(|i| {
            let url = format!("/user/{i}?delay={}", 10 * (REQUESTS - i));
            async move {
                let body = fetch(addr, &url).await.map_err(|e| e.to_string());
                (url, body)
            }
        });
        let responses = futures::future::join_all(requests).await;
        server.abort();
        responses
    });
    hook.disable();

    let mut mismatches = 0;
    for (url, body) in &responses {
        let expected = State { state: url.clone() }.to_json();
        match body {
            Ok(body) if *body == expected => println!("GET {url} -> {body}"),
            other => {
                mismatches += 1;
                println!("GET {url} -> {other:?}, expected {expected}  MISMATCH");
            }
        }
    }
    let copied = COPIED.load(Ordering::Relaxed);
    println!("states copied by init: {copied}");
    if copied != REQUESTS as usize {
        mismatches += 1;
        eprintln!("mismatch: expected {REQUESTS} copies, one per Timeout");
    }
    let root = execution_async_resource();
    match root.get::<State>() {
        None => println!("root resource: no state"),
        Some(state) => {
            mismatches += 1;
            println!("root resource: {state:?}  MISMATCH");
        }
    }
    println!("requests: {REQUESTS}, mismatches: {mismatches}");
    if mismatches == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
