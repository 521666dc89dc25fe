//! `otel::propagate`, `otel::inject` and `otel::extract` against OpenTelemetry's SDK with its
//! in-memory exporter: incoming trace ids, parents across spawned bound tasks, nothing left
//! attached on the executor's threads, 100 interleaved requests each in its own trace.
//!
//! `cargo test --test otel`
#![cfg(feature = "opentelemetry")]

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use async_hooks::{AsyncResource, BindContext, async_resource, bind, otel};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracer, SdkTracerProvider, SpanData};

use support::futures::{YieldOnce, poll_to_ready};

/// The provider must outlive the checks: its shutdown (when the last handle goes) clears the
/// in-memory exporter.
fn setup() -> (SdkTracerProvider, SdkTracer, InMemorySpanExporter) {
    otel::propagate();
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    (provider.clone(), provider.tracer("otel-test"), exporter)
}

fn incoming(i: u64) -> (TraceId, SpanId, http::HeaderMap) {
    let (trace, span) = (
        TraceId::from(0x4bf9_0000_0000_0000_0000_0000_0000_0000 + u128::from(i)),
        SpanId::from(0x00f0_0000_0000_0000 + i),
    );
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "traceparent",
        format!("00-{trace}-{span}-01").parse().unwrap(),
    );
    headers.insert("baggage", format!("req={i}").parse().unwrap());
    (trace, span, headers)
}

/// Whether this thread has no OpenTelemetry context attached (no span, no baggage).
fn nothing_attached() -> bool {
    Context::map_current(|cx| !cx.has_active_span() && cx.baggage().is_empty())
}

/// Checks after every poll of the (unbound) wrapper that the bound future inside left nothing
/// attached on the executor's thread.
struct CheckedPolls<F>(Pin<Box<F>>);

impl<F: Future> Future for CheckedPolls<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        assert!(nothing_attached(), "attached before the poll");
        let out = self.0.as_mut().poll(cx);
        assert!(nothing_attached(), "a context leaked out of a poll");
        out
    }
}

fn span<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name} in {spans:#?}"))
}

#[test]
fn the_trace_id_and_baggage_come_from_the_incoming_traceparent() {
    let _serial = support::serial();
    let (_provider, tracer, exporter) = setup();
    let (trace, remote_span, headers) = incoming(1);
    let request = {
        let _incoming = otel::extract(&headers).attach();
        bind!(async move {
            YieldOnce(false).await;
            assert_eq!(Context::current().baggage().get("req"), Some(&"1".into()));
            drop(tracer.start("request"));
        })
    };
    assert!(nothing_attached());
    poll_to_ready(CheckedPolls(Box::pin(request)));
    let spans = exporter.get_finished_spans().unwrap();
    let request = span(&spans, "request");
    assert_eq!(request.span_context.trace_id(), trace);
    assert_eq!(request.parent_span_id, remote_span);
    assert!(request.parent_span_is_remote);

    // And back out: the request's context written into outgoing headers.
    let cx = Context::new().with_remote_span_context(request.span_context.clone());
    let mut out = http::HeaderMap::new();
    {
        let _current = cx.attach();
        otel::inject(&mut out);
    }
    assert_eq!(
        out["traceparent"],
        format!("00-{trace}-{}-01", request.span_context.span_id())
    );
    assert_eq!(otel::extract(&out).span().span_context().trace_id(), trace);
}

fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
}

/// Starts the span `parent`, and the span `child` in a task spawned (bound) while `parent` is
/// current.
async fn parent_and_spawned_child(tracer: SdkTracer, parent: &'static str, child: &'static str) {
    let cx = Context::current_with_span(tracer.start(parent));
    let task = {
        let _current = cx.clone().attach();
        tokio::spawn(bind!(async move {
            tokio::task::yield_now().await;
            drop(tracer.start(child));
        }))
    };
    task.await.unwrap();
}

