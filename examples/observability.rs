//! One context for logs and traces: an axum service on `127.0.0.1` whose every log line carries
//! the request's id, and whose spans continue the caller's trace, including the span of a task
//! the handler spawned.
//!
//! - `ScopeLayer` gives each request its id (from `x-request-id`) in `REQUEST_ID`, and with
//!   `.extract_trace_context()` makes the W3C `traceparent` it came with its OpenTelemetry
//!   context.
//! - `tracing_subscriber::fmt` with `StoreFields` below it prints `request_id=…` on every line,
//!   with no argument passed at any `info!`.
//! - `otel::propagate()` carries the OpenTelemetry context into every async resource: the
//!   handler's span is a child of the caller's, and the spans of the nested `#[async_resource]`
//!   query and of the `async_hooks::tokio::spawn` task are children of the handler's. Spans go to
//!   OpenTelemetry SDK's in-memory exporter.
//!
//! The program serves on an ephemeral port, sends `--requests N` (default 8) concurrent
//! requests with a hyper client, each with its own `traceparent`, then checks every log line
//! and every span and prints `requests: N, log lines: L, spans: S in T traces, mismatches: M`.
//! The exit code is 0 only when M is 0.
//!
//! Run with `cargo run --example observability`.

#[path = "support/flags.rs"]
mod flags;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Mutex;

use async_hooks::tower::ScopeLayer;
use async_hooks::tracing_bridge::StoreFields;
use async_hooks::{AsyncLocalStorage, async_resource, otel};
use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use axum::{Router, http::Request};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, Tracer, TracerProvider as _};
use opentelemetry::{Context, global};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracer, SdkTracerProvider};
use tracing::info;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

/// The id of the request being served, wherever its work runs.
static REQUEST_ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new().with_name("request-id");

/// The service's tracer (set once in `main`).
static TRACER: std::sync::OnceLock<SdkTracer> = std::sync::OnceLock::new();

fn tracer() -> &'static SdkTracer {
    TRACER.get().expect("set in main")
}

/// Every log line, kept for the checks and printed as written.
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(Clone, Copy)]
struct Tee;

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        print!("{text}");
        LOG.lock().unwrap().extend(text.lines().map(str::to_owned));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

impl<'a> MakeWriter<'a> for Tee {
    type Writer = Tee;
    fn make_writer(&'a self) -> Tee {
        Tee
    }
}

/// `GET /orders/{n}`: logs, queries, and spawns a background task, each with its own span.
/// `n` is the request's id passed by hand, only so that `main` can check the log lines.
async fn order(Path(n): Path<u64>) -> String {
    let cx = Context::current_with_span(tracer().start("GET /orders"));
    info!(n, "handling order");
    // Work created while the handler's span is current becomes its child.
    let (query, audit) = {
        let _current = cx.clone().attach();
        let audit = async_hooks::tokio::spawn(async move {
            tokio::task::yield_now().await;
            let _span = tracer().start("audit");
            info!(n, "audit written");
        });
        (load_order(n), audit)
    };
    let total = query.await;
    audit.await.unwrap();
    format!("order {n}: {total}")
}

#[async_resource(type = "DBQuery")]
async fn load_order(n: u64) -> u64 {
    tokio::task::yield_now().await;
    let _span = tracer().start("SELECT orders");
    info!(n, "order loaded");
    n * 10
}

fn trace_of(i: u64) -> (TraceId, SpanId) {
    (
        TraceId::from(0x0af7_6519_16cd_43dd_8448_eb21_1c80_0000 + u128::from(i)),
        SpanId::from(0xb7ad_6b71_6920_0000 + i),
    )
}

const PROGRAM: &str = "observability";
const USAGE: &str = "usage: observability [--requests N]";

fn parse_args() -> u64 {
    let mut requests = 8;
    flags::parse(PROGRAM, USAGE, &["--requests"], |name, value| {
        requests = flags::number(name, value)?;
        Ok(())
    });
    requests
}

