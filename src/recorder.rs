//! A ready-made hook that records the async graph, and exporters to look at it.
//!
//! [`Recorder`] is a [`HookCallbacks`] that keeps every `init`, `before`, `after`,
//! `promise_resolve` and `destroy` event in a bounded ring buffer, with a timestamp relative to
//! the recorder's start and a small per-thread number. [`Recorder::snapshot`] copies the events
//! out as a [`Trace`], which exports to
//!
//! - Chrome trace-event JSON ([`Trace::to_chrome_json`]): one track per thread, one slice named
//!   `Type(id)` per `before`/`after` pair, and a flow arrow from the place each resource was
//!   created (inside its trigger's slice when the trigger was running) to the resource's first
//!   slice. Open it in <https://ui.perfetto.dev> or `chrome://tracing`.
//! - Graphviz DOT ([`Trace::to_dot`]): the trigger tree, one node `Type(id)` per resource and an
//!   edge trigger → resource, rooted at `ROOT(1)`.
//! - SVG ([`Trace::to_svg`], [`Recorder::write_svg`]): that tree laid out and drawn in-process,
//!   with no Graphviz installed.
//!
//! ```
//! use async_hooks::{AsyncResource, Recorder, create_hook};
//!
//! let recorder = Recorder::new(10_000);
//! let hook = create_hook(recorder.clone()).enable();
//! let job = AsyncResource::new("Job");
//! job.run_in_async_scope(|| ());
//! let id = job.async_id();
//! drop(job);
//! hook.disable();
//!
//! let trace = recorder.snapshot();
//! assert!(trace.to_chrome_json().contains(&format!("\"Job({id})\"")));
//! assert!(trace.to_dot().contains(&format!("-> n{id}")));
//! ```

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::{self, Write as _};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::{AsyncId, HookCallbacks, Resource};

/// What happened to a resource in a recorded [`Event`].
///
/// ```
/// use async_hooks::recorder::EventKind;
/// assert_eq!(EventKind::Before.name(), "before");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The resource was created, of type `type_name`, triggered by `trigger_async_id`.
    Init {
        /// The resource's type name.
        type_name: &'static str,
        /// The resource that caused this one to be created.
        trigger_async_id: AsyncId,
    },
    /// A poll or scoped call of the resource starts.
    Before,
    /// A poll or scoped call of the resource ended.
    After,
    /// The instrumented future returned `Ready`.
    PromiseResolve,
    /// The resource was destroyed.
    Destroy,
}

impl EventKind {
    /// The hook's name for this event: `init`, `before`, `after`, `promise_resolve`, `destroy`.
    ///
    /// ```
    /// use async_hooks::recorder::EventKind;
    /// assert_eq!(EventKind::PromiseResolve.name(), "promise_resolve");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Init { .. } => "init",
            EventKind::Before => "before",
            EventKind::After => "after",
            EventKind::PromiseResolve => "promise_resolve",
            EventKind::Destroy => "destroy",
        }
    }
}

/// One recorded hook event.
///
/// ```
/// use async_hooks::{AsyncResource, Recorder, create_hook};
/// use async_hooks::recorder::EventKind;
///
/// let recorder = Recorder::new(16);
/// let hook = create_hook(recorder.clone()).enable();
/// let job = AsyncResource::new("Job");
/// hook.disable();
/// let event = recorder.snapshot().events[0];
/// assert_eq!(event.async_id, job.async_id());
/// assert!(matches!(event.kind, EventKind::Init { type_name: "Job", .. }));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The resource it happened to.
    pub async_id: AsyncId,
    /// When, relative to the recorder's start.
    pub time: Duration,
    /// The thread it happened on: a small number, stable for the life of the thread, the same
    /// for every recorder (see [`thread_number`]).
    pub thread: u32,
}

