//! The `Recorder` hook and its exporters, over a deterministic workload: nested
//! `#[async_resource]` fns on `futures::executor::block_on`, on this thread and on a spawned
//! thread (a bound closure), all under one test root resource. Only the events of the resources
//! descending from that root are checked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_hooks::recorder::{Event, EventKind, Trace};
use async_hooks::{AsyncId, AsyncResource, Hooks, Recorder, async_resource, bind, create_hook};
use serde_json::Value;

mod support;
use support::futures::YieldOnce;
use support::{serial, xml};

#[async_resource(type = "Outer")]
async fn outer(n: u64) -> u64 {
    let a = middle(n).await;
    let b = middle(n + 1).await;
    a + b
}

#[async_resource(type = "Middle")]
async fn middle(n: u64) -> u64 {
    inner(n).await * 2
}

#[async_resource(type = "Inner")]
async fn inner(n: u64) -> u64 {
    YieldOnce(false).await;
    n
}

/// The odd type name checks the exporters' escaping.
const ODD_TYPE: &str = "Odd \"quoted\" \\ name\n\tend";

/// Runs the workload under a fresh root resource; returns the root's id.
fn workload() -> AsyncId {
    let root = AsyncResource::new("TestRoot");
    root.run_in_async_scope(|| {
        assert_eq!(futures::executor::block_on(outer(1)), 2 + 4);
        let on_thread = bind!(move || futures::executor::block_on(outer(10)));
        let handle = std::thread::spawn(on_thread);
        assert_eq!(handle.join().unwrap(), 20 + 22);
        let odd = AsyncResource::new(ODD_TYPE);
        odd.run_in_async_scope(|| ());
    });
    root.async_id()
}

/// The resources descending from `root` (and `root`), with type and trigger, from the inits.
fn family(trace: &Trace, root: AsyncId) -> BTreeMap<AsyncId, (&'static str, AsyncId)> {
    let mut family = BTreeMap::new();
    for e in &trace.events {
        if let EventKind::Init {
            type_name,
            trigger_async_id,
        } = e.kind
            && (e.async_id == root || family.contains_key(&trigger_async_id))
        {
            family.insert(e.async_id, (type_name, trigger_async_id));
        }
    }
    family
}

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

/// Chrome `ts`/`dur` (microseconds with nanosecond decimals) back to nanoseconds.
fn json_ns(v: &Value) -> u64 {
    (v.as_f64().expect("a number") * 1000.0).round() as u64
}

/// The expected slices, computed from the raw events: per thread, each `after` closes the
/// innermost open `before` of the same id. `(id, thread, begin ns, end ns)`.
fn expected_slices(events: &[Event], ids: &BTreeSet<AsyncId>) -> Vec<(u64, u64, u64, u64)> {
    let mut open: HashMap<u32, Vec<(AsyncId, Duration)>> = HashMap::new();
    let mut slices = Vec::new();
    for e in events.iter().filter(|e| ids.contains(&e.async_id)) {
        match e.kind {
            EventKind::Before => open.entry(e.thread).or_default().push((e.async_id, e.time)),
            EventKind::After => {
                let (id, begin) = open
                    .get_mut(&e.thread)
                    .and_then(Vec::pop)
                    .expect("an after without a before");
                assert_eq!(id, e.async_id, "before/after pairs nest per thread");
                slices.push((id.as_u64(), e.thread as u64, ns(begin), ns(e.time)));
            }
            _ => {}
        }
    }
    assert!(
        open.values().all(Vec::is_empty),
        "a before without an after"
    );
    slices.sort();
    slices
}

fn arg_id(event: &Value, name: &str) -> u64 {
    event["args"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("args.{name} in {event}"))
}

