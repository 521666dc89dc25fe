//! `TracingHook` (cargo feature `tracing`): one span per resource, opened at `init` under its
//! trigger's span, entered on `before`, exited on `after`, closed on `destroy`, as seen by a
//! `tracing-subscriber` layer.
//!
//! `cargo test --features tracing --test tracing_bridge`
#![cfg(feature = "tracing")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_hooks::{AsyncResource, BindContext, TracingHook, async_resource, create_hook};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Subscriber, info_span};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

mod support;
use support::futures::YieldOnce;
use support::serial;

#[derive(Default, Debug, Clone)]
struct Fields {
    async_id: Option<u64>,
    trigger_async_id: Option<u64>,
    ty: Option<String>,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "async_id" => self.async_id = Some(value),
            "trigger_async_id" => self.trigger_async_id = Some(value),
            _ => {}
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "type" {
            self.ty = Some(value.to_string());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "type" {
            self.ty = Some(format!("{value:?}"));
        }
    }
}

/// Every span callback, as a line naming spans by their label: `Type(async_id)` for resource
/// spans, the span name for others.
#[derive(Clone, Default)]
struct Recording {
    lines: Arc<Mutex<Vec<String>>>,
    labels: Arc<Mutex<HashMap<u64, String>>>,
    fields: Arc<Mutex<HashMap<String, Fields>>>,
}

impl Recording {
    fn label(&self, id: &Id) -> String {
        self.labels.lock().unwrap()[&id.into_u64()].clone()
    }
    fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recording {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let label = match (&fields.ty, fields.async_id) {
            (Some(ty), Some(async_id)) => format!("{ty}({async_id})"),
            _ => attrs.metadata().name().to_string(),
        };
        self.labels
            .lock()
            .unwrap()
            .insert(id.into_u64(), label.clone());
        self.fields.lock().unwrap().insert(label.clone(), fields);
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent())
            .map_or_else(|| "none".to_string(), |parent| self.label(&parent.id()));
        self.push(format!("new {label} parent={parent}"));
    }
    fn on_enter(&self, id: &Id, _ctx: LayerContext<'_, S>) {
        self.push(format!("enter {}", self.label(id)));
    }
    fn on_exit(&self, id: &Id, _ctx: LayerContext<'_, S>) {
        self.push(format!("exit {}", self.label(id)));
    }
    fn on_close(&self, id: Id, _ctx: LayerContext<'_, S>) {
        self.push(format!("close {}", self.label(&id)));
    }
}

#[async_resource(type = "Outer")]
async fn outer() -> u32 {
    inner().await + 1
}

#[async_resource(type = "Inner")]
async fn inner() -> u32 {
    YieldOnce(false).await;
    1
}

#[test]
fn spans_open_enter_exit_and_close_with_the_resources_under_their_triggers() {
    let _serial = serial();
    let recording = Recording::default();
    let subscriber = tracing_subscriber::registry().with(recording.clone());
    let root_id;
    {
        let _default = tracing::subscriber::set_default(subscriber);
        let hook = create_hook(TracingHook::new()).enable();
        let request = info_span!("request");
        // Created inside the user's span: its trigger (the top level) has no span, so its span
        // is a child of the current one.
        let root = request.in_scope(|| AsyncResource::new("TRoot"));
        drop(request);
        root_id = root.async_id().as_u64();
        let out = root.run_in_async_scope(|| {
            // `outer()` is created here; the driver (a bound future) polls it.
            let fut = outer();
            futures::executor::block_on(fut.bind_context_as("Driver"))
        });
        assert_eq!(out, 2);
        drop(root);
        hook.disable();
    }
    let lines = recording.lines.lock().unwrap().clone();
    let root = format!("TRoot({root_id})");
    let labels = recording.labels.lock().unwrap().clone();
    let label_of = |ty: &str| {
        labels
            .values()
            .find(|l| l.starts_with(&format!("{ty}(")))
            .cloned()
            .unwrap()
    };
    let (driver, outer, inner) = (label_of("Driver"), label_of("Outer"), label_of("Inner"));
    let expected = vec![
        "new request parent=none".to_string(),
        "enter request".to_string(),
        format!("new {root} parent=request"),
        "exit request".to_string(),
        // `request` stays open while its child is alive.
        format!("enter {root}"),
        // `outer()` is called in the root's scope: init there, under the root's span.
        format!("new {outer} parent={root}"),
        format!("new {driver} parent={root}"),
        // First poll: the driver, then Outer, which creates and polls Inner (pending).
        format!("enter {driver}"),
        format!("enter {outer}"),
        format!("new {inner} parent={outer}"),
        format!("enter {inner}"),
        format!("exit {inner}"),
        format!("exit {outer}"),
        format!("exit {driver}"),
        // Second poll: all ready; Inner is dropped inside Outer's poll, Outer inside the
        // driver's.
        format!("enter {driver}"),
        format!("enter {outer}"),
        format!("enter {inner}"),
        format!("exit {inner}"),
        format!("close {inner}"),
        format!("exit {outer}"),
        format!("close {outer}"),
        format!("exit {driver}"),
        format!("close {driver}"),
        format!("exit {root}"),
        format!("close {root}"),
        "close request".to_string(),
    ];
    assert_eq!(lines, expected, "\n got: {lines:#?}");

    // The fields: ids and type.
    let fields = recording.fields.lock().unwrap();
    let f = &fields[&inner];
    assert_eq!(f.ty.as_deref(), Some("Inner"));
    assert_eq!(
        Some(format!("Outer({})", f.trigger_async_id.unwrap())),
        Some(outer.clone())
    );
    assert_eq!(
        fields[&root].trigger_async_id,
        Some(1),
        "the root resource is triggered by the top level"
    );
}