/// This thread's small, stable number, as recorded in [`Event::thread`]: threads are numbered
/// 1, 2, 3, … in the order they first ask (or first record an event).
///
/// ```
/// let here = async_hooks::recorder::thread_number();
/// assert_eq!(here, async_hooks::recorder::thread_number());
/// let there = std::thread::spawn(async_hooks::recorder::thread_number).join().unwrap();
/// assert_ne!(here, there);
/// ```
pub fn thread_number() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    thread_local! {
        static NUMBER: Cell<u32> = const { Cell::new(0) };
    }
    NUMBER
        .try_with(|number| {
            let n = number.get();
            if n != 0 {
                return n;
            }
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            number.set(n);
            let name = std::thread::current()
                .name()
                .map_or_else(|| format!("thread {n}"), str::to_owned);
            lock(thread_names()).insert(n, name);
            n
        })
        // A thread-local being destroyed: record the event on a shared "unknown thread" track.
        .unwrap_or(0)
}

fn thread_names() -> &'static Mutex<BTreeMap<u32, String>> {
    static NAMES: Mutex<BTreeMap<u32, String>> = Mutex::new(BTreeMap::new());
    &NAMES
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Ring {
    events: VecDeque<Event>,
    dropped: u64,
}

struct Inner {
    start: Instant,
    capacity: usize,
    ring: Mutex<Ring>,
}

/// A [`HookCallbacks`] that records every hook event in a ring buffer of bounded size.
///
/// `Recorder` is a cheap `Clone` handle: give one clone to [`create_hook`](crate::create_hook)
/// and keep another to read the events with [`Recorder::snapshot`]. When the buffer is full, the
/// oldest event is dropped to make room and counted ([`Recorder::dropped`]). Each event takes one
/// lock of a mutex and no allocation once the buffer has grown to its capacity.
///
/// ```
/// use async_hooks::{AsyncResource, Recorder, create_hook};
///
/// let recorder = Recorder::new(2);
/// let hook = create_hook(recorder.clone()).enable();
/// let job = AsyncResource::new("Job"); // init
/// job.run_in_async_scope(|| ()); // before, after
/// hook.disable();
/// assert_eq!(recorder.len(), 2);
/// assert_eq!(recorder.dropped(), 1);
/// ```
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

impl Recorder {
    /// A recorder that keeps at most `capacity` events (the most recent ones). Its clock starts
    /// now.
    ///
    /// ```
    /// let recorder = async_hooks::Recorder::new(1024);
    /// assert_eq!(recorder.capacity(), 1024);
    /// assert!(recorder.is_empty());
    /// ```
    pub fn new(capacity: usize) -> Recorder {
        Recorder {
            inner: Arc::new(Inner {
                start: Instant::now(),
                capacity,
                ring: Mutex::new(Ring {
                    events: VecDeque::with_capacity(capacity.min(1 << 16)),
                    dropped: 0,
                }),
            }),
        }
    }