#[test]
fn a_span_in_a_spawned_bound_task_has_the_request_span_as_parent() {
    let _serial = support::serial();
    let (_provider, tracer, exporter) = setup();
    let rt = two_workers();
    rt.block_on(async move {
        let request = parent_and_spawned_child(tracer, "request", "child").bind_context();
        tokio::spawn(CheckedPolls(Box::pin(request))).await.unwrap();
    });
    let spans = exporter.get_finished_spans().unwrap();
    let (request, child) = (span(&spans, "request"), span(&spans, "child"));
    assert_eq!(child.parent_span_id, request.span_context.span_id());
    assert_eq!(
        child.span_context.trace_id(),
        request.span_context.trace_id()
    );
}

#[derive(Debug, PartialEq)]
struct Marker(u32);

#[test]
fn nothing_stays_attached_after_a_poll_and_inside_it_is_the_creators_context() {
    let _serial = support::serial();
    otel::propagate();
    let job = {
        let _current = Context::current_with_value(Marker(1)).attach();
        bind!(async {
            for _ in 0..3 {
                assert_eq!(Context::current().get(), Some(&Marker(1)));
                YieldOnce(false).await;
            }
            // A nested resource created here sees the same context, polled inside.
            let nested = {
                let _inner = Context::current_with_value(Marker(2)).attach();
                bind!(async { Context::current().get::<Marker>().map(|m| m.0) })
            };
            assert_eq!(Context::current().get(), Some(&Marker(1)));
            nested.await
        })
    };
    let mut job = Box::pin(job);
    let mut polls = 0;
    let mut cx = TaskContext::from_waker(std::task::Waker::noop());
    let out = loop {
        polls += 1;
        let poll = job.as_mut().poll(&mut cx);
        assert_eq!(
            Context::current().get::<Marker>(),
            None,
            "after poll {polls}"
        );
        if let Poll::Ready(out) = poll {
            break out;
        }
    };
    assert_eq!(out, Some(2));
    assert_eq!(polls, 4);

    // `run_in_async_scope` too, also when the closure panics.
    let resource = {
        let _current = Context::current_with_value(Marker(3)).attach();
        AsyncResource::new("Job")
    };
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        resource.run_in_async_scope(|| {
            assert_eq!(Context::current().get(), Some(&Marker(3)));
            panic!("in scope")
        })
    }));
    assert!(panicked.is_err());
    assert_eq!(Context::current().get::<Marker>(), None);
}

#[test]
fn propagate_is_one_hook_per_process() {
    let _serial = support::serial();
    let (first, second) = (otel::propagate(), otel::propagate());
    assert!(first.is_enabled() && second.is_enabled());
    let job = || {
        let _current = Context::current_with_value(Marker(4)).attach();
        AsyncResource::new("Job")
    };
    // Disabling the second handle stops propagation: both are the same hook.
    second.disable();
    assert!(!first.is_enabled());
    job().run_in_async_scope(|| assert_eq!(Context::current().get::<Marker>(), None));
    otel::propagate();
    job().run_in_async_scope(|| assert_eq!(Context::current().get(), Some(&Marker(4))));
}

#[async_resource(type = "Db")]
async fn db(tracer: SdkTracer, i: u64) {
    tokio::task::yield_now().await;
    let mut span = tracer.start("db");
    opentelemetry::trace::Span::set_attribute(&mut span, KeyValue::new("req", i as i64));
}

async fn handle(tracer: SdkTracer, i: u64) {
    let mut span = tracer.start("request");
    opentelemetry::trace::Span::set_attribute(&mut span, KeyValue::new("req", i as i64));
    let cx = Context::current_with_span(span);
    let (query, child) = {
        let _current = cx.clone().attach();
        let t = tracer.clone();
        let child = tokio::spawn(bind!(async move {
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            let mut span = t.start("child");
            opentelemetry::trace::Span::set_attribute(&mut span, KeyValue::new("req", i as i64));
        }));
        (db(tracer, i), child)
    };
    query.await;
    child.await.unwrap();
}

