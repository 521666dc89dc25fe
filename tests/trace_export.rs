//! Runs `examples/trace_export.rs` with `--out DIR` and checks what it writes: a Chrome trace
//! that parses as JSON with slices and flow arrows, and a DOT graph that Graphviz renders.

use std::process::Command;

use serde_json::Value;

#[test]
fn trace_export_writes_a_chrome_trace_and_a_graph() {
    let dir = std::env::temp_dir().join(format!("async-hooks-trace-export-{}", std::process::id()));
    let output = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--example", "trace_export", "--", "--out"])
        .arg(&dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "trace_export failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("requests: 3, failures: 0"), "{stdout}");
    assert!(stdout.contains("dropped: 0"), "{stdout}");

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("trace.json")).unwrap())
            .expect("trace.json is JSON");
    let events = json["traceEvents"].as_array().unwrap();
    let named = |prefix: &str| {
        events
            .iter()
            .filter(|e| e["ph"] == "X" && e["name"].as_str().unwrap().starts_with(prefix))
            .count()
    };
    // One request resource per request, each created once.
    assert_eq!(named("init HTTPINCOMINGMESSAGE("), 3);
    assert!(named("HTTPINCOMINGMESSAGE(") >= 3);
    assert!(named("DBQuery(") >= 3);
    assert!(named("TCPSERVERWRAP(") >= 1);
    let flows = |ph: &str| events.iter().filter(|e| e["ph"] == ph).count();
    assert!(flows("s") > 10);
    assert_eq!(flows("s"), flows("f"));
    // More than one thread track.
    let tids: std::collections::BTreeSet<u64> = events
        .iter()
        .filter(|e| e["ph"] == "X")
        .filter_map(|e| e["tid"].as_u64())
        .collect();
    assert!(tids.len() >= 2, "{tids:?}");

    let dot = std::fs::read_to_string(dir.join("graph.dot")).unwrap();
    assert!(dot.contains("ROOT(1)"));
    let svg = match Command::new("dot")
        .arg("-Tsvg")
        .arg(dir.join("graph.dot"))
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8(out.stdout).unwrap(),
        Ok(out) => panic!("dot failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(err) => panic!(
            "could not run Graphviz's `dot` ({err}): install it with `apt-get install graphviz`"
        ),
    };
    assert!(svg.contains("HTTPINCOMINGMESSAGE("));
    std::fs::remove_dir_all(&dir).ok();
}
