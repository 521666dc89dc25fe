//! OpenTelemetry's [`Context`] follows every async resource (cargo feature `opentelemetry`).
//!
//! After [`propagate()`], inside every async resource `Context::current()` is the context
//! that was current where the resource was created: a span started in a request is the parent
//! of spans started in work the request spawned with `bind!`, on any thread, with no
//! `.with_context(..)` at each spawn. Outside resources nothing is attached.
//!
//! [`inject`] and [`extract`] carry the context over HTTP headers with the globally registered
//! propagator (`opentelemetry::global::set_text_map_propagator`).
//!
//! ```
//! use async_hooks::{bind, otel};
//! use opentelemetry::Context;
//! use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider as _};
//! use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
//!
//! otel::propagate();
//! let exporter = InMemorySpanExporter::default();
//! let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
//! let tracer = provider.tracer("doc");
//!
//! let request = Context::current_with_span(tracer.start("request"));
//! // Work created while the request's context is current keeps it...
//! let work = {
//!     let _current = request.clone().attach();
//!     bind!(async move { drop(tracer.start("query")) })
//! };
//! // ...also where it is polled with no context attached.
//! let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! runtime.block_on(work);
//! drop(request);
//!
//! let spans = exporter.get_finished_spans().unwrap();
//! let query = spans.iter().find(|s| s.name == "query").unwrap();
//! let request = spans.iter().find(|s| s.name == "request").unwrap();
//! assert_eq!(query.parent_span_id, request.span_context.span_id());
//! ```

use std::cell::RefCell;
use std::sync::{Arc, OnceLock, Weak};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::{Context, ContextGuard, global};

use crate::{
    AsyncHook, AsyncId, EventMask, HookCallbacks, Resource, create_hook, execution_async_resource,
};

/// Makes `opentelemetry::Context::current()` inside every async resource the context that was
/// current where the resource was created, and returns the hook that does it, enabled.
///
/// There is one such hook per process: calling `propagate()` again returns it (enabling it
/// again if it was disabled) and never attaches twice. At `init` the hook stores
/// `Context::current()` on the resource; it attaches it at every `before` and drops the guard
/// at the matching `after`, so a context never outlives a poll on the executor's thread.
/// Resources created while the hook was disabled run in whatever context the thread has.
///
/// ```
/// use async_hooks::{AsyncResource, otel};
/// use opentelemetry::Context;
///
/// #[derive(Debug, PartialEq)]
/// struct Tenant(&'static str);
///
/// let hook = otel::propagate();
/// assert!(hook.is_enabled());
/// let job = {
///     let _current = Context::current_with_value(Tenant("acme")).attach();
///     AsyncResource::new("Job")
/// };
/// assert_eq!(Context::current().get::<Tenant>(), None);
/// job.run_in_async_scope(|| assert_eq!(Context::current().get(), Some(&Tenant("acme"))));
/// assert_eq!(Context::current().get::<Tenant>(), None);
/// ```
pub fn propagate() -> AsyncHook {
    static HOOK: OnceLock<AsyncHook> = OnceLock::new();
    HOOK.get_or_init(|| create_hook(Propagate)).enable()
}

/// The context current where a resource was created, in the resource's slot.
struct Captured(Context);

/// This thread's state: the attached contexts of the resources running on it, innermost last
/// (guards are `!Send`: they stay on the thread whose `before` made them), and the captured
/// contexts of the resources it ran last.
struct ThreadState {
    attached: Vec<(AsyncId, Option<ContextGuard>)>,
    /// Direct-mapped by id. Weak, so a destroyed resource's context (and its spans) is dropped
    /// when the resource is, not when the entry is replaced; ids are never reused, so an entry
    /// can never answer for another resource.
    recent: [(AsyncId, Weak<Captured>); RECENT],
}

const RECENT: usize = 8;

thread_local! {
    static STATE: RefCell<ThreadState> = const {
        RefCell::new(ThreadState {
            attached: Vec::new(),
            recent: [const { (AsyncId::NONE, Weak::new()) }; RECENT],
        })
    };
}

fn recent_slot(async_id: AsyncId) -> usize {
    async_id.as_u64() as usize % RECENT
}

struct Propagate;

impl HookCallbacks for Propagate {
    fn init(&self, _async_id: AsyncId, _ty: &str, _trigger: AsyncId, resource: &Resource) {
        resource.insert(Captured(Context::current()));
    }

    fn before(&self, async_id: AsyncId) {
        // Nothing here drops a context (which could end a span and run an exporter, and so
        // hooks): the borrow cannot be re-entered.
        let _ = STATE.try_with(|state| {
            let state = &mut *state.borrow_mut();
            let recent = &mut state.recent[recent_slot(async_id)];
            // A re-poll finds the context here, without the resource's slot lock.
            let captured = match (recent.0 == async_id).then(|| recent.1.upgrade()) {
                Some(Some(captured)) => Some(captured),
                _ => execution_async_resource()
                    .get::<Captured>()
                    .inspect(|captured| *recent = (async_id, Arc::downgrade(captured))),
            };
            let guard = captured.map(|captured| captured.0.clone().attach());
            state.attached.push((async_id, guard));
        });
    }