#[test]
fn a_hundred_interleaved_requests_on_two_workers_each_in_its_own_trace() {
    let _serial = support::serial();
    let (_provider, tracer, exporter) = setup();
    let rt = two_workers();
    let mut expected = HashMap::new();
    rt.block_on(async {
        let mut requests = Vec::new();
        for i in 0..100 {
            let (trace, remote_span, headers) = incoming(i);
            expected.insert(i as i64, (trace, remote_span));
            let request = {
                let _incoming = otel::extract(&headers).attach();
                handle(tracer.clone(), i).bind_context()
            };
            requests.push(tokio::spawn(CheckedPolls(Box::pin(request))));
        }
        for r in requests {
            r.await.unwrap();
        }
    });
    drop(rt);
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 300);
    let req_of = |s: &SpanData| {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == "req")
            .map(|kv| match kv.value {
                opentelemetry::Value::I64(i) => i,
                _ => unreachable!(),
            })
            .unwrap()
    };
    let mut by_req: HashMap<i64, HashMap<String, &SpanData>> = HashMap::new();
    for s in &spans {
        by_req
            .entry(req_of(s))
            .or_default()
            .insert(s.name.to_string(), s);
    }
    assert_eq!(by_req.len(), 100);
    for (i, named) in &by_req {
        let (trace, remote_span) = expected[i];
        let request = named["request"];
        assert_eq!(request.parent_span_id, remote_span, "request {i}");
        for name in ["request", "db", "child"] {
            assert_eq!(named[name].span_context.trace_id(), trace, "{name} of {i}");
        }
        for name in ["db", "child"] {
            assert_eq!(
                named[name].parent_span_id,
                request.span_context.span_id(),
                "{name} of {i}"
            );
        }
    }
}

static REQUEST_NO: async_hooks::AsyncLocalStorage<u64> = async_hooks::AsyncLocalStorage::new();

#[test]
fn scope_layer_extract_trace_context_makes_the_incoming_context_the_requests() {
    use tower::{Layer, ServiceExt, service_fn};
    let _serial = support::serial();
    let (_provider, tracer, exporter) = setup();
    let handler = service_fn(move |_: http::Request<()>| {
        let tracer = tracer.clone();
        async move {
            parent_and_spawned_child(tracer, "handler", "spawned").await;
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        }
    });
    let svc = async_hooks::tower::ScopeLayer::new(&REQUEST_NO, |_: &http::Request<()>| 1)
        .extract_trace_context()
        .layer(handler);
    let (trace, remote_span, headers) = incoming(7);
    let rt = two_workers();
    rt.block_on(async {
        let mut req = http::Request::new(());
        *req.headers_mut() = headers;
        let res = tokio::spawn(CheckedPolls(Box::pin(svc.clone().oneshot(req))));
        res.await.unwrap().unwrap();
        // No headers: a trace of its own.
        let res = tokio::spawn(CheckedPolls(Box::pin(svc.oneshot(http::Request::new(())))));
        res.await.unwrap().unwrap();
    });
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 4);
    let traced: Vec<_> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect();
    assert_eq!(traced.len(), 2, "{spans:#?}");
    let handler = span(&spans, "handler");
    assert_eq!(handler.span_context.trace_id(), trace);
    assert_eq!(handler.parent_span_id, remote_span);
    let spawned = span(&spans, "spawned");
    assert_eq!(spawned.parent_span_id, handler.span_context.span_id());
    let untraced: Vec<_> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() != trace)
        .collect();
    let root = untraced.iter().find(|s| s.name == "handler").unwrap();
    assert_eq!(root.parent_span_id, SpanId::INVALID, "no header, no parent");
}

#[test]
fn a_resource_keeps_its_context_alive_no_longer_than_itself() {
    let _serial = support::serial();
    let (_provider, tracer, exporter) = setup();
    let job = {
        let _current = Context::current_with_span(tracer.start("held")).attach();
        AsyncResource::new("Job")
    };
    // The resource holds the only reference to the span's context: not ended yet.
    job.run_in_async_scope(|| assert!(Context::current().has_active_span()));
    job.run_in_async_scope(|| {});
    assert!(exporter.get_finished_spans().unwrap().is_empty());
    // Destroying it ends the span, though this thread polled it last.
    drop(job);
    assert_eq!(
        span(&exporter.get_finished_spans().unwrap(), "held").name,
        "held"
    );
}
