//! End to end: tasks/s of N tokio "request" tasks that carry a request id, by each way of
//! carrying it, against tokio's `task_local!` in the same run (and Node's `AsyncLocalStorage`
//! on the same workload, `benches/e2e.mjs`, when `node` is installed).
//!
//! A request reads its id four times (as a logger would), awaits `yield_now()` twice and awaits
//! a nested async fn that reads it once more. A sample spawns N requests from a task, awaits
//! them all, and repeats until about `E2E_TASKS` tasks have run. Each sample runs in a fresh
//! process of this bench (after a warm-up sample there), so that no variant inherits the heap
//! another left. Rounds alternate the variants (the order rotates each round); the table gives the median tasks/s and the median of each
//! round's ratio to `task_local`, by wall-clock time and by the CPU time the process used (which
//! leaves out waits for a core on a loaded machine). An untimed pass then counts allocations per
//! task (all threads of the runtime) and the bytes held per spawned, still pending task. The
//! counting allocator is the global one in the timed rounds too: a thread-local increment per
//! allocation, for every variant alike.
//!
//! `cargo bench --bench e2e` runs it all. Environment: `E2E_ROUNDS` (default 7), `E2E_N`
//! (default `2000,100000`), `E2E_RUNTIMES` (default `current,multi`), `E2E_TASKS` (default
//! 200000), `E2E_NODE=0` to leave Node out, `E2E_ALLOCS=0` the allocation pass, `E2E_VARIANTS`
//! (names, comma-separated; for profiling one), `E2E_ISOLATE=0` to take every sample in this
//! process (one heap for all; what `perf record` of one variant wants). The variants
//! `task_local_arc` and `resources_only` are references that split the costs apart. A quick run:
//! `E2E_ROUNDS=1 E2E_N=2000 E2E_TASKS=20000 cargo bench --bench e2e`.

#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;

use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_hooks::{AsyncLocalStorage, Hooks, async_resource, bind, create_hook};
use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

static STORE: AsyncLocalStorage<u64> = AsyncLocalStorage::new().with_name("request-id");

tokio::task_local! {
    static TL: u64;
    static TL_ARC: Arc<u64>;
}

/// The request id as an OpenTelemetry context value.
struct RequestId(u64);

// ---- the workload, once per way of carrying the id ---------------------------------------------

/// A request's body: four reads of the id (the third keeps it, as a logger that holds on to it
/// would), two yields, and a nested async fn that reads it once more. Returns the sum of the reads.
macro_rules! request_body {
    (read: $read:expr, keep: $keep:expr, nested: $nested:expr) => {{
        let mut seen = $read;
        seen += $read;
        tokio::task::yield_now().await;
        seen += $keep;
        tokio::task::yield_now().await;
        seen += $read;
        seen + $nested.await
    }};
}

async fn request_plain(id: u64) -> u64 {
    request_body!(read: black_box(id), keep: black_box(id), nested: nested_plain(id))
}

async fn nested_plain(id: u64) -> u64 {
    black_box(id)
}

fn read_task_local() -> u64 {
    TL.with(|id| black_box(*id))
}

async fn request_task_local() -> u64 {
    request_body!(read: read_task_local(), keep: black_box(TL.get()), nested: nested_task_local())
}

async fn nested_task_local() -> u64 {
    read_task_local()
}

fn read_task_local_arc() -> u64 {
    TL_ARC.with(|id| black_box(**id))
}

fn keep_task_local_arc() -> u64 {
    *black_box(TL_ARC.with(Arc::clone))
}

async fn request_task_local_arc() -> u64 {
    request_body!(read: read_task_local_arc(), keep: keep_task_local_arc(), nested: nested_task_local_arc())
}

async fn nested_task_local_arc() -> u64 {
    read_task_local_arc()
}

fn read_otel() -> u64 {
    Context::map_current(|cx| black_box(cx.get::<RequestId>().expect("in a request").0))
}