    /// The most events this recorder keeps.
    ///
    /// ```
    /// assert_eq!(async_hooks::Recorder::new(8).capacity(), 8);
    /// ```
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// How many events are kept now (at most [`Recorder::capacity`]).
    ///
    /// ```
    /// assert_eq!(async_hooks::Recorder::new(8).len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        lock(&self.inner.ring).events.len()
    }

    /// Whether no event is kept.
    ///
    /// ```
    /// assert!(async_hooks::Recorder::new(8).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many events were dropped because the buffer was full (clearing does not count).
    ///
    /// ```
    /// assert_eq!(async_hooks::Recorder::new(8).dropped(), 0);
    /// ```
    pub fn dropped(&self) -> u64 {
        lock(&self.inner.ring).dropped
    }

    /// Forgets every kept event and resets the dropped count.
    ///
    /// ```
    /// use async_hooks::{AsyncResource, Recorder, create_hook};
    /// let recorder = Recorder::new(8);
    /// let hook = create_hook(recorder.clone()).enable();
    /// drop(AsyncResource::new("Job"));
    /// hook.disable();
    /// recorder.clear();
    /// assert!(recorder.is_empty());
    /// ```
    pub fn clear(&self) {
        let mut ring = lock(&self.inner.ring);
        ring.events.clear();
        ring.dropped = 0;
    }

    /// A copy of the kept events (oldest first), the dropped count and the names of the threads.
    ///
    /// ```
    /// use async_hooks::{AsyncResource, Recorder, create_hook};
    /// let recorder = Recorder::new(8);
    /// let hook = create_hook(recorder.clone()).enable();
    /// drop(AsyncResource::new("Job"));
    /// hook.disable();
    /// let trace = recorder.snapshot();
    /// assert_eq!(trace.events.len(), 2); // init, destroy
    /// assert_eq!(trace.dropped, 0);
    /// ```
    pub fn snapshot(&self) -> Trace {
        let (events, dropped) = {
            let ring = lock(&self.inner.ring);
            (
                ring.events.iter().copied().collect::<Vec<_>>(),
                ring.dropped,
            )
        };
        let used: BTreeSet<u32> = events.iter().map(|e| e.thread).collect();
        let names = lock(thread_names());
        let thread_names = used
            .into_iter()
            .map(|t| {
                let name = names
                    .get(&t)
                    .cloned()
                    .unwrap_or_else(|| format!("thread {t}"));
                (t, name)
            })
            .collect();
        Trace {
            events,
            dropped,
            thread_names,
        }
    }

    /// Writes the trigger tree of the events kept so far to `path` as an SVG image
    /// ([`Trace::to_svg`] of a [`Recorder::snapshot`]), rendered in-process.
    ///
    /// ```
    /// use async_hooks::{AsyncResource, Recorder, create_hook};
    /// let recorder = Recorder::new(16);
    /// let hook = create_hook(recorder.clone()).enable();
    /// let job = AsyncResource::new("Job");
    /// hook.disable();
    /// let path = std::env::temp_dir().join(format!("async-hooks-doc-{}.svg", std::process::id()));
    /// recorder.write_svg(&path)?;
    /// let svg = std::fs::read_to_string(&path)?;
    /// assert!(svg.contains(&format!("Job({})", job.async_id())));
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn write_svg(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, self.snapshot().to_svg())
    }

    fn record(&self, async_id: AsyncId, kind: EventKind) {
        let thread = thread_number();
        let inner = &*self.inner;
        let mut ring = lock(&inner.ring);
        // Taken under the lock, so the buffer is in time order across threads.
        let time = inner.start.elapsed();
        if inner.capacity == 0 {
            ring.dropped += 1;
            return;
        }
        if ring.events.len() == inner.capacity {
            ring.events.pop_front();
            ring.dropped += 1;
        }
        ring.events.push_back(Event {
            kind,
            async_id,
            time,
            thread,
        });
    }
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = lock(&self.inner.ring);
        f.debug_struct("Recorder")
            .field("capacity", &self.inner.capacity)
            .field("len", &ring.events.len())
            .field("dropped", &ring.dropped)
            .finish()
    }
}

impl HookCallbacks for Recorder {
    fn init(&self, async_id: AsyncId, _type_name: &str, trigger: AsyncId, resource: &Resource) {
        // The resource's own name is `'static`: no allocation per event.
        let type_name = resource.type_name();
        self.record(
            async_id,
            EventKind::Init {
                type_name,
                trigger_async_id: trigger,
            },
        );
    }

    fn before(&self, async_id: AsyncId) {
        self.record(async_id, EventKind::Before);
    }

    fn after(&self, async_id: AsyncId) {
        self.record(async_id, EventKind::After);
    }

    fn destroy(&self, async_id: AsyncId) {
        self.record(async_id, EventKind::Destroy);
    }

    fn promise_resolve(&self, async_id: AsyncId) {
        self.record(async_id, EventKind::PromiseResolve);
    }
}

/// A slice of a [`Trace`]: one `before`/`after` pair of a resource on one thread.
///
/// ```
/// use async_hooks::{AsyncResource, Recorder, create_hook};
/// let recorder = Recorder::new(16);
/// let hook = create_hook(recorder.clone()).enable();
/// let job = AsyncResource::new("Job");
/// job.run_in_async_scope(|| ());
/// hook.disable();
/// let slices = recorder.snapshot().slices();
/// assert_eq!(slices.len(), 1);
/// assert_eq!(slices[0].async_id, job.async_id());
/// assert!(slices[0].begin <= slices[0].end);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    /// The resource that ran.
    pub async_id: AsyncId,
    /// The thread it ran on.
    pub thread: u32,
    /// The time of its `before`.
    pub begin: Duration,
    /// The time of its `after`.
    pub end: Duration,
    /// How many slices of the same thread enclose it.
    pub depth: usize,
}

