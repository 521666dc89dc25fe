//! `StoreFields`: the current stores on every line `tracing_subscriber::fmt` writes, in text and
//! JSON, from nested resources, spawned bound tasks and `spawn_blocking` closures.
//!
//! `cargo test --test store_fields`
#![cfg(feature = "tracing")]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use async_hooks::tracing_bridge::StoreFields;
use async_hooks::{AsyncLocalStorage, async_resource, bind};
use tracing::{Dispatch, info, info_span};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::prelude::*;

static REQUEST_ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
static USER: AsyncLocalStorage<String> = AsyncLocalStorage::new();

/// Everything the `fmt` layer writes, one event per `write_all`.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

fn text_dispatch(out: &Captured) -> Dispatch {
    Dispatch::new(
        tracing_subscriber::registry()
            .with(
                StoreFields::new()
                    .field("request_id", &REQUEST_ID)
                    .field("user", &USER),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .without_time()
                    .with_writer(out.clone()),
            ),
    )
}

/// The value of `key=` in a text line.
fn text_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split([' ', '}', ':']).next()
}

#[async_resource(type = "Handler")]
async fn handler(req: u64) {
    info!(req, "handler");
    query(req).await;
}

#[async_resource(type = "Query")]
async fn query(req: u64) {
    tokio::task::yield_now().await;
    info!(req, "query");
}

async fn request(req: u64) {
    REQUEST_ID
        .scope(req, async move {
            handler(req).await;
            let task = tokio::spawn(bind!(async move {
                tokio::task::yield_now().await;
                info!(req, "spawned");
            }));
            let blocking = tokio::task::spawn_blocking(bind!(move || info!(req, "blocking")));
            task.await.unwrap();
            blocking.await.unwrap();
        })
        .await;
}

#[test]
fn every_line_of_200_concurrent_requests_carries_its_own_request_id() {
    let _serial = support::serial();
    let out = Captured::default();
    let dispatch = text_dispatch(&out);
    let on_workers = dispatch.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(move || std::mem::forget(tracing::dispatcher::set_default(&on_workers)))
        .build()
        .unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        rt.block_on(async {
            let requests: Vec<_> = (1..=200).map(|i| tokio::spawn(request(i))).collect();
            for r in requests {
                r.await.unwrap();
            }
        });
    });
    drop(rt);
    let lines = out.lines();
    assert_eq!(lines.len(), 200 * 4, "four lines per request");
    let mut mismatches = Vec::new();
    for kind in ["handler", "query", "spawned", "blocking"] {
        let of_kind: Vec<_> = lines.iter().filter(|l| l.contains(kind)).collect();
        assert_eq!(of_kind.len(), 200, "{kind} lines");
        for line in of_kind {
            let req = text_field(line, "req").expect("req field");
            match text_field(line, "request_id") {
                Some(id) if id == req => {}
                _ => mismatches.push(line.clone()),
            }
            assert!(!line.contains("user="), "no store, no field: {line}");
        }
    }
    assert_eq!(mismatches, Vec::<String>::new());
}

#[test]
fn text_shows_the_store_unquoted_after_the_events_fields_and_nothing_when_absent() {
    let _serial = support::serial();
    let out = Captured::default();
    tracing::dispatcher::with_default(&text_dispatch(&out), || {
        info!("before");
        REQUEST_ID.run(7, || {
            info!(n = 1, "inside");
            USER.run("ada".to_string(), || info!("both"));
            // An event's own field of the same name wins.
            info!(request_id = 99u64, "explicit");
            let span = info_span!("req", a = 1);
            span.in_scope(|| info!("in span"));
        });
        info!("after");
    });
    let lines = out.lines();
    assert_eq!(lines.len(), 6, "{lines:#?}");
    assert!(lines[0].ends_with("before"), "{}", lines[0]);
    assert!(
        lines[1].ends_with("inside n=1 request_id=7"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].ends_with("both request_id=7 user=ada"),
        "{}",
        lines[2]
    );
    assert!(lines[3].ends_with("explicit request_id=99"), "{}", lines[3]);
    assert!(
        lines[4].contains("req{a=1 request_id=7}:") && lines[4].ends_with("in span request_id=7"),
        "{}",
        lines[4]
    );
    assert!(lines[5].ends_with("after"), "{}", lines[5]);
    for line in [&lines[0], &lines[5]] {
        assert!(
            !line.contains("request_id"),
            "absent store, no field: {line}"
        );
    }
}

#[test]
fn json_has_the_key_on_events_and_spans_and_keeps_typed_values() {
    let _serial = support::serial();
    let out = Captured::default();
    let dispatch = Dispatch::new(
        tracing_subscriber::registry()
            .with(
                StoreFields::new()
                    .field("request_id", &REQUEST_ID)
                    .fmt_fields(JsonFields::new()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(out.clone()),
            ),
    );
    tracing::dispatcher::with_default(&dispatch, || {
        REQUEST_ID.run(7, || {
            info!(n = 5, ok = true, "inside");
            info_span!("req").in_scope(|| info!("in span"));
        });
        info!("outside");
    });
    let lines: Vec<serde_json::Value> = out
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let fields = &lines[0]["fields"];
    assert_eq!(fields["request_id"], "7", "{}", lines[0]);
    assert_eq!(fields["n"], 5, "typed values stay typed: {}", lines[0]);
    assert_eq!(fields["ok"], true);
    assert_eq!(fields["message"], "inside");
    assert_eq!(lines[1]["fields"]["request_id"], "7", "{}", lines[1]);
    assert_eq!(lines[1]["span"]["request_id"], "7", "{}", lines[1]);
    assert_eq!(lines[1]["span"]["name"], "req");
    assert!(
        lines[2]["fields"].get("request_id").is_none(),
        "absent store, no key: {}",
        lines[2]
    );
}

#[test]
fn level_and_target_are_kept_and_per_layer_filters_still_apply() {
    let _serial = support::serial();
    let out = Captured::default();
    let dispatch = Dispatch::new(
        tracing_subscriber::registry()
            .with(StoreFields::new().field("request_id", &REQUEST_ID))
            .with(
                tracing_subscriber::fmt::layer()
                    .without_time()
                    .with_writer(out.clone())
                    .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
            ),
    );
    tracing::dispatcher::with_default(&dispatch, || {
        REQUEST_ID.run(3, || {
            tracing::debug!("filtered out");
            tracing::warn!(target: "audit", "kept");
            tracing::info!("kept too");
        });
    });
    let lines = out.lines();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with(" WARN audit: kept request_id=3"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("INFO store_fields: kept too request_id=3"),
        "{}",
        lines[1]
    );
}