fn keep_otel() -> u64 {
    black_box(Context::current())
        .get::<RequestId>()
        .expect("in a request")
        .0
}

async fn request_otel() -> u64 {
    request_body!(read: read_otel(), keep: keep_otel(), nested: nested_otel())
}

async fn nested_otel() -> u64 {
    read_otel()
}

fn read_store() -> u64 {
    STORE.with_store(|id| black_box(*id.expect("in a request")))
}

fn keep_store() -> u64 {
    *black_box(STORE.get_store()).expect("in a request")
}

async fn request_scope() -> u64 {
    request_body!(read: read_store(), keep: keep_store(), nested: nested_scope())
}

async fn nested_scope() -> u64 {
    read_store()
}

#[async_resource(type = "Request")]
async fn request_resource() -> u64 {
    request_body!(read: read_store(), keep: keep_store(), nested: nested_resource())
}

#[async_resource(type = "Nested")]
async fn nested_resource() -> u64 {
    read_store()
}

#[async_resource(type = "Request")]
async fn request_resource_by_hand(id: u64) -> u64 {
    request_body!(read: black_box(id), keep: black_box(id), nested: nested_resource_by_hand(id))
}

#[async_resource(type = "Nested")]
async fn nested_resource_by_hand(id: u64) -> u64 {
    black_box(id)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Plain,
    TaskLocal,
    /// Reference: `task_local!` holding an `Arc` that the "logger" clones, which is what
    /// `get_store`'s `Arc<T>` promises (one allocation per task, a refcount per kept read).
    TaskLocalArc,
    /// Reference: `node_style`'s three resources with the id passed by hand (no store).
    ResourcesOnly,
    Otel,
    Scope,
    NodeStyle,
    NodeStyleHook,
}

const VARIANTS: [Variant; 8] = [
    Variant::Plain,
    Variant::TaskLocal,
    Variant::TaskLocalArc,
    Variant::ResourcesOnly,
    Variant::Otel,
    Variant::Scope,
    Variant::NodeStyle,
    Variant::NodeStyleHook,
];

impl Variant {
    fn parse(name: &str) -> Variant {
        *VARIANTS
            .iter()
            .find(|v| v.name() == name.trim())
            .unwrap_or_else(|| panic!("E2E_VARIANTS: unknown variant {name}"))
    }

    fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::TaskLocal => "task_local",
            Variant::TaskLocalArc => "task_local_arc",
            Variant::ResourcesOnly => "resources_only",
            Variant::Otel => "otel",
            Variant::Scope => "scope",
            Variant::NodeStyle => "node_style",
            Variant::NodeStyleHook => "node_style_hook",
        }
    }

    /// Spawns request `id`.
    fn spawn(self, id: u64) -> JoinHandle<u64> {
        match self {
            Variant::Plain => tokio::spawn(request_plain(id)),
            Variant::TaskLocal => tokio::spawn(TL.scope(id, request_task_local())),
            Variant::TaskLocalArc => {
                tokio::spawn(TL_ARC.scope(Arc::new(id), request_task_local_arc()))
            }
            Variant::ResourcesOnly => {
                tokio::spawn(bind!(async move { request_resource_by_hand(id).await }))
            }
            Variant::Otel => tokio::spawn(
                request_otel().with_context(Context::current_with_value(RequestId(id))),
            ),
            Variant::Scope => tokio::spawn(STORE.scope(id, request_scope())),
            Variant::NodeStyle | Variant::NodeStyleHook => STORE.run(id, || {
                tokio::spawn(bind!(async move { request_resource().await }))
            }),
        }
    }

    /// The size of the future each variant spawns, and for the resource variants that of the
    /// request resource it makes when first polled.
    fn future_sizes(self) -> (usize, usize) {
        match self {
            Variant::Plain => (size_of_val(&request_plain(0)), 0),
            Variant::TaskLocal => (size_of_val(&TL.scope(0, request_task_local())), 0),
            Variant::TaskLocalArc => (
                size_of_val(&TL_ARC.scope(Arc::new(0), request_task_local_arc())),
                0,
            ),
            Variant::ResourcesOnly => (
                size_of_val(&bind!(async move { request_resource_by_hand(0).await })),
                size_of_val(&request_resource_by_hand(0)),
            ),
            Variant::Otel => (
                size_of_val(
                    &request_otel().with_context(Context::current_with_value(RequestId(0))),
                ),
                0,
            ),
            Variant::Scope => (size_of_val(&STORE.scope(0, request_scope())), 0),
            Variant::NodeStyle | Variant::NodeStyleHook => STORE.run(0, || {
                (
                    size_of_val(&bind!(async move { request_resource().await })),
                    size_of_val(&request_resource()),
                )
            }),
        }
    }
}