/// Recorded events copied out of a [`Recorder`], with exporters.
///
/// ```
/// use async_hooks::{AsyncResource, Recorder, create_hook};
/// let recorder = Recorder::new(16);
/// let hook = create_hook(recorder.clone()).enable();
/// drop(AsyncResource::new("Job"));
/// hook.disable();
/// let trace = recorder.snapshot();
/// assert!(trace.to_chrome_json().starts_with('{'));
/// assert!(trace.to_dot().starts_with("digraph"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// The kept events, oldest first.
    pub events: Vec<Event>,
    /// How many events the ring buffer dropped before these.
    pub dropped: u64,
    /// The names of the threads that appear in `events`, by thread number.
    pub thread_names: BTreeMap<u32, String>,
}

impl Trace {
    /// The type name of every resource whose `init` was kept.
    ///
    /// ```
    /// use async_hooks::{AsyncResource, Recorder, create_hook};
    /// let recorder = Recorder::new(16);
    /// let hook = create_hook(recorder.clone()).enable();
    /// let job = AsyncResource::new("Job");
    /// hook.disable();
    /// assert_eq!(recorder.snapshot().type_names()[&job.async_id()], "Job");
    /// ```
    pub fn type_names(&self) -> HashMap<AsyncId, &'static str> {
        self.events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::Init { type_name, .. } => Some((e.async_id, type_name)),
                _ => None,
            })
            .collect()
    }

    /// Every `before`/`after` pair, matched per thread (they nest), in the order of their
    /// `after`. A `before` without its `after` (still running at the snapshot) or an `after`
    /// whose `before` was dropped from the ring buffer makes no slice.
    ///
    /// ```
    /// use async_hooks::{AsyncResource, Recorder, create_hook};
    /// let recorder = Recorder::new(16);
    /// let hook = create_hook(recorder.clone()).enable();
    /// let outer = AsyncResource::new("Outer");
    /// outer.run_in_async_scope(|| AsyncResource::new("Inner").run_in_async_scope(|| ()));
    /// hook.disable();
    /// let slices = recorder.snapshot().slices();
    /// assert_eq!(slices.len(), 2);
    /// assert_eq!((slices[0].depth, slices[1].depth), (1, 0));
    /// ```
    pub fn slices(&self) -> Vec<Slice> {
        let mut open: HashMap<u32, Vec<(AsyncId, Duration)>> = HashMap::new();
        let mut slices = Vec::new();
        for e in &self.events {
            match e.kind {
                EventKind::Before => open.entry(e.thread).or_default().push((e.async_id, e.time)),
                EventKind::After => {
                    let stack = open.entry(e.thread).or_default();
                    if let Some(pos) = stack.iter().rposition(|&(id, _)| id == e.async_id) {
                        let (_, begin) = stack[pos];
                        // Anything opened above it and not closed lost its `after`: drop it.
                        stack.truncate(pos);
                        slices.push(Slice {
                            async_id: e.async_id,
                            thread: e.thread,
                            begin,
                            end: e.time,
                            depth: pos,
                        });
                    }
                }
                _ => {}
            }
        }
        slices
    }

    /// The trace in Chrome's trace-event JSON format (the "JSON Object Format"), which
    /// <https://ui.perfetto.dev> and `chrome://tracing` open.
    ///
    /// - Every thread is a track (`"tid"`: the thread number), named after the thread.
    /// - Every `before`/`after` pair is a complete event (`"ph":"X"`) named `Type(id)`,
    ///   category `async`, with `args.async_id`.
    /// - Every `init` is a zero-length complete event named `init Type(id)` (category `init`) on
    ///   the creating thread, with `args.async_id` and `args.trigger_async_id`; it sits inside
    ///   the trigger's slice when the trigger was running there.
    /// - A flow arrow (`"ph":"s"` at the `init`, `"ph":"f"` with `"bp":"e"` at the start of
    ///   the resource's first slice, both with `"id"` = the resource's id and category
    ///   `trigger`) leads from the creation to where the resource first runs.
    /// - `promise_resolve` and `destroy` are instant events (`"ph":"i"`).
    /// - `otherData.dropped_events` is the number of events the ring buffer dropped.
    ///
    /// Timestamps are microseconds (with nanosecond decimals) since the recorder's start.
    ///
    /// ```
    /// use async_hooks::{AsyncResource, Recorder, create_hook};
    /// let recorder = Recorder::new(16);
    /// let hook = create_hook(recorder.clone()).enable();
    /// let job = AsyncResource::new("Job");
    /// job.run_in_async_scope(|| ());
    /// hook.disable();
    /// let json = recorder.snapshot().to_chrome_json();
    /// assert!(json.contains("\"ph\":\"X\""));
    /// assert!(json.contains("\"ph\":\"s\""));
    /// assert!(json.contains("\"ph\":\"f\""));
    /// ```
    pub fn to_chrome_json(&self) -> String {
        let names = self.type_names();
        let label = |id: AsyncId| resource_label(&names, id);
        let mut out = String::with_capacity(128 + self.events.len() * 120);
        out.push_str("{\"traceEvents\":[\n");
        let mut first = true;
        let mut item = |out: &mut String, s: String| {
            if !first {
                out.push_str(",\n");
            }
            first = false;
            out.push_str(&s);
        };
        item(
            &mut out,
            "{\"ph\":\"M\",\"pid\":1,\"name\":\"process_name\",\"args\":{\"name\":\"async-hooks\"}}"
                .to_string(),
        );
        for (tid, name) in &self.thread_names {
            item(
                &mut out,
                format!(
                    "{{\"ph\":\"M\",\"pid\":1,\"tid\":{tid},\"name\":\"thread_name\",\"args\":{{\"name\":{}}}}}",
                    json_string(name)
                ),
            );
        }
        // The first slice of each resource: where its flow arrow ends.
        let slices = self.slices();
        let mut first_slice: HashMap<AsyncId, Slice> = HashMap::new();
        for s in &slices {
            first_slice
                .entry(s.async_id)
                .and_modify(|f| {
                    if s.begin < f.begin {
                        *f = *s;
                    }
                })
                .or_insert(*s);
        }
        // Slices, sorted by begin (outer first at equal times) for readers that want order.
        let mut sorted = slices.clone();
        sorted.sort_by_key(|s| (s.begin, s.depth));
        let mut slice_iter = sorted.iter().peekable();
        let mut emit_slices_until = |out: &mut String,
                                     item: &mut dyn FnMut(&mut String, String),
                                     until: Option<Duration>| {
            while let Some(s) = slice_iter.next_if(|s| until.is_none_or(|t| s.begin <= t)) {
                item(
                    out,
                    format!(
                        "{{\"ph\":\"X\",\"cat\":\"async\",\"name\":{},\"pid\":1,\"tid\":{},\"ts\":{},\"dur\":{},\"args\":{{\"async_id\":{}}}}}",
                        json_string(&label(s.async_id)),
                        s.thread,
                        micros(s.begin),
                        micros(s.end - s.begin),
                        s.async_id
                    ),
                );
                if first_slice.get(&s.async_id) == Some(s) {
                    item(
                        out,
                        format!(
                            "{{\"ph\":\"f\",\"bp\":\"e\",\"cat\":\"trigger\",\"name\":\"trigger\",\"id\":{},\"pid\":1,\"tid\":{},\"ts\":{}}}",
                            s.async_id,
                            s.thread,
                            micros(s.begin)
                        ),
                    );
                }
            }
        };
        for e in &self.events {
            emit_slices_until(&mut out, &mut item, Some(e.time));
            let (tid, ts, id) = (e.thread, micros(e.time), e.async_id);
            match e.kind {
                EventKind::Init {
                    trigger_async_id, ..
                } => {
                    item(
                        &mut out,
                        format!(
                            "{{\"ph\":\"X\",\"cat\":\"init\",\"name\":{},\"pid\":1,\"tid\":{tid},\"ts\":{ts},\"dur\":0,\"args\":{{\"async_id\":{id},\"trigger_async_id\":{trigger_async_id}}}}}",
                            json_string(&format!("init {}", label(id)))
                        ),
                    );
                    if first_slice.contains_key(&id) {
                        item(
                            &mut out,
                            format!(
                                "{{\"ph\":\"s\",\"cat\":\"trigger\",\"name\":\"trigger\",\"id\":{id},\"pid\":1,\"tid\":{tid},\"ts\":{ts},\"args\":{{\"trigger_async_id\":{trigger_async_id}}}}}"
                            ),
                        );
                    }
                }
                EventKind::PromiseResolve | EventKind::Destroy => item(
                    &mut out,
                    format!(
                        "{{\"ph\":\"i\",\"s\":\"t\",\"cat\":\"{}\",\"name\":{},\"pid\":1,\"tid\":{tid},\"ts\":{ts},\"args\":{{\"async_id\":{id}}}}}",
                        e.kind.name(),
                        json_string(&format!("{} {}", e.kind.name(), label(id)))
                    ),
                ),
                EventKind::Before | EventKind::After => {}
            }
        }
        emit_slices_until(&mut out, &mut item, None);
        let _ = write!(
            out,
            "\n],\"displayTimeUnit\":\"ns\",\"otherData\":{{\"dropped_events\":{}}}}}\n",
            self.dropped
        );
        out
    }

    /// The trigger tree of [`Trace::to_dot`] laid out and drawn as an SVG image, in-process (no
    /// Graphviz needed): one box `Type(id)` per resource, an arrow trigger → resource, left to
    /// right from `ROOT(1)`. Up to 100 resources the layout also reorders the nodes so that
    /// edges do not cross, which takes time that grows about as the cube of the number of
    /// resources; above that it skips this step (edges may cross) and stays fast. For a whole
    /// production trace, render [`Trace::to_dot`] with Graphviz instead.
    ///
    /// ```
    /// use async_hooks::{AsyncResource, Recorder, create_hook};
    /// let recorder = Recorder::new(16);
    /// let hook = create_hook(recorder.clone()).enable();
    /// let job = AsyncResource::new("Job");
    /// hook.disable();
    /// let svg = recorder.snapshot().to_svg();
    /// assert!(svg.contains("<svg"));
    /// assert!(svg.contains(&format!("Job({})", job.async_id())));
    /// ```
    pub fn to_svg(&self) -> String {
        let resources = self.type_names().len();
        render_svg(&self.to_dot(), resources > SVG_UNCROSSED_MAX)
    }

    /// The trigger tree in Graphviz DOT: one node `n<id>` labelled `Type(id)` per resource whose
    /// `init` was kept, the root `ROOT(1)`, and an edge trigger → resource for each. A trigger
    /// whose `init` was not kept is a dashed node labelled `?(id)`. The dropped count, if any, is
    /// in the graph's label.
    ///
    /// ```
    /// use async_hooks::{AsyncResource, Recorder, create_hook};
    /// let recorder = Recorder::new(16);
    /// let hook = create_hook(recorder.clone()).enable();
    /// let job = AsyncResource::new("Job");
    /// hook.disable();
    /// let dot = recorder.snapshot().to_dot();
    /// assert!(dot.contains("n1 [label=\"ROOT(1)\""));
    /// assert!(dot.contains(&format!("n1 -> n{}", job.async_id())));
    /// ```
    pub fn to_dot(&self) -> String {
        let names = self.type_names();
        let mut out = String::from("digraph async_graph {\n  rankdir=LR;\n");
        out.push_str("  node [shape=box, fontname=\"monospace\"];\n");
        if self.dropped > 0 {
            let _ = writeln!(out, "  label=\"{} earlier events dropped\";", self.dropped);
        }
        out.push_str("  n1 [label=\"ROOT(1)\", shape=ellipse];\n");
        let mut declared: BTreeSet<AsyncId> = BTreeSet::from([AsyncId::ROOT]);
        let mut edges = Vec::new();
        for e in &self.events {
            if let EventKind::Init {
                type_name,
                trigger_async_id,
            } = e.kind
            {
                if declared.insert(e.async_id) {
                    let _ = writeln!(
                        out,
                        "  n{} [label={}];",
                        e.async_id,
                        dot_string(&format!("{type_name}({})", e.async_id))
                    );
                }
                edges.push((trigger_async_id, e.async_id));
            }
        }
        for &(trigger, _) in &edges {
            if !names.contains_key(&trigger) && declared.insert(trigger) {
                let _ = writeln!(
                    out,
                    "  n{trigger} [label={}, style=dashed];",
                    dot_string(&format!("?({trigger})"))
                );
            }
        }
        for (trigger, id) in edges {
            let _ = writeln!(out, "  n{trigger} -> n{id};");
        }
        out.push_str("}\n");
        out
    }
}