fn main() -> ExitCode {
    let requests = parse_args();

    // Logs: `request_id=…` on every line.
    tracing_subscriber::registry()
        .with(StoreFields::new().field("request_id", &REQUEST_ID))
        .with(
            tracing_subscriber::fmt::layer()
                .without_time()
                .with_target(false)
                .with_ansi(false)
                .with_writer(Tee)
                // hyper's own DEBUG and TRACE lines are not the point here.
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        )
        .init();
    // Traces: W3C trace context and baggage in and out, spans kept in memory.
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    TRACER.set(provider.tracer("observability")).ok();
    otel::propagate();

    let app = Router::new().route("/orders/{n}", get(order)).layer(
        ScopeLayer::new(&REQUEST_ID, |req: &Request<Body>| {
            req.headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0)
        })
        .extract_trace_context(),
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bodies = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let calls: Vec<_> = (1..=requests)
            .map(|i| {
                let client = client.clone();
                let (trace, parent) = trace_of(i);
                let req = hyper::Request::get(format!("http://{addr}/orders/{i}"))
                    .header("x-request-id", i.to_string())
                    .header("traceparent", format!("00-{trace}-{parent}-01"))
                    .body(Empty::new())
                    .unwrap();
                tokio::spawn(async move {
                    let res = client.request(req).await.unwrap();
                    let body = res.into_body().collect().await.unwrap().to_bytes();
                    String::from_utf8(body.to_vec()).unwrap()
                })
            })
            .collect();
        let mut bodies = Vec::new();
        for call in calls {
            bodies.push(call.await.unwrap());
        }
        bodies
    });
    drop(rt);

    let mut mismatches = 0;
    for (i, body) in (1..=requests).zip(&bodies) {
        if *body != format!("order {i}: {}", i * 10) {
            println!("wrong response to request {i}: {body:?}");
            mismatches += 1;
        }
    }
    // Every line names its request twice: `n=` by hand, `request_id=` from the store.
    let field = |line: &str, key: &str| -> Option<u64> {
        let start = line.find(&format!(" {key}="))? + key.len() + 2;
        line[start..].split(' ').next()?.parse().ok()
    };
    let log = LOG.lock().unwrap().clone();
    for line in &log {
        match (field(line, "n"), field(line, "request_id")) {
            (Some(n), Some(id)) if n == id => {}
            _ => {
                println!("log line without its request's id: {line}");
                mismatches += 1;
            }
        }
    }
    if log.len() as u64 != requests * 3 {
        println!("expected {} log lines, got {}", requests * 3, log.len());
        mismatches += 1;
    }
    // Every request's spans: in the caller's trace, the handler's parent is the caller's span,
    // the query's and the spawned task's parent is the handler's.
    let spans = exporter.get_finished_spans().unwrap();
    let traces: std::collections::HashSet<_> =
        spans.iter().map(|s| s.span_context.trace_id()).collect();
    for i in 1..=requests {
        let (trace, parent) = trace_of(i);
        let in_trace: Vec<_> = spans
            .iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .collect();
        let named = |name: &str| in_trace.iter().find(|s| s.name == name);
        let ok = match (named("GET /orders"), named("SELECT orders"), named("audit")) {
            (Some(handler), Some(query), Some(audit)) => {
                let id = handler.span_context.span_id();
                in_trace.len() == 3
                    && handler.parent_span_id == parent
                    && query.parent_span_id == id
                    && audit.parent_span_id == id
            }
            _ => false,
        };
        if !ok {
            println!("request {i}: wrong spans {in_trace:#?}");
            mismatches += 1;
        }
    }
    println!(
        "requests: {requests}, log lines: {}, spans: {} in {} traces, mismatches: {mismatches}",
        log.len(),
        spans.len(),
        traces.len()
    );
    drop(provider);
    if mismatches == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