// ---- the hook of `node_style_hook` -------------------------------------------------------------

static INITS: AtomicU64 = AtomicU64::new(0);
static DESTROYS: AtomicU64 = AtomicU64::new(0);

/// Runs `f` with a hook counting `init` and `destroy` enabled for `node_style_hook`, and checks
/// that it saw three resources per request.
fn with_hook<R>(variant: Variant, requests: u64, f: impl FnOnce() -> R) -> R {
    if variant != Variant::NodeStyleHook {
        return f();
    }
    let hook = create_hook(
        Hooks::new()
            .init(|_, _, _, _| {
                INITS.fetch_add(1, Ordering::Relaxed);
            })
            .destroy(|_| {
                DESTROYS.fetch_add(1, Ordering::Relaxed);
            }),
    )
    .enable();
    let before = (
        INITS.load(Ordering::Relaxed),
        DESTROYS.load(Ordering::Relaxed),
    );
    let result = f();
    hook.disable();
    let seen = (
        INITS.load(Ordering::Relaxed) - before.0,
        DESTROYS.load(Ordering::Relaxed) - before.1,
    );
    assert_eq!(
        seen,
        (3 * requests, 3 * requests),
        "init and destroy events"
    );
    result
}

// ---- samples -----------------------------------------------------------------------------------

/// Spawns requests `0..n` and awaits them all, checking every result.
async fn batch(variant: Variant, n: u64, handles: &mut Vec<JoinHandle<u64>>) {
    handles.extend((0..n).map(|id| variant.spawn(id)));
    let mut sum = 0;
    for handle in handles.drain(..) {
        sum += handle.await.expect("a request panicked");
    }
    assert_eq!(
        sum,
        5 * (n * n.saturating_sub(1) / 2),
        "every read saw its request's id"
    );
}

/// CPU time used so far by all of this process's threads, in ns (Linux's per-thread
/// `schedstat`; `None` elsewhere). On a loaded machine it leaves out the time the runtime's
/// threads waited for a core, which wall-clock time does not.
fn cpu_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Runs `reps` batches of `n` requests from a task of `rt`; returns the wall-clock time they
/// took and the CPU time the process used meanwhile.
fn sample(rt: &Runtime, variant: Variant, n: u64, reps: u64) -> (Duration, Option<u64>) {
    with_hook(variant, n * reps, || {
        let cpu = cpu_ns();
        let wall = rt.block_on(async move {
            tokio::spawn(async move {
                let mut handles = Vec::with_capacity(n as usize);
                let start = Instant::now();
                for _ in 0..reps {
                    batch(variant, n, &mut handles).await;
                }
                start.elapsed()
            })
            .await
            .expect("the driver panicked")
        });
        (wall, cpu.zip(cpu_ns()).map(|(a, b)| b - a))
    })
}

