//! Runs every example as a child process and checks its output and exit code.
//!
//! The examples are run with `cargo run --example` (the cargo that runs these tests, the same
//! target directory), so they are always up to date even when only this test is selected.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `cargo run` of two examples at once would only wait on cargo's lock; run them one by one.
static CARGO: Mutex<()> = Mutex::new(());

struct Run {
    stdout: String,
    stderr: String,
    code: Option<i32>,
    elapsed: Duration,
}

impl Run {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

fn run_example(name: &str, args: &[&str]) -> Run {
    let _lock = CARGO.lock().unwrap_or_else(|e| e.into_inner());
    // Build first, so the time measured below is the example's own.
    let build = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo build");
    assert!(
        build.status.success(),
        "cargo build --example {name} failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let start = Instant::now();
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--example", name, "--"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo run");
    let run = Run {
        stdout: String::from_utf8(stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        code: status.code(),
        elapsed: start.elapsed(),
    };
    eprintln!(
        "--- {name} {args:?}: exit {:?} in {:?}\n{}{}",
        run.code, run.elapsed, run.stdout, run.stderr
    );
    run
}

/// `"12: start"` → `(12, "start")`.
fn log_line(line: &str) -> Option<(u64, &str)> {
    let (id, msg) = line.split_once(": ")?;
    Some((id.parse().ok()?, msg))
}

#[test]
fn request_logger_200_requests_at_concurrency_32() {
    let run = run_example(
        "request_logger",
        &["--requests", "200", "--concurrency", "32"],
    );
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stderr, "");
    let lines = run.lines();
    // The first 20 log lines, then the summary.
    assert_eq!(lines.len(), 23, "{lines:#?}");
    for line in &lines[..20] {
        let (id, msg) = log_line(line).unwrap_or_else(|| panic!("not a log line: {line:?}"));
        assert!(id < 200, "{line}");
        assert!(
            ["start", "db query done", "rendered", "finish"].contains(&msg),
            "{line}"
        );
    }
    assert_eq!(lines[20], "... (780 more log lines)");
    assert_eq!(lines[21], "log lines: 800, responses: 200");
    assert_eq!(lines[22], "requests: 200, mismatches: 0");
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
}

#[test]
fn request_logger_defaults_print_every_line_in_order_per_request() {
    let run = run_example("request_logger", &[]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stderr, "");
    let lines = run.lines();
    assert_eq!(lines.len(), 20 * 4 + 2, "{lines:#?}");
    let mut per_request = vec![Vec::new(); 20];
    for line in &lines[..80] {
        let (id, msg) = log_line(line).unwrap_or_else(|| panic!("not a log line: {line:?}"));
        per_request[id as usize].push(msg);
    }
    for (id, msgs) in per_request.iter().enumerate() {
        assert_eq!(
            msgs,
            &["start", "db query done", "rendered", "finish"],
            "request {id}"
        );
    }
    assert_eq!(lines[80], "log lines: 80, responses: 20");
    assert_eq!(lines[81], "requests: 20, mismatches: 0");
}

#[test]
fn request_logger_rejects_unknown_flags() {
    let run = run_example("request_logger", &["--bogus"]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("unknown argument \"--bogus\""),
        "{}",
        run.stderr
    );
}

#[test]
fn axum_service_200_requests_at_concurrency_32() {
    let run = run_example(
        "axum_service",
        &["--requests", "200", "--concurrency", "32"],
    );
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stderr, "");
    let lines = run.lines();
    assert_eq!(lines.len(), 23, "{lines:#?}");
    for line in &lines[..20] {
        let (id, msg) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("not a log line: {line:?}"));
        // A client's id, or a UUID made by the server for a request that came without one.
        let generated = id.len() == 36 && id.matches('-').count() == 4;
        assert!(id.starts_with("req-") || generated, "{line}");
        assert!(
            [
                "start order ",
                "db query for order ",
                "audit order ",
                "chunk "
            ]
            .iter()
            .any(|prefix| msg.starts_with(prefix)),
            "{line}"
        );
    }
    assert_eq!(lines[20], "... (1180 more log lines)");
    assert_eq!(
        lines[21],
        "log lines: 1200, responses: 200 (100 over HTTP/2, 40 with a generated id)"
    );
    assert_eq!(lines[22], "requests: 200, mismatches: 0");
}

#[test]
fn axum_service_rejects_unknown_flags() {
    let run = run_example("axum_service", &["--requests"]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("--requests needs a value"),
        "{}",
        run.stderr
    );
}

