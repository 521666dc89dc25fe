//! Load: requests/s of the `request_logger` server instrumented with async-hooks
//! (`AsyncLocalStorage` + `#[async_resource]` + `bind!`) against the same server without the
//! library, and tasks/s of 100 000 `#[async_resource]` tokio tasks reading a storage value
//! against the same plain tasks padded to the same future size.
//!
//! `cargo bench --bench load -- --warm-up-time 1 --measurement-time 5`

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_hooks::{AsyncLocalStorage, async_resource, bind};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

static REQUEST_ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new().with_name("request-id");
static LOG: Mutex<Vec<(Option<u64>, u64)>> = Mutex::new(Vec::new());

const BATCH: u64 = 500;
const CONCURRENCY: u64 = 64;
const TASKS: u64 = 100_000;

fn log_line(store: Option<u64>, expected: u64) {
    LOG.lock().unwrap().push((store, expected));
}

// ---- instrumented server -------------------------------------------------------------------

#[async_resource(type = "HTTPINCOMINGMESSAGE")]
async fn serve(expected: u64) -> String {
    log_line(REQUEST_ID.get_store().map(|id| *id), expected);
    let user = query_db(expected).await;
    let page = render(expected, user).await;
    log_line(REQUEST_ID.get_store().map(|id| *id), expected);
    match REQUEST_ID.get_store() {
        Some(id) if page.ends_with(&format!("#{id}")) => id.to_string(),
        _ => "-".to_string(),
    }
}

#[async_resource(type = "DBQuery")]
async fn query_db(expected: u64) -> String {
    let task = tokio::spawn(bind!(async move {
        tokio::task::yield_now().await;
        log_line(REQUEST_ID.get_store().map(|id| *id), expected);
        REQUEST_ID.get_store().map_or(u64::MAX, |id| *id)
    }));
    let id = task.await.expect("the db task panicked");
    format!("user#{id}")
}

#[async_resource(type = "Render")]
async fn render(expected: u64, user: String) -> String {
    let job = tokio::task::spawn_blocking(bind!(move || {
        log_line(REQUEST_ID.get_store().map(|id| *id), expected);
        let id = REQUEST_ID.get_store().map_or(u64::MAX, |id| *id);
        format!("<p>{user}</p>#{id}")
    }));
    job.await.expect("the render job panicked")
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let id = req.uri().path()[1..].parse::<u64>().unwrap_or(u64::MAX);
    let body = REQUEST_ID.run(id, || serve(id)).await;
    Ok(Response::new(Full::new(Bytes::from(body))))
}

// ---- plain server: the same work, ids passed by hand, no library ----------------------------

async fn serve_plain(id: u64) -> String {
    log_line(Some(id), id);
    let user = query_db_plain(id).await;
    let page = render_plain(id, user).await;
    log_line(Some(id), id);
    if page.ends_with(&format!("#{id}")) {
        id.to_string()
    } else {
        "-".to_string()
    }
}

async fn query_db_plain(id: u64) -> String {
    let task = tokio::spawn(async move {
        tokio::task::yield_now().await;
        log_line(Some(id), id);
        id
    });
    let id = task.await.expect("the db task panicked");
    format!("user#{id}")
}

async fn render_plain(id: u64, user: String) -> String {
    let job = tokio::task::spawn_blocking(move || {
        log_line(Some(id), id);
        format!("<p>{user}</p>#{id}")
    });
    job.await.expect("the render job panicked")
}

async fn handle_plain(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let id = req.uri().path()[1..].parse::<u64>().unwrap_or(u64::MAX);
    let body = serve_plain(id).await;
    Ok(Response::new(Full::new(Bytes::from(body))))
}

// ---- harness ---------------------------------------------------------------------------------

async fn run_server(listener: TcpListener, instrumented: bool) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let builder = hyper::server::conn::http1::Builder::new();
            let io = TokioIo::new(stream);
            let _ = if instrumented {
                builder.serve_connection(io, service_fn(handle)).await
            } else {
                builder.serve_connection(io, service_fn(handle_plain)).await
            };
        });
    }
}