/// [`sample`] in a fresh process of this bench, after a warm-up sample there: each variant
/// starts from the same heap, not from the one the variants sampled before it left (at N =
/// 100 000 that moved a variant's figure by a third).
fn isolated_sample(flavor: Flavor, variant: Variant, n: u64, reps: u64) -> (Duration, Option<u64>) {
    let spec = format!("{},{},{n},{reps}", flavor.short_name(), variant.name());
    let output = Command::new(std::env::current_exe().expect("the bench's own path"))
        .env("E2E_CHILD", &spec)
        .output()
        .expect("start a sample process");
    assert!(
        output.status.success(),
        "sample {spec} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("a sample prints text");
    let mut fields = text.split_whitespace();
    let wall = fields
        .next()
        .and_then(|w| w.parse().ok())
        .expect("wall-clock ns");
    let cpu = fields.next().and_then(|c| c.parse().ok());
    (Duration::from_nanos(wall), cpu)
}

/// The child side of [`isolated_sample`]: `spec` is `runtime,variant,n,reps`; prints the
/// wall-clock and CPU ns of the second of two samples.
fn child_sample(spec: &str) {
    let parts: Vec<&str> = spec.split(',').collect();
    let [flavor, variant, n, reps] = parts[..] else {
        panic!("E2E_CHILD: expected runtime,variant,n,reps, got {spec}");
    };
    let flavor = Flavor::parse(flavor);
    let variant = Variant::parse(variant);
    let (n, reps) = (n.parse().expect("n"), reps.parse().expect("reps"));
    let rt = flavor.builder().build().expect("tokio runtime");
    sample(&rt, variant, n, reps);
    let (wall, cpu) = sample(&rt, variant, n, reps);
    match cpu {
        Some(cpu) => println!("{} {cpu}", wall.as_nanos()),
        None => println!("{} -", wall.as_nanos()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Current,
    Multi,
}

impl Flavor {
    fn parse(name: &str) -> Flavor {
        match name.trim() {
            "current" => Flavor::Current,
            "multi" => Flavor::Multi,
            other => panic!("E2E_RUNTIMES: unknown runtime {other}"),
        }
    }

    fn short_name(self) -> &'static str {
        match self {
            Flavor::Current => "current",
            Flavor::Multi => "multi",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Flavor::Current => "current_thread",
            Flavor::Multi => "multi_thread(2)",
        }
    }

    fn builder(self) -> tokio::runtime::Builder {
        match self {
            Flavor::Current => tokio::runtime::Builder::new_current_thread(),
            Flavor::Multi => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(2);
                builder
            }
        }
    }
}

// ---- allocations -------------------------------------------------------------------------------

/// Allocations and bytes allocated by the runtime's threads, added as each one stops.
static WORKER_COUNTS: Mutex<(u64, u64)> = Mutex::new((0, 0));

/// Allocations and bytes allocated on every thread of a fresh runtime of `flavor` that runs a
/// batch of `n` requests, then one of `second` (the measured one: warm caches).
fn counted_runtime(flavor: Flavor, variant: Variant, n: u64, second: u64) -> (u64, u64) {
    *WORKER_COUNTS.lock().unwrap() = (0, 0);
    let before = (
        counting_alloc::allocations(),
        counting_alloc::allocated_bytes(),
    );
    let rt = flavor
        .builder()
        .on_thread_stop(|| {
            let mut counts = WORKER_COUNTS.lock().unwrap();
            counts.0 += counting_alloc::allocations();
            counts.1 += counting_alloc::allocated_bytes();
        })
        .build()
        .expect("tokio runtime");
    for requests in [n, second] {
        with_hook(variant, requests, || {
            rt.block_on(async move {
                tokio::spawn(async move {
                    let mut handles = Vec::with_capacity(n as usize);
                    batch(variant, requests, &mut handles).await;
                })
                .await
                .expect("the driver panicked")
            })
        });
    }
    drop(rt);
    let workers = *WORKER_COUNTS.lock().unwrap();
    (
        counting_alloc::allocations() - before.0 + workers.0,
        counting_alloc::allocated_bytes() - before.1 + workers.1,
    )
}

/// Allocations and bytes allocated per request, from the difference between a runtime that runs
/// a second batch of `n` and one whose second batch is empty.
fn allocations_per_task(flavor: Flavor, variant: Variant, n: u64) -> (f64, f64) {
    let with = counted_runtime(flavor, variant, n, n);
    let without = counted_runtime(flavor, variant, n, 0);
    let per_task = |a: u64, b: u64| (a as f64 - b as f64) / n as f64;
    (per_task(with.0, without.0), per_task(with.1, without.1))
}

/// Bytes held per spawned request before any has run: on a current-thread runtime, the
/// difference in this thread's net bytes across the spawns (the handles' vector made before).
fn live_bytes_per_task(variant: Variant, n: u64) -> f64 {
    let rt = Flavor::Current.builder().build().expect("tokio runtime");
    let mut held = 0;
    for _ in 0..2 {
        held = with_hook(variant, n, || {
            rt.block_on(async move {
                let mut handles = Vec::with_capacity(n as usize);
                let before = counting_alloc::net_bytes();
                handles.extend((0..n).map(|id| variant.spawn(id)));
                let held = counting_alloc::net_bytes() - before;
                for handle in handles {
                    handle.await.expect("a request panicked");
                }
                held
            })
        });
    }
    held as f64 / n as f64
}

// ---- Node --------------------------------------------------------------------------------------

/// One sample of `benches/e2e.mjs` (tasks/s of `plain` and `als`), or `None` without `node`.
fn node_sample(n: u64, reps: u64) -> Option<(f64, f64)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/e2e.mjs");
    let output = Command::new("node")
        .args([script, &n.to_string(), &reps.to_string()])
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!("node: {}", String::from_utf8_lossy(&output.stderr));
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    Some((field("plain")?, field("als")?))
}

