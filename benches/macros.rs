//! `#[async_resource]` lifecycles and re-polls against a plain `async fn`, tokio's
//! `task_local!` `scope`, and `tracing`'s `#[instrument]` (no subscriber, and a registry).
//!
//! `cargo bench --bench macros`

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use async_hooks::{AsyncLocalStorage, async_resource};
mod common;

use common::{counting_hook, poll_to_ready};
use criterion::{Criterion, criterion_group, criterion_main};

static STORE: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
static SHARED: AsyncLocalStorage<std::sync::Arc<String>> = AsyncLocalStorage::new();

tokio::task_local! {
    static TASK_LOCAL: u64;
}

/// Never ready: for measuring re-polls alone.
struct Forever;

impl Future for Forever {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

async fn plain(x: u64) -> u64 {
    black_box(x) + 1
}

#[async_resource]
async fn annotated(x: u64) -> u64 {
    black_box(x) + 1
}

#[tracing::instrument]
async fn instrumented(x: u64) -> u64 {
    black_box(x) + 1
}

async fn plain_forever() {
    Forever.await
}

#[async_resource]
async fn annotated_forever() {
    Forever.await
}

#[tracing::instrument]
async fn instrumented_forever() {
    Forever.await
}

fn lifecycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("lifecycle (call + poll to ready + drop)");
    group.bench_function("plain async fn", |b| b.iter(|| poll_to_ready(plain(1))));
    group.bench_function("tokio task_local scope(u64)", |b| {
        b.iter(|| poll_to_ready(TASK_LOCAL.scope(black_box(7), plain(1))))
    });
    group.bench_function("#[async_resource], no hook", |b| {
        b.iter(|| poll_to_ready(annotated(1)))
    });
    // The async `run`, the direct peer of tokio's `scope`.
    group.bench_function("AsyncLocalStorage::scope(u64)", |b| {
        b.iter(|| poll_to_ready(STORE.scope(black_box(7), plain(1))))
    });
    STORE.run(7, || {
        group.bench_function(
            "#[async_resource], no hook, one storage value captured",
            |b| b.iter(|| poll_to_ready(annotated(1))),
        );
    });
    group.bench_function("tokio task_local scope(Arc)", |b| {
        let value = std::sync::Arc::new(String::from("request"));
        b.iter(|| poll_to_ready(SCOPED_ARC.scope(value.clone(), plain(1))))
    });
    SHARED.run(std::sync::Arc::new(String::from("request")), || {
        group.bench_function(
            "#[async_resource], no hook, one Arc storage value captured",
            |b| b.iter(|| poll_to_ready(annotated(1))),
        );
    });
    // A request's shape: a fresh context each time, one resource made inside it. The two rows
    // above make every resource inside one long `run`, so whatever a context costs once is
    // spread over all of them.
    group.bench_function("run + #[async_resource] inside it, no hook", |b| {
        b.iter(|| STORE.run(black_box(7), || poll_to_ready(annotated(1))))
    });
    group.bench_function("tracing #[instrument], no subscriber", |b| {
        b.iter(|| poll_to_ready(instrumented(1)))
    });
    let hook = counting_hook().enable();
    group.bench_function("#[async_resource], counting hook", |b| {
        b.iter(|| poll_to_ready(annotated(1)))
    });
    hook.disable();
    tracing::subscriber::with_default(tracing_subscriber::registry(), || {
        group.bench_function("tracing #[instrument], registry subscriber", |b| {
            b.iter(|| poll_to_ready(instrumented(1)))
        });
    });
    group.finish();
}

tokio::task_local! {
    static SCOPED_ARC: std::sync::Arc<String>;
}

fn repoll(c: &mut Criterion) {
    let mut group = c.benchmark_group("re-poll of a pending future");
    let mut cx = Context::from_waker(Waker::noop());
    let mut bench = |name: &str, mut fut: Pin<Box<dyn Future<Output = ()>>>| {
        group.bench_function(name, |b| b.iter(|| black_box(fut.as_mut().poll(&mut cx))));
    };
    bench("plain async fn", Box::pin(plain_forever()));
    bench(
        "tokio task_local scope(u64)",
        Box::pin(TASK_LOCAL.scope(7, plain_forever())),
    );
    bench("#[async_resource], no hook", Box::pin(annotated_forever()));
    bench(
        "AsyncLocalStorage::scope(u64)",
        Box::pin(STORE.scope(7, plain_forever())),
    );
    bench(
        "#[async_resource], no hook, one storage value captured",
        STORE.run(7, || Box::pin(annotated_forever())),
    );
    bench(
        "tracing #[instrument], no subscriber",
        Box::pin(instrumented_forever()),
    );
    let hook = counting_hook().enable();
    bench(
        "#[async_resource], counting hook",
        Box::pin(annotated_forever()),
    );
    hook.disable();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry());
    let fut = tracing::dispatcher::with_default(&dispatch, || Box::pin(instrumented_forever()));
    let _guard = tracing::dispatcher::set_default(&dispatch);
    bench("tracing #[instrument], registry subscriber", fut);
    group.finish();
}

/// The re-polls above through a generic call, the future's type known, as a combinator
/// (`join!`, `select!`) polls its children: the poll inlines into the loop, so neither side
/// pays a `dyn` call into a state machine. What remains is the context switch itself (plus
/// the state machine's jump), which `benches/instructions.rs` counts exactly.
fn repoll_in_place(c: &mut Criterion) {
    fn bench<F: Future<Output = ()>>(
        group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        future: F,
    ) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut future = Box::pin(future);
        group.bench_function(name, |b| {
            b.iter(|| black_box(future.as_mut().poll(&mut cx)))
        });
    }
    let mut group = c.benchmark_group("re-poll of a pending future, polled in place");
    bench(&mut group, "plain async fn", plain_forever());
    bench(
        &mut group,
        "tokio task_local scope(u64)",
        TASK_LOCAL.scope(7, plain_forever()),
    );
    bench(
        &mut group,
        "#[async_resource], no hook",
        annotated_forever(),
    );
    group.finish();
}

criterion_group!(benches, lifecycle, repoll, repoll_in_place);
criterion_main!(benches);
