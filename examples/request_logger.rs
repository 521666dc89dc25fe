//! The seed's request-id logger on a real HTTP server: every request gets an id in an
//! [`AsyncLocalStorage`], and every log line written while serving it — from nested
//! `#[async_resource]` fns, from a `tokio::spawn`ed task and from a `spawn_blocking` closure, on
//! whichever worker thread they happen to run — is tagged with that id, read back with
//! `get_store()`.
//!
//! The program starts a hyper 1.x server on `127.0.0.1` (an ephemeral port) on a tokio
//! multi-thread runtime, then fires `--requests N` (default 20) requests at it with a hyper client
//! over loopback, at most `--concurrency C` (default 8) at a time. Request `i` asks for `/i`; the
//! handler runs in `REQUEST_ID.run(i, …)`, as Node's `asyncLocalStorage.run(idSeq++, …)` does.
//! The log lines interleave (`0: start`, `1: start`, `0: finish`, …); with more than 20 requests
//! only the first 20 lines are printed. Every log line must carry the id of the request that
//! wrote it (the id from the URL, passed down by hand, is compared with the one from
//! `get_store()`) and every response body must be its request's id. The last line is
//! `requests: N, mismatches: M`; the exit code is 0 only when M is 0.
//!
//! Run with `cargo run --example request_logger -- --requests 200 --concurrency 32`.

#[path = "support/flags.rs"]
mod flags;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use async_hooks::{AsyncLocalStorage, async_resource};
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The id of the request being served, wherever its work happens to run.
static REQUEST_ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new().with_name("request-id");

/// Log lines printed as they happen; with many requests only the first ones.
const PRINTED_LINES: usize = 20;

/// Every log line written by the server, in the order they were written.
static LOG: Mutex<Vec<LogLine>> = Mutex::new(Vec::new());

/// What `print_all` was set to: print every line instead of the first [`PRINTED_LINES`].
static PRINT_ALL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

struct LogLine {
    /// The id from `REQUEST_ID.get_store()` when the line was logged.
    store: Option<u64>,
    /// The id of the request that logged it, passed down by hand from the URL.
    expected: u64,
    msg: &'static str,
}

/// The seed's `logWithId`: prefixes the message with the current request id (`-` if none).
///
/// `expected` is not used for the output: it only lets `main` check the tag afterwards.
fn log_with_id(expected: u64, msg: &'static str) {
    let store = REQUEST_ID.get_store().map(|id| *id);
    let mut log = LOG.lock().unwrap();
    if PRINT_ALL.load(std::sync::atomic::Ordering::Relaxed) || log.len() < PRINTED_LINES {
        match store {
            Some(id) => println!("{id}: {msg}"),
            None => println!("-: {msg}"),
        }
    }
    log.push(LogLine {
        store,
        expected,
        msg,
    });
}

/// The request: logs `start`, does its (fake) work through nested resources, logs `finish` and
/// answers with the request id it finds in the storage.
#[async_resource(type = "HTTPINCOMINGMESSAGE")]
async fn serve(expected: u64) -> String {
    log_with_id(expected, "start");
    let user = query_db(expected).await;
    let page = render(expected, user).await;
    log_with_id(expected, "finish");
    match REQUEST_ID.get_store() {
        Some(id) if page.ends_with(&format!("#{id}")) => id.to_string(),
        Some(id) => format!("{id} (page {page:?})"),
        None => "-".to_string(),
    }
}

/// Fans out to a spawned task, which may run on another worker thread;
/// `async_hooks::tokio::spawn` makes it carry this request's context there.
#[async_resource(type = "DBQuery")]
async fn query_db(expected: u64) -> String {
    let task = async_hooks::tokio::spawn(async move {
        // Let the requests interleave.
        tokio::time::sleep(Duration::from_millis(1 + expected % 5)).await;
        log_with_id(expected, "db query done");
        REQUEST_ID.get_store().map_or(u64::MAX, |id| *id)
    });
    let id = task.await.expect("the db task panicked");
    format!("user#{id}")
}

/// Fans out to the blocking pool; the closure runs with this request's store.
#[async_resource(type = "Render")]
async fn render(expected: u64, user: String) -> String {
    let job = async_hooks::tokio::spawn_blocking(move || {
        log_with_id(expected, "rendered");
        let id = REQUEST_ID.get_store().map_or(u64::MAX, |id| *id);
        format!("<p>{user}</p>#{id}")
    });
    job.await.expect("the render job panicked")
}

/// hyper's service: request `/i` is served as request `i`.
async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(id) = req.uri().path()[1..].parse::<u64>().ok() else {
        let mut res = Response::new(Full::new(Bytes::from_static(b"not found")));
        *res.status_mut() = StatusCode::NOT_FOUND;
        return Ok(res);
    };
    // The seed's `asyncLocalStorage.run(idSeq++, () => { … })`: the resource `serve` creates at
    // the call captures the store, and keeps it for every poll, on any thread.
    let body = REQUEST_ID.run(id, || serve(id)).await;
    Ok(Response::new(Full::new(Bytes::from(body))))
}

async fn run_server(listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                eprintln!("accept failed: {err}");
                continue;
            }
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

/// One client request over its own connection; returns the response body.
async fn fetch(
    addr: SocketAddr,
    id: u64,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            eprintln!("client connection error: {err}");
        }
    });
    let req = Request::get(format!("/{id}"))
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let res = sender.send_request(req).await?;
    if res.status() != StatusCode::OK {
        return Err(format!("status {}", res.status()).into());
    }
    let body = res.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(body.to_vec())?)
}

struct Args {
    requests: u64,
    concurrency: usize,
}

const PROGRAM: &str = "request_logger";
const USAGE: &str = "usage: request_logger [--requests N] [--concurrency C]";

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
    PRINT_ALL.store(
        args.requests <= PRINTED_LINES as u64,
        std::sync::atomic::Ordering::Relaxed,
    );

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
        let responses: Vec<(u64, Result<String, String>)> = futures::stream::iter(0..args.requests)
            .map(|id| async move { (id, fetch(addr, id).await.map_err(|e| e.to_string())) })
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
        server.abort();
        responses
    });

    let log = LOG.lock().unwrap();
    if log.len() > PRINTED_LINES && !PRINT_ALL.load(std::sync::atomic::Ordering::Relaxed) {
        println!("... ({} more log lines)", log.len() - PRINTED_LINES);
    }

    let mut mismatches = 0;
    for line in log.iter().filter(|line| line.store != Some(line.expected)) {
        mismatches += 1;
        eprintln!(
            "mismatch: request {} logged {:?} with store {:?}",
            line.expected, line.msg, line.store
        );
    }
    for (id, response) in &responses {
        if response.as_deref() != Ok(id.to_string().as_str()) {
            mismatches += 1;
            eprintln!("mismatch: request {id} got response {response:?}");
        }
    }
    let expected_lines = 4 * args.requests as usize;
    if log.len() != expected_lines {
        mismatches += 1;
        eprintln!(
            "mismatch: {} log lines, expected {expected_lines}",
            log.len()
        );
    }
    println!("log lines: {}, responses: {}", log.len(), responses.len());
    println!("requests: {}, mismatches: {mismatches}", args.requests);
    if mismatches == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