/// Above this many resources, [`Trace::to_svg`] skips the edge-crossing reduction, whose time
/// grows about as the cube of the node count.
const SVG_UNCROSSED_MAX: usize = 100;

/// Lays out and draws a DOT graph written by [`Trace::to_dot`].
fn render_svg(dot: &str, skip_crossing_reduction: bool) -> String {
    use layout::backends::svg::SVGWriter;
    use layout::gv::{DotParser, GraphBuilder};

    let ast = DotParser::new(dot)
        .process()
        // `to_dot` writes only constructs the parser reads: a failure is a bug here.
        .unwrap_or_else(|err| panic!("the trigger graph is not valid DOT ({err}):\n{dot}"));
    let mut builder = GraphBuilder::new();
    builder.visit_graph(&ast);
    let mut graph = builder.get();
    let mut svg = SVGWriter::new();
    graph.do_it(false, skip_crossing_reduction, false, &mut svg);
    svg.finalize()
}

fn resource_label(names: &HashMap<AsyncId, &'static str>, id: AsyncId) -> String {
    if id == AsyncId::ROOT {
        return "ROOT(1)".to_string();
    }
    match names.get(&id) {
        Some(ty) => format!("{ty}({id})"),
        None => format!("?({id})"),
    }
}

/// Microseconds with nanosecond decimals, as Chrome's `ts` and `dur` want.
fn micros(d: Duration) -> String {
    let nanos = d.as_nanos();
    format!("{}.{:03}", nanos / 1000, nanos % 1000)
}