// ---- harness -----------------------------------------------------------------------------------

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().expect(name))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter or `--list` from other tooling is ignored.
    if let Ok(spec) = std::env::var("E2E_CHILD") {
        return child_sample(&spec);
    }
    let rounds = env_u64("E2E_ROUNDS", 7).max(1) as usize;
    let tasks = env_u64("E2E_TASKS", 200_000);
    let ns: Vec<u64> = std::env::var("E2E_N")
        .unwrap_or_else(|_| "2000,100000".into())
        .split(',')
        .map(|n| n.trim().parse().expect("E2E_N"))
        .collect();
    let runtimes = std::env::var("E2E_RUNTIMES").unwrap_or_else(|_| "current,multi".into());
    let flavors: Vec<Flavor> = runtimes.split(',').map(Flavor::parse).collect();
    let isolate = std::env::var("E2E_ISOLATE").map_or(true, |v| v != "0");
    let with_node = std::env::var("E2E_NODE").map_or(true, |v| v != "0");
    let with_allocs = std::env::var("E2E_ALLOCS").map_or(true, |v| v != "0");
    let chosen: Vec<Variant> = match std::env::var("E2E_VARIANTS") {
        Ok(names) => names.split(',').map(Variant::parse).collect(),
        Err(_) => VARIANTS.to_vec(),
    };

    println!("future sizes (spawned; request resource):");
    for &variant in &chosen {
        let (spawned, inner) = variant.future_sizes();
        println!("  {:<16} {spawned:>4} B  {inner:>4} B", variant.name());
    }

    // In-process samples share these runtimes; isolated ones make their own.
    let runtimes: Vec<(Flavor, Option<Runtime>)> = flavors
        .iter()
        .map(|&f| {
            (
                f,
                (!isolate).then(|| f.builder().build().expect("tokio runtime")),
            )
        })
        .collect();
    // samples[runtime][n][variant][round]: tasks per second of wall-clock and of CPU time;
    // node[n] = (plain, als) per round.
    let mut samples = vec![vec![vec![Vec::new(); chosen.len()]; ns.len()]; runtimes.len()];
    let mut node: Vec<Vec<(f64, f64)>> = vec![Vec::new(); ns.len()];
    // Round 0 warms up (caches, the runtimes' queues, the allocator) and is not kept; an
    // isolated sample warms up in its own process.
    for round in usize::from(isolate)..=rounds {
        for (r, (flavor, rt)) in runtimes.iter().enumerate() {
            for (i, &n) in ns.iter().enumerate() {
                let reps = (tasks / n).max(1);
                for k in 0..chosen.len() {
                    let v = (k + round) % chosen.len();
                    let (wall, cpu) = match rt {
                        Some(rt) => sample(rt, chosen[v], n, reps),
                        None => isolated_sample(*flavor, chosen[v], n, reps),
                    };
                    let per_second = |seconds: f64| (n * reps) as f64 / seconds;
                    if round > 0 {
                        samples[r][i][v].push((
                            per_second(wall.as_secs_f64()),
                            cpu.map_or(f64::NAN, |ns| per_second(ns as f64 / 1e9)),
                        ));
                    }
                }
            }
        }
        if with_node && round > 0 {
            for (i, &n) in ns.iter().enumerate() {
                if let Some(s) = node_sample(n, (tasks / n).max(1)) {
                    node[i].push(s);
                }
            }
        }
        eprint!("round {round}/{rounds} done\r");
    }
    eprintln!();

    let task_local = chosen.iter().position(|&v| v == Variant::TaskLocal);
    println!(
        "\nmedian of {rounds} alternating rounds, about {tasks} tasks per sample; ratios: median of each round's ratio to task_local, by wall-clock and by CPU time"
    );
    println!(
        "{:<16} {:>7} {:<16} {:>12} {:>8} {:>9}",
        "runtime", "N", "variant", "tasks/s", "ratio", "cpu ratio"
    );
    for (r, (flavor, _)) in runtimes.iter().enumerate() {
        for (i, &n) in ns.iter().enumerate() {
            for (v, variant) in chosen.iter().enumerate() {
                let ours = &samples[r][i][v];
                let mut rates: Vec<f64> = ours.iter().map(|s| s.0).collect();
                let ratio = |pick: fn(&(f64, f64)) -> f64| match task_local {
                    Some(t) => median(
                        &mut ours
                            .iter()
                            .zip(&samples[r][i][t])
                            .map(|(a, b)| pick(a) / pick(b))
                            .collect::<Vec<_>>(),
                    ),
                    None => f64::NAN,
                };
                println!(
                    "{:<16} {:>7} {:<16} {:>12.0} {:>7.3}x {:>8.3}x",
                    flavor.name(),
                    n,
                    variant.name(),
                    median(&mut rates),
                    ratio(|s| s.0),
                    ratio(|s| s.1)
                );
            }
        }
    }
    for (i, &n) in ns.iter().enumerate() {
        if node[i].is_empty() {
            continue;
        }
        let mut plain: Vec<f64> = node[i].iter().map(|s| s.0).collect();
        let mut als: Vec<f64> = node[i].iter().map(|s| s.1).collect();
        println!(
            "{:<16} {:>7} {:<16} {:>12.0}\n{:<16} {:>7} {:<16} {:>12.0}",
            "node",
            n,
            "plain",
            median(&mut plain),
            "node",
            n,
            "als.run",
            median(&mut als)
        );
    }

    if !with_allocs {
        return;
    }
    println!("\nallocations per task (all threads; second batch of a fresh runtime)");
    println!(
        "{:<16} {:>7} {:<16} {:>8} {:>12} {:>8} {:>12}",
        "runtime", "N", "variant", "allocs", "-task_local", "bytes", "live bytes"
    );
    for &flavor in &flavors {
        for &n in &ns {
            let baseline = allocations_per_task(flavor, Variant::TaskLocal, n).0;
            for &variant in &chosen {
                let (allocs, bytes) = allocations_per_task(flavor, variant, n);
                let live = if flavor == Flavor::Current {
                    format!("{:>12.1}", live_bytes_per_task(variant, n))
                } else {
                    format!("{:>12}", "-")
                };
                println!(
                    "{:<16} {:>7} {:<16} {:>8.2} {:>+12.2} {:>8.1} {live}",
                    flavor.name(),
                    n,
                    variant.name(),
                    allocs,
                    allocs - baseline,
                    bytes
                );
            }
        }
    }
}