/// One keep-alive client connection sending request ids from `next` until `total`.
async fn client(addr: SocketAddr, next: Arc<AtomicU64>, total: u64) -> u64 {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let mut ok = 0;
    loop {
        let id = next.fetch_add(1, Ordering::Relaxed);
        if id >= total {
            break;
        }
        sender.ready().await.expect("ready");
        let req = Request::get(format!("/{id}"))
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .expect("request");
        let res = sender.send_request(req).await.expect("send");
        let body = res.into_body().collect().await.expect("body").to_bytes();
        if body == id.to_string().as_bytes() {
            ok += 1;
        }
    }
    drop(sender);
    let _ = conn.await;
    ok
}

/// One batch: [`BATCH`] requests over [`CONCURRENCY`] keep-alive connections; checks every
/// response and log line.
async fn batch(addr: SocketAddr) {
    let next = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CONCURRENCY)
        .map(|_| tokio::spawn(client(addr, next.clone(), BATCH)))
        .collect();
    let mut ok = 0;
    for c in clients {
        ok += c.await.expect("client panicked");
    }
    assert_eq!(ok, BATCH, "responses with their own request id");
    let log = std::mem::take(&mut *LOG.lock().unwrap());
    assert_eq!(log.len() as u64, 4 * BATCH, "log lines");
    assert!(
        log.iter()
            .all(|(store, expected)| *store == Some(*expected))
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn bench_requests(c: &mut Criterion) {
    let rt = runtime();
    let (instrumented, plain) = rt.block_on(async {
        let a = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let b = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addrs = (a.local_addr().unwrap(), b.local_addr().unwrap());
        tokio::spawn(run_server(a, true));
        tokio::spawn(run_server(b, false));
        addrs
    });
    let mut group = c.benchmark_group("load/requests");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("instrumented", |b| {
        b.iter(|| rt.block_on(batch(instrumented)))
    });
    group.bench_function("plain", |b| b.iter(|| rt.block_on(batch(plain))));
    group.finish();
}

// ---- 100 000 tasks ---------------------------------------------------------------------------

static VALUE: AsyncLocalStorage<u64> = AsyncLocalStorage::new();

#[async_resource(type = "LoadTask")]
async fn task_instrumented() -> u64 {
    tokio::task::yield_now().await;
    VALUE.get_store().map_or(0, |v| *v)
}

/// Padding that makes [`task_plain`]'s future as large as [`task_instrumented`]'s (checked
/// at the start of the bench).
const PAD: usize = 16;

async fn task_plain(value: u64) -> u64 {
    let pad = [value as u8; PAD];
    tokio::task::yield_now().await;
    black_box(&pad);
    value
}

fn bench_tasks(c: &mut Criterion) {
    let rt = runtime();
    let instr_size = VALUE.run(7, || std::mem::size_of_val(&task_instrumented()));
    let plain_size = std::mem::size_of_val(&task_plain(7));
    println!("future sizes: instrumented {instr_size} B, plain {plain_size} B");
    assert_eq!(instr_size, plain_size, "adjust PAD");
    let mut group = c.benchmark_group("load/tasks");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(TASKS));
    group.bench_function("instrumented", |b| {
        b.iter(|| {
            rt.block_on(async {
                let handles: Vec<_> = VALUE.run(7, || {
                    (0..TASKS)
                        .map(|_| tokio::spawn(task_instrumented()))
                        .collect()
                });
                let mut sum = 0;
                for h in handles {
                    sum += h.await.expect("task panicked");
                }
                assert_eq!(sum, 7 * TASKS);
            })
        })
    });
    group.bench_function("plain", |b| {
        b.iter(|| {
            rt.block_on(async {
                let handles: Vec<_> = (0..TASKS)
                    .map(|_| tokio::spawn(task_plain(black_box(7))))
                    .collect();
                let mut sum = 0;
                for h in handles {
                    sum += h.await.expect("task panicked");
                }
                assert_eq!(sum, 7 * TASKS);
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench_requests, bench_tasks);
criterion_main!(benches);
