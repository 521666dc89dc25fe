//! axum requests/s over loopback with `ScopeLayer`, against the same app without it and with a
//! hand-written `tokio::task_local!` middleware, at concurrency 64, in alternating rounds.
//!
//! Each app reads the request id (the `x-request-id` header) in its handler and echoes it in a
//! response header: the plain app from the request's headers, the other two from their store.
//! Each round measures the three apps one after the other, in a rotating order, for the same
//! number of requests; the report gives each app's median and the median of its per-round
//! ratios to the app without the layer.
//!
//! `cargo bench --bench axum -- --rounds 15 --requests 10000`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use async_hooks::AsyncLocalStorage;
use async_hooks::tower::ScopeLayer;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response};
use axum::routing::get;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service};

const CONCURRENCY: u64 = 64;

static REQUEST_ID: AsyncLocalStorage<String> = AsyncLocalStorage::new().with_name("request-id");

tokio::task_local! {
    static TASK_REQUEST_ID: String;
}

fn header_id(headers: &HeaderMap) -> String {
    let id = headers.get("x-request-id");
    id.and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned()
}

fn reply(id: &str) -> Response<Body> {
    let mut res = Response::new(Body::from("ok"));
    res.headers_mut()
        .insert("x-seen-id", HeaderValue::from_str(id).unwrap());
    res
}

fn plain_app() -> Router {
    Router::new().route(
        "/",
        get(|headers: HeaderMap| async move { reply(&header_id(&headers)) }),
    )
}

fn scope_app() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { REQUEST_ID.with_store(|id| reply(id.map_or("-", String::as_str))) }),
        )
        .layer(ScopeLayer::new(&REQUEST_ID, |req: &Request<Body>| {
            header_id(req.headers())
        }))
}

fn task_local_app() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async {
                TASK_REQUEST_ID
                    .try_with(|id| reply(id))
                    .unwrap_or_else(|_| reply("-"))
            }),
        )
        .layer(TaskLocalLayer)
}

/// What a user would write by hand: the handler's future in `TASK_REQUEST_ID.scope`. (The
/// response body is not covered: it is polled after the scope ended.)
#[derive(Clone)]
struct TaskLocalLayer;

impl<S> Layer<S> for TaskLocalLayer {
    type Service = TaskLocal<S>;
    fn layer(&self, inner: S) -> TaskLocal<S> {
        TaskLocal(inner)
    }
}

#[derive(Clone)]
struct TaskLocal<S>(S);

impl<S: Service<Request<Body>>> Service<Request<Body>> for TaskLocal<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = tokio::task::futures::TaskLocalFuture<String, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let id = header_id(req.headers());
        TASK_REQUEST_ID.scope(id, self.0.call(req))
    }
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// `requests` requests at [`CONCURRENCY`] over keep-alive connections; returns requests/s.
async fn measure(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    requests: u64,
) -> f64 {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= requests {
                        return;
                    }
                    let id = format!("r{n}");
                    let req = Request::get(format!("http://{addr}/"))
                        .header("x-request-id", &id)
                        .body(Full::default())
                        .unwrap();
                    let res = client.request(req).await.expect("request");
                    assert_eq!(res.headers()["x-seen-id"], id.as_str());
                    res.into_body().collect().await.expect("body");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    requests as f64 / start.elapsed().as_secs_f64()
}

/// `requests` requests through `app` in process (no socket), one at a time on this thread;
/// returns requests/s: the layer's whole cost per request, without the network's noise.
async fn measure_in_process(app: &Router, requests: u64) -> f64 {
    use tower::ServiceExt;
    let start = Instant::now();
    for n in 0..requests {
        let id = format!("r{n}");
        let req = Request::get("/")
            .header("x-request-id", &id)
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.headers()["x-seen-id"], id.as_str());
        res.into_body().collect().await.expect("body");
    }
    requests as f64 / start.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

struct Args {
    rounds: usize,
    requests: u64,
    /// `--in-process-only`: skip the loopback rounds (for profiling).
    in_process_only: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        rounds: 9,
        requests: 5_000,
        in_process_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--rounds" => args.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--requests" => {
                args.requests = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--requests N")
            }
            "--in-process-only" => args.in_process_only = true,
            // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing else.
            _ => {}
        }
    }
    args
}

type App = (&'static str, fn() -> Router);

fn main() {
    let args = parse_args();
    let apps: [App; 3] = [
        ("without ScopeLayer", plain_app),
        ("ScopeLayer", scope_app),
        ("task_local! middleware", task_local_app),
    ];
    if !args.in_process_only {
        loopback(&args, &apps);
    }
    in_process(&args, &apps);
}

fn loopback(args: &Args, apps: &[App]) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rates = rt.block_on(async {
        let mut addrs = Vec::new();
        for (_, app) in apps {
            addrs.push(serve(app()).await);
        }
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        // Warm-up: open the connections and fault in the code paths.
        for addr in &addrs {
            measure(&client, *addr, args.requests / 5 + CONCURRENCY).await;
        }
        let mut rates = vec![Vec::new(); apps.len()];
        for round in 0..args.rounds {
            for k in 0..apps.len() {
                let app = (round + k) % apps.len();
                rates[app].push(measure(&client, addrs[app], args.requests).await);
            }
        }
        rates
    });
    report(
        &format!("axum over loopback, concurrency {CONCURRENCY}"),
        args,
        apps,
        rates,
    );
}

fn in_process(args: &Args, apps: &[App]) {
    let local = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let rates = local.block_on(async {
        let routers: Vec<Router> = apps.iter().map(|(_, app)| app()).collect();
        let in_process = args.requests * 10;
        for router in &routers {
            measure_in_process(router, in_process / 5).await;
        }
        let mut rates = vec![Vec::new(); apps.len()];
        for round in 0..args.rounds {
            for k in 0..apps.len() {
                let app = (round + k) % apps.len();
                rates[app].push(measure_in_process(&routers[app], in_process).await);
            }
        }
        rates
    });
    report(
        "axum in process (Router::oneshot, one thread, 10x the requests)",
        args,
        apps,
        rates,
    );
}

fn report(title: &str, args: &Args, apps: &[App], rates: Vec<Vec<f64>>) {
    println!(
        "{title}: {} rounds of {} requests per app",
        args.rounds, args.requests
    );
    println!(
        "  {:<24} {:>11}  {:>16}",
        "app", "median", "per-round ratio"
    );
    for (app, (name, _)) in apps.iter().enumerate() {
        // Each round's ratio to the app without the layer, measured next to it.
        let mut ratios: Vec<f64> = rates[app]
            .iter()
            .zip(&rates[0])
            .map(|(rate, base)| rate / base)
            .collect();
        let rate = median(&mut rates[app].clone());
        println!(
            "  {name:<24} {rate:>7.0} req/s  {:>15.3}x",
            median(&mut ratios)
        );
    }
}