#[test]
fn worker_pool_callbacks_run_in_their_submitters_context() {
    let run = run_example("worker_pool", &[]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stderr, "");
    let lines = run.lines();
    assert_eq!(lines.len(), 12, "{lines:#?}");
    // Completion order depends on the worker threads; the set of lines does not.
    let results: BTreeSet<&str> = lines[..10].iter().copied().collect();
    let expected: BTreeSet<String> = (0..10)
        .map(|i| format!("task {i}: 142 (store {i})"))
        .collect();
    assert_eq!(
        results,
        expected.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    assert_eq!(lines[10], "WorkerPoolTaskInfo: 10 init, 10 destroy");
    assert_eq!(lines[11], "tasks: 10, mismatches: 0");
}

#[test]
fn event_emitter_plain_listeners_see_the_emitter_bound_ones_the_registrar() {
    let run = run_example("event_emitter", &[]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stderr, "");
    // Ids are allocated in a fixed order by this single-threaded program: the request (2), the
    // bind! resource (3), the AsyncResource listener (4), the socket (5).
    let expected = "\
registering in HTTPINCOMINGMESSAGE(2), store request 1
emitting from TCPWRAP(5), store socket 9
  plain     listener: execution 5 (TCPWRAP), trigger 1, store socket 9
  bind!     listener: execution 3 (bound-anonymous-fn), trigger 2, store request 1
  resource  listener: execution 4 (CloseListener), trigger 2, store request 1
emitting from a new thread: ROOT(1), store -
  plain     listener: execution 1 (ROOT), trigger 0, store -
  bind!     listener: execution 3 (bound-anonymous-fn), trigger 2, store request 1
  resource  listener: execution 4 (CloseListener), trigger 2, store request 1
listener calls: 6, mismatches: 0
";
    assert_eq!(run.stdout, expected);
}

#[test]
fn resource_state_each_request_reads_back_its_own_state() {
    let run = run_example("resource_state", &[]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stderr, "");
    let mut expected = String::new();
    for i in 0..10 {
        let url = format!("/user/{i}?delay={}", 10 * (10 - i));
        expected += &format!("GET {url} -> {{\"state\":\"{url}\"}}\n");
    }
    expected += "states copied by init: 10\nroot resource: no state\nrequests: 10, mismatches: 0\n";
    assert_eq!(run.stdout, expected);
    assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
}

#[test]
fn hooks_trace_prints_the_indented_trace() {
    let run = run_example("hooks_trace", &[]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stderr, "");
    let lines = run.lines();
    assert!(
        lines[0].starts_with("TCPSERVERWRAP(") && lines[0].ends_with("): trigger: 1 execution: 1"),
        "{}",
        lines[0]
    );

    // Replay the trace: indentation follows before/after nesting, every before has its after,
    // every init'ed resource is destroyed exactly once, after its last after.
    let mut depth = 0usize;
    let mut stack = Vec::new();
    let mut alive = BTreeSet::new();
    let mut destroyed = BTreeSet::new();
    for line in &lines {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim_start();
        if text.starts_with(">>> ") {
            assert_eq!(indent, depth, "{line:?}");
            continue;
        }
        if let Some(id) = text.strip_prefix("before:  ") {
            assert_eq!(indent, depth, "{line:?}");
            assert!(alive.contains(id), "before of unknown {id}");
            stack.push(id);
            depth += 2;
        } else if let Some(id) = text.strip_prefix("after:  ") {
            depth -= 2;
            assert_eq!(indent, depth, "{line:?}");
            assert_eq!(stack.pop(), Some(id), "{line:?}");
        } else if let Some(id) = text.strip_prefix("destroy:  ") {
            assert_eq!(indent, depth, "{line:?}");
            assert!(!stack.contains(&id), "{id} destroyed while running");
            assert!(alive.remove(id), "destroy of unknown {id}");
            assert!(destroyed.insert(id), "{id} destroyed twice");
        } else {
            assert_eq!(indent, depth, "{line:?}");
            let (ty, rest) = text.split_once('(').expect("an init line");
            let (id, rest) = rest.split_once("): trigger: ").expect("an init line");
            let (trigger, execution) = rest.split_once(" execution: ").expect("an init line");
            assert!(!ty.is_empty() && !trigger.is_empty() && !execution.is_empty());
            // init runs in the creator's context, which is the trigger.
            assert_eq!(trigger, execution, "{line:?}");
            assert!(alive.insert(id), "{id} created twice");
        }
    }
    assert_eq!(depth, 0);
    assert!(alive.is_empty(), "never destroyed: {alive:?}");
    let types: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.trim_start().split_once('(').map(|(ty, _)| ty))
        .filter(|ty| !ty.contains(' '))
        .collect();
    assert_eq!(
        types,
        [
            "TCPSERVERWRAP",
            "HTTPINCOMINGMESSAGE",
            "DBQuery",
            "bound-anonymous-fn",
            "Timeout"
        ]
    );
    assert!(lines.iter().any(|l| l.starts_with("destroy:  ")));
    assert!(lines.iter().any(|l| l.contains(">>> timer fired in ")));
}

#[test]
fn observability_every_line_has_its_request_id_and_every_span_its_callers_trace() {
    let run = run_example("observability", &["--requests", "16"]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let lines = run.lines();
    assert_eq!(lines.len(), 16 * 3 + 1, "{lines:#?}");
    for line in &lines[..48] {
        assert!(line.starts_with(" INFO "), "{line}");
        let id = line
            .split_once(" request_id=")
            .unwrap_or_else(|| panic!("no request_id: {line}"))
            .1;
        assert!(line.contains(&format!(" n={id} ")), "{line}");
    }
    assert_eq!(
        lines[48],
        "requests: 16, log lines: 48, spans: 48 in 16 traces, mismatches: 0"
    );
}