#[test]
fn chrome_json_slices_and_flows_match_the_recorded_events() {
    let _serial = serial();
    let recorder = Recorder::new(100_000);
    let hook = create_hook(recorder.clone()).enable();
    let root = workload();
    hook.disable();
    let trace = recorder.snapshot();
    assert_eq!(trace.dropped, 0);

    let family = family(&trace, root);
    let ids: BTreeSet<AsyncId> = family.keys().copied().collect();
    // TestRoot, 2 × (Outer, 2 × (Middle, Inner)), the bound closure, the odd one.
    let types: Vec<&str> = family.values().map(|(ty, _)| *ty).collect();
    assert_eq!(family.len(), 1 + 2 * 5 + 1 + 1, "{types:?}");
    for ty in ["Outer", "Middle", "Inner", "bound-anonymous-fn", ODD_TYPE] {
        assert!(types.contains(&ty), "{ty} missing from {types:?}");
    }
    let threads: BTreeSet<u32> = trace
        .events
        .iter()
        .filter(|e| ids.contains(&e.async_id))
        .map(|e| e.thread)
        .collect();
    assert_eq!(threads.len(), 2, "the workload runs on two threads");

    let json: Value = serde_json::from_str(&trace.to_chrome_json()).expect("valid JSON");
    let events = json["traceEvents"].as_array().expect("traceEvents");
    assert_eq!(json["otherData"]["dropped_events"], 0);
    let ours = |e: &&Value| {
        e["args"]["async_id"]
            .as_u64()
            .or_else(|| e["id"].as_u64())
            .is_some_and(|id| ids.contains(&AsyncId::from_u64(id)))
    };

    // Every slice is a recorded before/after pair: same id, same thread, same times.
    let slices: Vec<&Value> = events
        .iter()
        .filter(ours)
        .filter(|e| e["ph"] == "X" && e["cat"] == "async")
        .collect();
    let mut got: Vec<(u64, u64, u64, u64)> = slices
        .iter()
        .map(|e| {
            let id = arg_id(e, "async_id");
            let (ty, _) = family[&AsyncId::from_u64(id)];
            assert_eq!(e["name"].as_str().unwrap(), format!("{ty}({id})"));
            let begin = json_ns(&e["ts"]);
            let end = begin + json_ns(&e["dur"]);
            assert!(begin <= end);
            (id, e["tid"].as_u64().unwrap(), begin, end)
        })
        .collect();
    got.sort();
    let expected = expected_slices(&trace.events, &ids);
    // Every resource ran at least once; the inner ones twice (YieldOnce).
    assert!(expected.len() > family.len());
    assert_eq!(got, expected);
    // Every thread track is named.
    for t in &threads {
        assert!(
            events
                .iter()
                .any(|e| e["ph"] == "M" && e["name"] == "thread_name" && e["tid"] == *t),
            "thread {t} has no name"
        );
    }

    // Flow arrows: from the init (inside the trigger's slice) to the first slice of each
    // triggered resource.
    let inits: HashMap<AsyncId, &Event> = trace
        .events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Init { .. }))
        .map(|e| (e.async_id, e))
        .collect();
    for (&id, &(ty, trigger)) in &family {
        if id == root {
            continue;
        }
        let flow = |ph: &str| -> &Value {
            let found: Vec<&Value> = events
                .iter()
                .filter(|e| e["ph"] == ph && e["id"].as_u64() == Some(id.as_u64()))
                .collect();
            assert_eq!(found.len(), 1, "one {ph:?} flow event for {ty}({id})");
            found[0]
        };
        let (start, finish) = (flow("s"), flow("f"));
        assert_eq!(arg_id(start, "trigger_async_id"), trigger.as_u64());
        let init = inits[&id];
        assert_eq!(start["tid"].as_u64(), Some(init.thread as u64));
        assert_eq!(json_ns(&start["ts"]), ns(init.time));
        // The start sits inside a slice of the trigger, on the same thread.
        let (s_tid, s_ts) = (start["tid"].as_u64().unwrap(), json_ns(&start["ts"]));
        assert!(
            expected
                .iter()
                .any(|&(sid, tid, begin, end)| sid == trigger.as_u64()
                    && tid == s_tid
                    && begin <= s_ts
                    && s_ts <= end),
            "the flow of {ty}({id}) does not start in a slice of its trigger {trigger}"
        );
        // The end is the start of the resource's first slice, bound to it.
        assert_eq!(finish["bp"], "e");
        let first = expected
            .iter()
            .filter(|s| s.0 == id.as_u64())
            .min_by_key(|s| s.2)
            .expect("every resource ran");
        assert_eq!(finish["tid"].as_u64(), Some(first.1));
        assert_eq!(json_ns(&finish["ts"]), first.2);
        // The init itself is marked, with its trigger.
        let init_mark = events
            .iter()
            .find(|e| e["cat"] == "init" && e["args"]["async_id"].as_u64() == Some(id.as_u64()))
            .expect("an init mark");
        assert_eq!(arg_id(init_mark, "trigger_async_id"), trigger.as_u64());
    }
    // The spawned thread's Outer is triggered by the bound closure, whose flow crosses threads.
    let bound = family
        .iter()
        .find(|(_, (ty, _))| *ty == "bound-anonymous-fn")
        .map(|(id, _)| *id)
        .unwrap();
    let bound_thread = expected
        .iter()
        .find(|s| s.0 == bound.as_u64())
        .map(|s| s.1)
        .unwrap();
    assert_ne!(bound_thread, inits[&bound].thread as u64);
}