/// `s` as a JSON string literal, quoted and escaped (RFC 8259).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `s` as a DOT quoted string.
fn dot_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\n\\u0001é\"");
    }

    #[test]
    fn dot_strings_are_escaped() {
        assert_eq!(dot_string("a\"b\\"), "\"a\\\"b\\\\\"");
    }

    #[test]
    fn svg_renders_an_empty_trace_and_unknown_triggers() {
        let empty = Trace::default().to_svg();
        assert!(empty.contains(">ROOT(1)</tspan>"), "{empty}");
        // A trigger whose `init` was dropped from the ring, and the dropped count in the label.
        let trace = Trace {
            events: vec![Event {
                kind: EventKind::Init {
                    type_name: "Job",
                    trigger_async_id: AsyncId::from_u64(7),
                },
                async_id: AsyncId::from_u64(9),
                time: Duration::ZERO,
                thread: 1,
            }],
            dropped: 3,
            thread_names: BTreeMap::new(),
        };
        let svg = trace.to_svg();
        assert!(svg.contains(">Job(9)</tspan>"), "{svg}");
        assert!(svg.contains(">?(7)</tspan>"), "{svg}");
    }

    #[test]
    fn svg_draws_every_resource_of_a_large_trace() {
        let n = SVG_UNCROSSED_MAX as u64 * 3;
        let events = (0..n)
            .map(|i| Event {
                kind: EventKind::Init {
                    type_name: "Job",
                    trigger_async_id: AsyncId::from_u64(if i < 5 { 1 } else { 2 + i / 3 }),
                },
                async_id: AsyncId::from_u64(2 + i),
                time: Duration::ZERO,
                thread: 1,
            })
            .collect();
        let trace = Trace {
            events,
            dropped: 0,
            thread_names: BTreeMap::new(),
        };
        let svg = trace.to_svg();
        assert_eq!(svg.matches("<rect").count() as u64, n);
        for i in 0..n {
            assert!(
                svg.contains(&format!(">Job({})</tspan>", 2 + i)),
                "Job({})",
                2 + i
            );
        }
    }

    #[test]
    fn micros_keep_nanoseconds() {
        assert_eq!(micros(Duration::from_nanos(1_234_567)), "1234.567");
        assert_eq!(micros(Duration::from_nanos(5)), "0.005");
    }
}