    fn after(&self, async_id: AsyncId) {
        // Pops down to this resource's entry; entries above it lost their `after` (the hook was
        // disabled meanwhile) and go too. Guards drop outside the borrow: dropping a context
        // may end a span, and exporting it may run more hooks.
        loop {
            let top = STATE
                .try_with(|state| {
                    let stack = &mut state.borrow_mut().attached;
                    match stack.last() {
                        Some((id, _)) if *id == async_id => stack.pop(),
                        _ if stack.iter().any(|(id, _)| *id == async_id) => stack.pop(),
                        _ => None,
                    }
                })
                .ok()
                .flatten();
            match top {
                Some((id, guard)) => {
                    drop(guard);
                    if id == async_id {
                        return;
                    }
                }
                None => return,
            }
        }
    }

    fn events(&self) -> EventMask {
        EventMask::INIT | EventMask::BEFORE | EventMask::AFTER
    }
}

/// Writes the current OpenTelemetry context into outgoing `headers` (W3C `traceparent`,
/// `tracestate`, `baggage`: whatever the globally registered propagator writes).
///
/// ```
/// use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
/// use opentelemetry::{Context, global};
/// use opentelemetry_sdk::propagation::TraceContextPropagator;
///
/// global::set_text_map_propagator(TraceContextPropagator::new());
/// let remote = SpanContext::new(
///     TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
///     SpanId::from_hex("00f067aa0ba902b7").unwrap(),
///     TraceFlags::SAMPLED,
///     true,
///     TraceState::default(),
/// );
/// let _current = Context::new().with_remote_span_context(remote).attach();
/// let mut headers = http::HeaderMap::new();
/// async_hooks::otel::inject(&mut headers);
/// assert_eq!(
///     headers["traceparent"],
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
/// );
/// ```
pub fn inject(headers: &mut HeaderMap) {
    Context::map_current(|cx| {
        global::get_text_map_propagator(|propagator| {
            propagator.inject_context(cx, &mut HeaderInjector(headers))
        })
    });
}

/// The context that incoming `headers` carry, read with the globally registered propagator
/// (on top of the current context, as OpenTelemetry's `extract` does). Attach it, or create the
/// request's resources while it is attached, to make it the request's context.
///
/// ```
/// use opentelemetry::trace::TraceContextExt;
/// use opentelemetry::global;
/// use opentelemetry_sdk::propagation::TraceContextPropagator;
///
/// global::set_text_map_propagator(TraceContextPropagator::new());
/// let mut headers = http::HeaderMap::new();
/// headers.insert(
///     "traceparent",
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
/// );
/// let cx = async_hooks::otel::extract(&headers);
/// assert_eq!(
///     cx.span().span_context().trace_id().to_string(),
///     "4bf92f3577b34da6a3ce929d0e0e4736"
/// );
/// ```
pub fn extract(headers: &HeaderMap) -> Context {
    global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)))
}

/// `ScopeLayer::extract_trace_context`: the request's incoming context, current while the
/// request's resource is created, so that `propagate()`'s `init` stores it on the resource.
#[cfg(feature = "tower")]
pub(crate) fn incoming<B>(request: &http::Request<B>) -> ContextGuard {
    extract(request.headers()).attach()
}

#[cfg(feature = "tower")]
impl<T: Send + Sync + 'static, M> crate::tower::ScopeLayer<T, M> {
    /// Makes the OpenTelemetry context that the request's headers carry (W3C `traceparent`,
    /// `tracestate`, `baggage`: whatever the globally registered propagator reads) the
    /// request's context: `opentelemetry::Context::current()` in the handler, its body and
    /// everything they create, on top of the context of the code that called the service.
    /// Enables [`propagate()`].
    ///
    /// ```
    /// use async_hooks::AsyncLocalStorage;
    /// use async_hooks::tower::ScopeLayer;
    /// use http::{Request, Response};
    /// use opentelemetry::trace::TraceContextExt;
    /// use opentelemetry::{Context, global};
    /// use opentelemetry_sdk::propagation::TraceContextPropagator;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// static ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
    /// global::set_text_map_propagator(TraceContextPropagator::new());
    ///
    /// let handler = service_fn(|_: Request<()>| async {
    ///     let trace_id = Context::current().span().span_context().trace_id();
    ///     Ok::<_, std::convert::Infallible>(Response::new(trace_id.to_string()))
    /// });
    /// let svc = ScopeLayer::new(&ID, |_: &Request<()>| 1)
    ///     .extract_trace_context()
    ///     .layer(handler);
    /// let req = Request::get("/")
    ///     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    ///     .body(())
    ///     .unwrap();
    /// let res = futures::executor::block_on(svc.oneshot(req)).unwrap();
    /// assert_eq!(res.body().get_ref(), "4bf92f3577b34da6a3ce929d0e0e4736");
    /// ```
    #[cfg_attr(docsrs, doc(cfg(all(feature = "tower", feature = "opentelemetry"))))]
    pub fn extract_trace_context(mut self) -> Self {
        propagate();
        self.on_request.extract_trace_context = true;
        self
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let values: Vec<&str> = self
            .0
            .get_all(key)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        (!values.is_empty()).then_some(values)
    }
}