#[test]
fn ring_buffer_keeps_the_last_n_events_and_counts_the_dropped() {
    let _serial = serial();
    const N: usize = 10;
    let total = std::sync::Arc::new(AtomicU64::new(0));
    let count = {
        let total = total.clone();
        move |_| {
            total.fetch_add(1, Ordering::Relaxed);
        }
    };
    let all = Recorder::new(1_000_000);
    let small = Recorder::new(N);
    let counter = {
        let total = total.clone();
        create_hook(
            Hooks::new()
                .init(move |_, _, _, _| {
                    total.fetch_add(1, Ordering::Relaxed);
                })
                .before(count.clone())
                .after(count.clone())
                .destroy(count.clone())
                .promise_resolve(count),
        )
    };
    let hooks = [
        counter.enable(),
        create_hook(all.clone()).enable(),
        create_hook(small.clone()).enable(),
    ];
    workload();
    for hook in &hooks {
        hook.disable();
    }
    let total = total.load(Ordering::Relaxed);
    assert!(total > 5 * N as u64, "{total} events");
    assert_eq!(small.len(), N);
    assert_eq!(small.capacity(), N);
    assert_eq!(small.dropped(), total - N as u64);
    let full = all.snapshot();
    assert_eq!(full.events.len() as u64, total);
    assert_eq!(full.dropped, 0);
    // The kept events are the last N, in order.
    let kept = small.snapshot();
    assert_eq!(kept.dropped, total - N as u64);
    let strip = |e: &Event| (e.kind, e.async_id, e.thread);
    let tail: Vec<_> = full.events[full.events.len() - N..]
        .iter()
        .map(strip)
        .collect();
    assert_eq!(kept.events.iter().map(strip).collect::<Vec<_>>(), tail);
    let json: Value = serde_json::from_str(&kept.to_chrome_json()).expect("valid JSON");
    assert_eq!(json["otherData"]["dropped_events"], total - N as u64);
    assert!(
        kept.to_dot()
            .contains(&format!("{} earlier events dropped", total - N as u64))
    );

    // Capacity 0 keeps nothing and counts everything.
    let none = Recorder::new(0);
    let hook = create_hook(none.clone()).enable();
    drop(AsyncResource::new("Nothing"));
    hook.disable();
    assert!(none.is_empty());
    assert_eq!(none.dropped(), 2);
}

