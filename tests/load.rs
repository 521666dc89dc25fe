//! Load test: the request-id logger of `examples/request_logger.rs` under load.
//!
//! An in-process hyper 1.x server on `127.0.0.1` (tokio multi-thread runtime) serves requests
//! at concurrency 256 over keep-alive loopback connections. Each request runs in
//! `REQUEST_ID.run(id, …)` and fans out through nested `#[async_resource]` fns to a
//! `tokio::spawn(bind!(…))` task and a `spawn_blocking(bind!(…))` closure. Every log line and
//! every response body must carry its own request's id.
//!
//! 2 000 requests by default; `ASYNC_HOOKS_LONG=1` runs the 20 000.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_hooks::{AsyncLocalStorage, async_resource, bind};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

static REQUEST_ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new().with_name("request-id");

/// `(store seen when logging, id of the request that logged)` for every log line.
static LOG: Mutex<Vec<(Option<u64>, u64)>> = Mutex::new(Vec::new());

const CONCURRENCY: u64 = 256;
/// Log lines written per request: start, db query done, rendered, finish.
const LINES_PER_REQUEST: usize = 4;

fn log_with_id(expected: u64) {
    let store = REQUEST_ID.get_store().map(|id| *id);
    LOG.lock().unwrap().push((store, expected));
}

#[async_resource(type = "HTTPINCOMINGMESSAGE")]
async fn serve(expected: u64) -> String {
    log_with_id(expected);
    let user = query_db(expected).await;
    let page = render(expected, user).await;
    log_with_id(expected);
    match REQUEST_ID.get_store() {
        Some(id) if page == format!("<p>user#{id}</p>#{id}") => id.to_string(),
        Some(id) => format!("{id} (page {page:?})"),
        None => "-".to_string(),
    }
}

#[async_resource(type = "DBQuery")]
async fn query_db(expected: u64) -> String {
    let task = tokio::spawn(bind!(async move {
        // Let the requests interleave across threads.
        if expected % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            tokio::task::yield_now().await;
        }
        log_with_id(expected);
        REQUEST_ID.get_store().map_or(u64::MAX, |id| *id)
    }));
    let id = task.await.expect("the db task panicked");
    format!("user#{id}")
}

#[async_resource(type = "Render")]
async fn render(expected: u64, user: String) -> String {
    let job = tokio::task::spawn_blocking(bind!(move || {
        log_with_id(expected);
        let id = REQUEST_ID.get_store().map_or(u64::MAX, |id| *id);
        format!("<p>{user}</p>#{id}")
    }));
    job.await.expect("the render job panicked")
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(id) = req.uri().path()[1..].parse::<u64>().ok() else {
        let mut res = Response::new(Full::new(Bytes::from_static(b"not found")));
        *res.status_mut() = StatusCode::NOT_FOUND;
        return Ok(res);
    };
    let body = REQUEST_ID.run(id, || serve(id)).await;
    Ok(Response::new(Full::new(Bytes::from(body))))
}

async fn run_server(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One client connection: takes request ids from `next` until `total` and sends them over
/// the same keep-alive connection, collecting `(id, body)`.
async fn client(
    addr: SocketAddr,
    next: Arc<AtomicU64>,
    total: u64,
) -> Result<Vec<(u64, String)>, BoxError> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let mut out = Vec::new();
    loop {
        let id = next.fetch_add(1, Ordering::Relaxed);
        if id >= total {
            break;
        }
        sender.ready().await?;
        let req = Request::get(format!("/{id}"))
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let res = sender.send_request(req).await?;
        if res.status() != StatusCode::OK {
            return Err(format!("request {id}: status {}", res.status()).into());
        }
        let body = res.into_body().collect().await?.to_bytes();
        out.push((id, String::from_utf8(body.to_vec())?));
    }
    drop(sender);
    conn.await??;
    Ok(out)
}

#[test]
fn load_every_response_and_log_line_carries_its_request_id() {
    let total: u64 = if std::env::var_os("ASYNC_HOOKS_LONG").is_some_and(|v| v == "1") {
        20_000
    } else {
        2_000
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let responses = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let server = tokio::spawn(run_server(listener));
        let next = Arc::new(AtomicU64::new(0));
        let clients: Vec<_> = (0..CONCURRENCY)
            .map(|_| tokio::spawn(client(addr, next.clone(), total)))
            .collect();
        let all = tokio::time::timeout(Duration::from_secs(60), async {
            let mut all = Vec::new();
            for c in clients {
                all.extend(c.await.expect("client panicked").expect("client failed"));
            }
            all
        })
        .await
        .expect("load test did not finish within 60 s");
        server.abort();
        all
    });
    let elapsed = started.elapsed();
    drop(runtime);

    let log = std::mem::take(&mut *LOG.lock().unwrap());
    let bad_lines = log
        .iter()
        .filter(|(store, expected)| *store != Some(*expected))
        .count();
    let bad_responses = responses
        .iter()
        .filter(|(id, body)| *body != id.to_string())
        .count();
    let mut ids: Vec<u64> = responses.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    println!(
        "load: {total} requests at concurrency {CONCURRENCY}: {} responses, {} log lines, \
         {bad_responses} bad responses, {bad_lines} bad log lines, {elapsed:?} ({:.0} req/s)",
        responses.len(),
        log.len(),
        total as f64 / elapsed.as_secs_f64(),
    );
    assert_eq!(bad_lines, 0, "log lines with another request's id");
    assert_eq!(bad_responses, 0, "responses with another request's id");
    assert_eq!(responses.len() as u64, total, "responses");
    assert_eq!(ids.len() as u64, total, "distinct request ids answered");
    assert_eq!(log.len(), LINES_PER_REQUEST * total as usize, "log lines");
}
