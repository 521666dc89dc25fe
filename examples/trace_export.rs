//! See the async graph: records a small HTTP workload with [`Recorder`] and writes it as a
//! Chrome trace (`trace.json`, open it in <https://ui.perfetto.dev> or `chrome://tracing`) and as
//! the trigger tree, both in Graphviz DOT (`graph.dot`) and drawn in-process as `graph.svg` (no
//! Graphviz needed).
//!
//! The workload is the request logger's, smaller: a hyper 1.x server on `127.0.0.1` (an
//! ephemeral port) on a tokio multi-thread runtime, and a hyper client sending `--requests N`
//! (default 3) requests, two at a time. The server's accept loop is a `TCPSERVERWRAP` resource;
//! each connection task is bound (`TCPWRAP`), each request is an `HTTPINCOMINGMESSAGE` that runs
//! a `DBQuery` (which fans out to a `tokio::spawn(bind!(async move …))` task) and a `Render`. On
//! the client side each request is an `HTTPCLIENTREQUEST` with its bound connection task
//! (`HTTPCLIENTCONN`).
//!
//! Run with `cargo run --example trace_export -- --out target/trace` (default: the current
//! directory).

#[path = "support/flags.rs"]
mod flags;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use async_hooks::{BindContext, Recorder, async_resource, bind, create_hook};
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The request: a query, then a page.
#[async_resource(type = "HTTPINCOMINGMESSAGE")]
async fn serve(id: u64) -> String {
    let user = query_db(id).await;
    render(user).await
}

/// Fans out to a spawned task, bound to this request's context.
#[async_resource(type = "DBQuery")]
async fn query_db(id: u64) -> String {
    let task = tokio::spawn(bind!(async move {
        tokio::time::sleep(Duration::from_millis(1 + id % 3)).await;
        format!("user#{id}")
    }));
    task.await.expect("the db task panicked")
}

#[async_resource(type = "Render")]
async fn render(user: String) -> String {
    tokio::time::sleep(Duration::from_millis(1)).await;
    format!("<p>{user}</p>")
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(id) = req.uri().path()[1..].parse::<u64>().ok() else {
        let mut res = Response::new(Full::new(Bytes::from_static(b"not found")));
        *res.status_mut() = StatusCode::NOT_FOUND;
        return Ok(res);
    };
    Ok(Response::new(Full::new(Bytes::from(serve(id).await))))
}

/// The accept loop; every connection is served by a bound task.
#[async_resource(type = "TCPSERVERWRAP")]
async fn run_server(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service_fn(handle));
        tokio::spawn(
            async move {
                if let Err(err) = conn.await {
                    eprintln!("server connection error: {err}");
                }
            }
            .bind_context_as("TCPWRAP"),
        );
    }
}

/// One client request over its own connection; returns the response body.
#[async_resource(type = "HTTPCLIENTREQUEST")]
async fn fetch(addr: SocketAddr, id: u64) -> Result<String, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(
        async move {
            if let Err(err) = conn.await {
                eprintln!("client connection error: {err}");
            }
        }
        .bind_context_as("HTTPCLIENTCONN"),
    );
    let req = Request::get(format!("/{id}"))
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if res.status() != StatusCode::OK {
        return Err(format!("status {}", res.status()));
    }
    let body = res.into_body().collect().await.map_err(|e| e.to_string())?;
    String::from_utf8(body.to_bytes().to_vec()).map_err(|e| e.to_string())
}

struct Args {
    out: PathBuf,
    requests: u64,
}

const USAGE: &str = "usage: trace_export [--out DIR] [--requests N]";

const PROGRAM: &str = "trace_export";

fn parse_args() -> Args {
    let mut args = Args {
        out: PathBuf::from("."),
        requests: 3,
    };
    flags::parse(PROGRAM, USAGE, &["--out", "--requests"], |name, value| {
        match name {
            "--out" => args.out = PathBuf::from(value),
            _ => args.requests = flags::number(name, value)?,
        }
        Ok(())
    });
    args
}

fn main() -> ExitCode {
    let args = parse_args();

    let recorder = Recorder::new(1 << 20);
    let hook = create_hook(recorder.clone()).enable();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tokio-worker")
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
            .map(|id| async move { (id, fetch(addr, id).await) })
            .buffer_unordered(2)
            .collect()
            .await;
        server.abort();
        let _ = server.await;
        responses
    });
    drop(runtime);
    hook.disable();

    let mut failures = 0;
    for (id, response) in &responses {
        if response.as_deref() != Ok(format!("<p>user#{id}</p>").as_str()) {
            failures += 1;
            eprintln!("request {id} got {response:?}");
        }
    }

    let trace = recorder.snapshot();
    let resources = trace.type_names().len();
    if let Err(err) = std::fs::create_dir_all(&args.out) {
        eprintln!("trace_export: cannot create {}: {err}", args.out.display());
        return ExitCode::FAILURE;
    }
    let json_path = args.out.join("trace.json");
    let dot_path = args.out.join("graph.dot");
    let svg_path = args.out.join("graph.svg");
    for (path, text) in [
        (&json_path, trace.to_chrome_json()),
        (&dot_path, trace.to_dot()),
        (&svg_path, trace.to_svg()),
    ] {
        if let Err(err) = std::fs::write(path, text) {
            eprintln!("trace_export: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    }
    println!("requests: {}, failures: {failures}", args.requests);
    println!(
        "events: {}, dropped: {}, resources: {resources}, threads: {}",
        trace.events.len(),
        trace.dropped,
        trace.thread_names.len()
    );
    println!("wrote {}", json_path.display());
    println!("wrote {}", dot_path.display());
    println!("wrote {}", svg_path.display());
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
