//! The bridges' costs against their peers in the same run: `StoreFields` per event against a
//! `fmt` layer without it (writing to `io::sink`), and `otel::propagate` per poll against
//! OpenTelemetry's own `FutureExt::with_context`.
//!
//! `cargo bench --bench bridges`

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, Waker};

use async_hooks::tracing_bridge::StoreFields;
use async_hooks::{AsyncLocalStorage, BindContext, otel};
use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Dispatch;
use tracing_subscriber::prelude::*;

mod common;
use common::poll_to_ready;

static REQUEST_ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new();

fn fmt_dispatch(store_fields: bool) -> Dispatch {
    if store_fields {
        Dispatch::new(
            tracing_subscriber::registry()
                .with(StoreFields::new().field("request_id", &REQUEST_ID))
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink)),
        )
    } else {
        Dispatch::new(
            tracing_subscriber::registry()
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink)),
        )
    }
}

fn store_fields(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_fields_per_event");
    let (plain, with_fields) = (fmt_dispatch(false), fmt_dispatch(true));
    // Peer of the rows with a store: the same line, the id passed by hand.
    g.bench_function("fmt/explicit_field", |b| {
        tracing::dispatcher::with_default(&plain, || {
            b.iter(|| tracing::info!(n = black_box(1u64), request_id = 7u64, "done"))
        })
    });
    g.bench_function("store_fields/store_set", |b| {
        tracing::dispatcher::with_default(&with_fields, || {
            REQUEST_ID.run(7, || b.iter(|| tracing::info!(n = black_box(1u64), "done")))
        })
    });
    // Peer of the empty-store row: no field at all.
    g.bench_function("fmt/no_field", |b| {
        tracing::dispatcher::with_default(&plain, || {
            b.iter(|| tracing::info!(n = black_box(1u64), "done"))
        })
    });
    g.bench_function("store_fields/store_empty", |b| {
        tracing::dispatcher::with_default(&with_fields, || {
            b.iter(|| tracing::info!(n = black_box(1u64), "done"))
        })
    });
    g.finish();
}

/// Never ready: every poll is a re-poll.
struct Forever;

impl Future for Forever {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<()> {
        Poll::Pending
    }
}

/// A context with a (remote) span, as inside a traced request.
fn request_context() -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
        SpanId::from(0x00f0_67aa_0ba9_02b7),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

fn repoll(b: &mut criterion::Bencher<'_>, fut: Pin<&mut (impl Future<Output = ()> + ?Sized)>) {
    let mut fut = fut;
    let mut cx = TaskContext::from_waker(Waker::noop());
    b.iter(|| black_box(fut.as_mut().poll(&mut cx)));
}

fn propagate(c: &mut Criterion) {
    let mut g = c.benchmark_group("otel_per_poll");
    let hook = otel::propagate();
    g.bench_function("with_context/repoll", |b| {
        let mut fut = std::pin::pin!(Forever.with_context(request_context()));
        repoll(b, fut.as_mut());
    });
    g.bench_function("propagate/repoll", |b| {
        let fut = {
            let _current = request_context().attach();
            Forever.bind_context()
        };
        let mut fut = std::pin::pin!(fut);
        repoll(b, fut.as_mut());
    });
    // The same bound future with the hook off: what the resource costs by itself.
    hook.disable();
    g.bench_function("bind_context_no_hook/repoll", |b| {
        let mut fut = std::pin::pin!(Forever.bind_context());
        repoll(b, fut.as_mut());
    });
    otel::propagate();
    // Creating the wrapped future and polling it to completion once.
    let cx = request_context();
    g.bench_function("with_context/create_and_poll", |b| {
        b.iter(|| poll_to_ready(std::future::ready(black_box(1)).with_context(cx.clone())))
    });
    g.bench_function("propagate/create_and_poll", |b| {
        let _current = cx.clone().attach();
        b.iter(|| poll_to_ready(std::future::ready(black_box(1)).bind_context()))
    });
    g.finish();
    hook.disable();
}

criterion_group!(benches, store_fields, propagate);
criterion_main!(benches);