/// Records the workload; returns the trace and the resources descending from its root.
fn recorded_family() -> (Trace, BTreeMap<AsyncId, (&'static str, AsyncId)>) {
    let _serial = serial();
    let recorder = Recorder::new(100_000);
    let hook = create_hook(recorder.clone()).enable();
    let root = workload();
    hook.disable();
    let trace = recorder.snapshot();
    let family = family(&trace, root);
    (trace, family)
}

#[test]
fn dot_has_an_edge_from_each_trigger() {
    let (trace, family) = recorded_family();
    let dot = trace.to_dot();
    assert!(dot.contains("n1 [label=\"ROOT(1)\""));
    for (id, (_, trigger)) in &family {
        assert!(
            dot.contains(&format!("  n{trigger} -> n{id};\n")),
            "no edge {trigger} -> {id} in\n{dot}"
        );
    }
}

/// The label the DOT escaping and the SVG writer make of a type name (DOT has no tab escape).
fn drawn_label(ty: &str, id: AsyncId) -> String {
    format!("{}({id})", ty.replace('\t', " "))
}

#[test]
fn svg_is_well_formed_and_shows_every_resource() {
    let (trace, family) = recorded_family();
    let svg = trace.to_svg();
    assert!(svg.contains("<svg"));
    let texts = xml::text_nodes(&svg);
    let shown = |label: &str| texts.iter().filter(|t| t.as_str() == label).count();
    assert_eq!(shown("ROOT(1)"), 1, "{texts:?}");
    for (id, (ty, _)) in &family {
        if *ty == ODD_TYPE {
            // A multi-line label: one text node per line, quotes and backslash kept.
            let lines: Vec<String> = drawn_label(ty, *id).lines().map(str::to_owned).collect();
            for line in &lines {
                assert_eq!(shown(line), 1, "{line:?} not in {texts:?}");
            }
        } else {
            assert_eq!(
                shown(&drawn_label(ty, *id)),
                1,
                "{ty}({id}) not in {texts:?}"
            );
        }
    }
    // One box per resource (the root is an ellipse) and one arrow per trigger edge.
    let inits = trace.type_names().len();
    assert_eq!(svg.matches("<rect").count(), inits);
    assert_eq!(svg.matches("marker-end=").count(), inits);

    let path =
        std::env::temp_dir().join(format!("async-hooks-recorder-{}.svg", std::process::id()));
    let recorder = Recorder::new(16);
    let hook = create_hook(recorder.clone()).enable();
    let job = AsyncResource::new("Job");
    hook.disable();
    recorder.write_svg(&path).unwrap();
    let written = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert!(xml::text_nodes(&written).contains(&format!("Job({})", job.async_id())));
}

#[test]
fn the_xml_check_rejects_malformed_documents() {
    assert_eq!(
        xml::text_nodes("<?xml version=\"1.0\"?><a x = \"1\"><b>&lt;&#45;</b><c/></a>"),
        ["<-"]
    );
    for bad in [
        "<a><b></a></b>",
        "<a>",
        "<a x=1></a>",
        "<a>&</a>",
        "<a></a><b></b>",
        "<a x=\"1\" x=\"2\"/>",
        "<a>x<y</a>",
    ] {
        assert!(
            std::panic::catch_unwind(|| xml::text_nodes(bad)).is_err(),
            "{bad} passed"
        );
    }
}

/// The DOT file renders with real Graphviz too. Graphviz is not a build dependency: this check
/// runs when `ASYNC_HOOKS_GRAPHVIZ=1` (CI installs Graphviz and sets it) and then fails loudly
/// without `dot`; otherwise it only says that it did not run.
#[test]
fn dot_renders_with_graphviz_when_asked() {
    if std::env::var_os("ASYNC_HOOKS_GRAPHVIZ").is_none_or(|v| v != "1") {
        eprintln!("not rendering with Graphviz: set ASYNC_HOOKS_GRAPHVIZ=1 to check with `dot`");
        return;
    }
    let (trace, family) = recorded_family();
    let dot = trace.to_dot();
    let dir = std::env::temp_dir().join(format!("async-hooks-recorder-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dot_path = dir.join("graph.dot");
    let svg_path = dir.join("graph.svg");
    std::fs::write(&dot_path, &dot).unwrap();
    let output = match Command::new("dot")
        .arg("-Tsvg")
        .arg(&dot_path)
        .arg("-o")
        .arg(&svg_path)
        .output()
    {
        Ok(output) => output,
        Err(err) => panic!(
            "ASYNC_HOOKS_GRAPHVIZ=1 but Graphviz's `dot` does not run ({err}): install it with `apt-get install graphviz`"
        ),
    };
    assert!(
        output.status.success(),
        "dot -Tsvg failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Graphviz writes `-` as `&#45;` in SVG text.
    let svg = std::fs::read_to_string(&svg_path)
        .unwrap()
        .replace("&#45;", "-");
    assert!(svg.contains("<svg"));
    assert!(svg.contains(">ROOT(1)</text>"));
    for (id, (ty, _)) in &family {
        if *ty == ODD_TYPE {
            assert!(svg.contains(&format!("({id})</text>")), "{id} missing");
        } else {
            assert!(
                svg.contains(&format!(">{ty}({id})</text>")),
                "{ty}({id}) missing from the SVG"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
