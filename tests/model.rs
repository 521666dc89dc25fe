//! Model-based property test: random programs of storage operations, snapshots, resources and
//! bound futures (polled in random order, on this thread or another one, some cancelled) run
//! against the library and against a small reference model of the semantics in `docs/semantics.md`. After every
//! step the test compares every storage's `get_store()`, `execution_async_id()`,
//! `trigger_async_id()` and the hook event log with the model's.
//!
//! 2 000 cases by default; `ASYNC_HOOKS_MODEL_CASES=N` runs N. A failure shrinks to a minimal
//! program (the strategy is built from proptest combinators only).

mod support;
use support::futures::{YieldOnce, poll_once};

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use async_hooks::{
    AsyncId, AsyncLocalStorage, AsyncResource, BindContext, Hooks, Snapshot, async_resource, bind,
    create_hook, execution_async_id, trigger_async_id,
};
use proptest::prelude::*;

const STORAGES: usize = 3;
/// Storage 2 has a default: absent (or disabled) reads it, `exit` reads `None`.
const DEFAULT: u32 = 999;

// ---------------------------------------------------------------------------------------------
// Programs

#[derive(Clone, Debug)]
enum Step {
    Run(usize, u32, Vec<Step>),
    Exit(usize, Vec<Step>),
    /// `let guard = storage[s].enter_scope(v); steps; drop(guard)`.
    EnterScope(usize, u32, Vec<Step>),
    /// Two guards of one storage dropped out of order: `let older = storage[s].enter_scope(v1);
    /// let younger = storage[s].enter_scope(v2); steps; drop(older); drop(younger)`.
    EnterScopeOutOfOrder(usize, u32, u32, Vec<Step>),
    /// A guard that outlives the `run` it was made in: `let guard = storage[s].run(v1, ||
    /// storage[s].enter_scope(v2)); steps; drop(guard)`, which changes nothing.
    GuardOutlivingRun(usize, u32, u32, Vec<Step>),
    EnterWith(usize, u32),
    Disable(usize),
    Capture,
    SnapshotRun(u8, Vec<Step>),
    NewResource,
    ResourceRun(u8, Vec<Step>),
    DropResource(u8),
    /// An instrumented future that runs one step list per poll and is `Pending` between them;
    /// `form`: 0 `bind!(async move …)`, 1 `.bind_context()`, 2 an `#[async_resource]` fn.
    /// `scope: Some((s, v))` wraps the body in `storage[s].scope(v, …)`.
    NewFuture {
        form: u8,
        scope: Option<(usize, u32)>,
        polls: Vec<Vec<Step>>,
    },
    /// Polls a live future once (`true`: on a second thread).
    Poll(u8, bool),
    /// Drops (cancels) a live future (`true`: on a second thread).
    DropFuture(u8, bool),
}

fn step() -> impl Strategy<Value = Step> {
    let storage = 0..STORAGES;
    let value = 1..5u32;
    let leaf = prop_oneof![
        1 => (storage.clone(), value.clone()).prop_map(|(s, v)| Step::EnterWith(s, v)),
        1 => storage.clone().prop_map(Step::Disable),
        1 => Just(Step::Capture),
        1 => Just(Step::NewResource),
        1 => any::<u8>().prop_map(Step::DropResource),
        3 => (any::<u8>(), any::<bool>()).prop_map(|(i, t)| Step::Poll(i, t)),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(i, t)| Step::DropFuture(i, t)),
    ];
    leaf.prop_recursive(3, 32, 4, move |inner| {
        let body = prop::collection::vec(inner, 0..4);
        prop_oneof![
            1 => (storage.clone(), value.clone(), body.clone()).prop_map(|(s, v, b)| Step::Run(s, v, b)),
            1 => (storage.clone(), body.clone()).prop_map(|(s, b)| Step::Exit(s, b)),
            1 => (storage.clone(), value.clone(), body.clone())
                .prop_map(|(s, v, b)| Step::EnterScope(s, v, b)),
            1 => (storage.clone(), value.clone(), value.clone(), body.clone())
                .prop_map(|(s, v1, v2, b)| Step::EnterScopeOutOfOrder(s, v1, v2, b)),
            1 => (storage.clone(), value.clone(), value.clone(), body.clone())
                .prop_map(|(s, v1, v2, b)| Step::GuardOutlivingRun(s, v1, v2, b)),
            1 => (any::<u8>(), body.clone()).prop_map(|(i, b)| Step::SnapshotRun(i, b)),
            1 => (any::<u8>(), body.clone()).prop_map(|(i, b)| Step::ResourceRun(i, b)),
            2 => (
                0..3u8,
                prop::option::of((storage.clone(), value.clone())),
                prop::collection::vec(body, 1..4)
            )
                .prop_map(|(form, scope, polls)| Step::NewFuture { form, scope, polls }),
        ]
    })
}

fn program() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 1..20)
}

/// How many other storages a case runs inside (see [`run_padded`]): none, or enough that a
/// frame with two of the model's storages set no longer fits on a `run`'s stack and spills to
/// the heap.
fn padding() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0), Just(PADDING)]
}

const PADDING: usize = 3;

// ---------------------------------------------------------------------------------------------
// The reference model

/// One storage's state in a frame: `None` absent; `Some((generation, Some(v)))` a value;
/// `Some((generation, None))` exited. An entry of an older generation (before a `disable()`)
/// is invisible.
type Slot = Option<(u32, Option<u32>)>;
type MFrame = [Slot; STORAGES];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ev {
    Init(u64),
    Before,
    After,
    Resolve,
    Destroy,
}

type Event = (Ev, u64);

/// The real event log (hooks are process-wide; events are filtered by the ids a case made).
static LOG: Mutex<Vec<Event>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

struct FutModel {
    id: OnceLock<AsyncId>,
    trigger: AsyncId,
    frame: Mutex<MFrame>,
}

struct LiveFuture {
    fut: BoxFuture,
    id: AsyncId,
    polls_left: usize,
}

struct LiveResource {
    resource: AsyncResource,
    frame: MFrame,
}

struct Shared {
    storages: [AsyncLocalStorage<u32>; STORAGES],
    generations: Mutex<[u32; STORAGES]>,
    snapshots: Mutex<Vec<(Snapshot, MFrame)>>,
    resources: Mutex<Vec<Option<LiveResource>>>,
    futures: Mutex<Vec<Option<LiveFuture>>>,
    ids: Mutex<HashSet<u64>>,
    expected: Mutex<Vec<Event>>,
}

type Ids = (AsyncId, AsyncId);

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            storages: [
                AsyncLocalStorage::new(),
                AsyncLocalStorage::new(),
                AsyncLocalStorage::new().with_default(DEFAULT),
            ],
            generations: Mutex::new([0; STORAGES]),
            snapshots: Mutex::new(Vec::new()),
            resources: Mutex::new(Vec::new()),
            futures: Mutex::new(Vec::new()),
            ids: Mutex::new(HashSet::new()),
            expected: Mutex::new(Vec::new()),
        })
    }

    fn generation(&self, s: usize) -> u32 {
        lock(&self.generations)[s]
    }

    fn expect(&self, ev: Ev, id: AsyncId) {
        lock(&self.expected).push((ev, id.as_u64()));
    }

    fn model_read(&self, frame: &MFrame, s: usize) -> Option<u32> {
        let default = (s == 2).then_some(DEFAULT);
        match frame[s] {
            Some((generation, state)) if generation == self.generation(s) => state,
            _ => default,
        }
    }

    /// The real log restricted to this case's ids.
    fn real_log(&self) -> Vec<Event> {
        let ids = lock(&self.ids).clone();
        lock(&LOG)
            .iter()
            .filter(|(_, id)| ids.contains(id))
            .copied()
            .collect()
    }

    fn check(&self, frame: &MFrame, ids: Ids, after: &Step) {
        for (s, storage) in self.storages.iter().enumerate() {
            assert_eq!(
                storage.get_store().map(|v| *v),
                self.model_read(frame, s),
                "get_store() of storage {s} after {after:?}"
            );
        }
        assert_eq!(
            execution_async_id(),
            ids.0,
            "execution_async_id after {after:?}"
        );
        assert_eq!(
            trigger_async_id(),
            ids.1,
            "trigger_async_id after {after:?}"
        );
        let expected = lock(&self.expected).clone();
        assert_eq!(self.real_log(), expected, "hook events after {after:?}");
    }
}

thread_local! {
    /// The `run`/`exit` scopes open in the current synchronous extent, with the generation of
    /// their storage when they started; `None` marks a scope that restores the whole frame (a
    /// poll, `run_in_async_scope`, `Snapshot::run`).
    static OPEN: std::cell::RefCell<Vec<Option<(usize, u32)>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn open(scope: Option<(usize, u32)>) {
    OPEN.with(|o| o.borrow_mut().push(scope));
}

fn close() {
    OPEN.with(|o| o.borrow_mut().pop());
}

fn pick<T>(slots: &mut [Option<T>], index: u8) -> Option<(usize, T)> {
    if slots.is_empty() {
        return None;
    }
    let i = usize::from(index) % slots.len();
    slots[i].take().map(|t| (i, t))
}

fn exec_steps(sh: &Arc<Shared>, steps: &[Step], frame: &mut MFrame, ids: Ids) {
    for step in steps {
        exec_step(sh, step, frame, ids);
        sh.check(frame, ids, step);
    }
}

/// The body of a model future: one step list per poll, `Pending` between them, inside
/// `storage[s].scope(v, …)` when `scope` is given.
async fn model_body(
    sh: Arc<Shared>,
    model: Arc<FutModel>,
    polls: Vec<Vec<Step>>,
    scope: Option<(usize, u32)>,
) {
    let n = polls.len();
    for (k, steps) in polls.iter().enumerate() {
        let mut inner = *lock(&model.frame);
        let own = (*model.id.get().expect("id set at creation"), model.trigger);
        open(None);
        // `scope` installs its store on top of the future's frame for each poll and restores
        // only its own storage afterwards.
        let scoped = scope.map(|(s, v)| {
            let generation = sh.generation(s);
            let previous = inner[s];
            inner[s] = Some((generation, Some(v)));
            open(Some((s, generation)));
            (s, previous)
        });
        sh.check(&inner, own, &Step::Capture);
        exec_steps(&sh, steps, &mut inner, own);
        if let Some((s, previous)) = scoped {
            close();
            inner[s] = previous;
        }
        close();
        *lock(&model.frame) = inner;
        if k + 1 < n {
            YieldOnce(false).await;
        }
    }
}

async fn scoped_body(
    sh: Arc<Shared>,
    model: Arc<FutModel>,
    polls: Vec<Vec<Step>>,
    scope: Option<(usize, u32)>,
) {
    match scope {
        Some((s, v)) => {
            let storages = sh.clone();
            storages.storages[s]
                .scope(v, model_body(sh, model, polls, scope))
                .await
        }
        None => model_body(sh, model, polls, scope).await,
    }
}

#[async_resource(type = "ModelFuture")]
async fn annotated_body(
    sh: Arc<Shared>,
    model: Arc<FutModel>,
    polls: Vec<Vec<Step>>,
    scope: Option<(usize, u32)>,
) {
    scoped_body(sh, model, polls, scope).await
}

fn on_other_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

fn exec_step(sh: &Arc<Shared>, step: &Step, frame: &mut MFrame, ids: Ids) {
    match step {
        Step::Run(s, v, body) => {
            let previous = frame[*s];
            frame[*s] = Some((sh.generation(*s), Some(*v)));
            open(Some((*s, sh.generation(*s))));
            sh.storages[*s].run(*v, || exec_steps(sh, body, frame, ids));
            close();
            frame[*s] = previous;
        }
        Step::Exit(s, body) => {
            let previous = frame[*s];
            frame[*s] = Some((sh.generation(*s), None));
            open(Some((*s, sh.generation(*s))));
            sh.storages[*s].exit(|| exec_steps(sh, body, frame, ids));
            close();
            frame[*s] = previous;
        }
        Step::EnterScope(s, v, body) => {
            let previous = frame[*s];
            frame[*s] = Some((sh.generation(*s), Some(*v)));
            open(Some((*s, sh.generation(*s))));
            let guard = sh.storages[*s].enter_scope(*v);
            exec_steps(sh, body, frame, ids);
            drop(guard);
            close();
            frame[*s] = previous;
        }
        Step::EnterScopeOutOfOrder(s, v1, v2, body) => {
            let previous = frame[*s];
            frame[*s] = Some((sh.generation(*s), Some(*v1)));
            open(Some((*s, sh.generation(*s))));
            let older = sh.storages[*s].enter_scope(*v1);
            frame[*s] = Some((sh.generation(*s), Some(*v2)));
            open(Some((*s, sh.generation(*s))));
            let younger = sh.storages[*s].enter_scope(*v2);
            exec_steps(sh, body, frame, ids);
            // The older guard ends inside the younger one's scope: nothing changes.
            drop(older);
            sh.check(frame, ids, step);
            close();
            // The younger one puts back what was current before both.
            drop(younger);
            close();
            frame[*s] = previous;
        }
        Step::GuardOutlivingRun(s, v1, v2, body) => {
            let storage = &sh.storages[*s];
            let guard = storage.run(*v1, || storage.enter_scope(*v2));
            sh.check(frame, ids, step);
            exec_steps(sh, body, frame, ids);
            // The guard ended with the `run`: dropping it changes nothing.
            drop(guard);
        }
        Step::EnterWith(s, v) => {
            sh.storages[*s].enter_with(*v);
            frame[*s] = Some((sh.generation(*s), Some(*v)));
        }
        Step::Disable(s) => {
            sh.storages[*s].disable();
            lock(&sh.generations)[*s] += 1;
        }
        Step::Capture => {
            let snapshot = Snapshot::capture();
            lock(&sh.snapshots).push((snapshot, *frame));
        }
        Step::SnapshotRun(i, body) => {
            let picked = {
                let snapshots = lock(&sh.snapshots);
                (!snapshots.is_empty())
                    .then(|| snapshots[usize::from(*i) % snapshots.len()].clone())
            };
            if let Some((snapshot, captured)) = picked {
                let mut inner = captured;
                open(None);
                snapshot.run(|| exec_steps(sh, body, &mut inner, ids));
                close();
            }
        }
        Step::NewResource => {
            let resource = AsyncResource::new("ModelResource");
            assert_eq!(resource.trigger_async_id(), ids.0);
            lock(&sh.ids).insert(resource.async_id().as_u64());
            sh.expect(Ev::Init(ids.0.as_u64()), resource.async_id());
            lock(&sh.resources).push(Some(LiveResource {
                resource,
                frame: *frame,
            }));
        }
        Step::ResourceRun(i, body) => {
            let picked = pick(&mut lock(&sh.resources), *i);
            if let Some((slot, live)) = picked {
                let resource_ids = (live.resource.async_id(), live.resource.trigger_async_id());
                sh.expect(Ev::Before, resource_ids.0);
                let mut inner = live.frame;
                open(None);
                live.resource
                    .run_in_async_scope(|| exec_steps(sh, body, &mut inner, resource_ids));
                close();
                sh.expect(Ev::After, resource_ids.0);
                lock(&sh.resources)[slot] = Some(live);
            }
        }
        Step::DropResource(i) => {
            let picked = pick(&mut lock(&sh.resources), *i);
            if let Some((_, live)) = picked {
                sh.expect(Ev::Destroy, live.resource.async_id());
                drop(live);
            }
        }
        Step::NewFuture { form, scope, polls } => {
            let model = Arc::new(FutModel {
                id: OnceLock::new(),
                trigger: ids.0,
                frame: Mutex::new(*frame),
            });
            let body = scoped_body(sh.clone(), model.clone(), polls.clone(), *scope);
            let (fut, id, trigger): (BoxFuture, AsyncId, AsyncId) = match form {
                0 => {
                    // The point is to go through `bind!`'s async-block form.
                    #[allow(clippy::redundant_async_block)]
                    let fut = bind!(async move { body.await });
                    let (id, trigger) = (fut.async_id(), fut.trigger_async_id());
                    (Box::pin(fut), id, trigger)
                }
                1 => {
                    let fut = body.bind_context();
                    let (id, trigger) = (fut.async_id(), fut.trigger_async_id());
                    (Box::pin(fut), id, trigger)
                }
                _ => {
                    drop(body);
                    let fut = annotated_body(sh.clone(), model.clone(), polls.clone(), *scope);
                    // `#[async_resource]` futures do not expose their id: the init just logged.
                    let (init, id) = *lock(&LOG)
                        .iter()
                        .rev()
                        .find(|(e, _)| matches!(e, Ev::Init(_)))
                        .expect("init logged");
                    let Ev::Init(trigger) = init else {
                        unreachable!()
                    };
                    (
                        Box::pin(fut),
                        AsyncId::from_u64(id),
                        AsyncId::from_u64(trigger),
                    )
                }
            };
            assert_eq!(trigger, ids.0);
            model.id.set(id).expect("set once");
            lock(&sh.ids).insert(id.as_u64());
            sh.expect(Ev::Init(ids.0.as_u64()), id);
            lock(&sh.futures).push(Some(LiveFuture {
                fut,
                id,
                polls_left: polls.len(),
            }));
        }
        Step::Poll(i, other_thread) => {
            let picked = pick(&mut lock(&sh.futures), *i);
            if let Some((slot, mut live)) = picked {
                sh.expect(Ev::Before, live.id);
                let (poll, returned) = if *other_thread {
                    on_other_thread(move || {
                        let poll = poll_once(live.fut.as_mut());
                        (poll, live)
                    })
                } else {
                    (poll_once(live.fut.as_mut()), live)
                };
                let mut live = returned;
                live.polls_left -= 1;
                assert_eq!(poll.is_ready(), live.polls_left == 0, "poll result");
                if poll.is_ready() {
                    sh.expect(Ev::Resolve, live.id);
                }
                sh.expect(Ev::After, live.id);
                if poll.is_ready() {
                    sh.expect(Ev::Destroy, live.id);
                    drop(live);
                } else {
                    lock(&sh.futures)[slot] = Some(live);
                }
            }
        }
        Step::DropFuture(i, other_thread) => {
            let picked = pick(&mut lock(&sh.futures), *i);
            if let Some((_, live)) = picked {
                sh.expect(Ev::Destroy, live.id);
                if *other_thread {
                    on_other_thread(move || drop(live));
                } else {
                    drop(live);
                }
            }
        }
    }
}

/// Every resource's events: `init` first, `before`/`after` balanced and never nested in
/// themselves, at most one `promise_resolve` (inside a poll), `destroy` exactly once and last.
fn check_lifecycles(log: &[Event], ids: &HashSet<u64>) {
    for &id in ids {
        let events: Vec<Ev> = log
            .iter()
            .filter(|(_, i)| *i == id)
            .map(|(e, _)| *e)
            .collect();
        assert!(
            matches!(events.first(), Some(Ev::Init(_))),
            "{id}: {events:?}"
        );
        assert_eq!(events.last(), Some(&Ev::Destroy), "{id}: {events:?}");
        assert_eq!(
            events.iter().filter(|e| **e == Ev::Destroy).count(),
            1,
            "{id}: {events:?}"
        );
        let mut depth = 0usize;
        let mut resolved = 0;
        for e in &events[1..events.len() - 1] {
            match e {
                Ev::Before => depth += 1,
                Ev::After => {
                    assert!(depth > 0, "{id}: after without before: {events:?}");
                    depth -= 1;
                }
                Ev::Resolve => {
                    assert_eq!(depth, 1, "{id}: resolve outside a poll: {events:?}");
                    resolved += 1;
                }
                Ev::Init(_) | Ev::Destroy => panic!("{id}: misplaced {e:?}: {events:?}"),
            }
        }
        assert_eq!(depth, 0, "{id}: unbalanced: {events:?}");
        assert!(resolved <= 1, "{id}: {events:?}");
    }
}

static STATS: Mutex<Stats> = Mutex::new(Stats {
    cases: 0,
    steps: 0,
    resources: 0,
});

struct Stats {
    cases: u64,
    steps: u64,
    resources: u64,
}

/// Runs `f` inside `run`s of `padding` storages that the model does not know of: every frame
/// then has that many more entries, which nothing in the program touches. Storage 1 is written
/// first, so that its key sorts before the padding's and the others' after it: the model's
/// entries go before, between and after the padding's.
fn run_padded(sh: &Shared, padding: usize, f: impl FnOnce()) {
    if padding == 0 {
        return f();
    }
    sh.storages[1].exit(|| ());
    let storages: Vec<AsyncLocalStorage<u32>> =
        (0..padding).map(|_| AsyncLocalStorage::new()).collect();
    fn nest(storages: &[AsyncLocalStorage<u32>], i: usize, f: impl FnOnce()) {
        match storages.get(i) {
            Some(storage) => storage.run(1000 + i as u32, || nest(storages, i + 1, f)),
            None => f(),
        }
    }
    let mut ran = false;
    nest(&storages, 0, || {
        f();
        for (i, storage) in storages.iter().enumerate() {
            assert_eq!(storage.get_store().as_deref(), Some(&(1000 + i as u32)));
        }
        ran = true;
    });
    assert!(ran);
    assert!(storages.iter().all(|storage| storage.get_store().is_none()));
}

fn run_program(steps: &[Step], padding: usize) {
    lock(&LOG).clear();
    OPEN.with(|o| o.borrow_mut().clear());
    let sh = Shared::new();
    let mut frame: MFrame = [None; STORAGES];
    let top = (AsyncId::ROOT, AsyncId::NONE);
    run_padded(&sh, padding, || exec_steps(&sh, steps, &mut frame, top));

    // Tear down: cancel what is left, in creation order.
    let futures: Vec<LiveFuture> = lock(&sh.futures).drain(..).flatten().collect();
    for live in futures {
        sh.expect(Ev::Destroy, live.id);
        drop(live);
    }
    let resources: Vec<LiveResource> = lock(&sh.resources).drain(..).flatten().collect();
    for live in resources {
        sh.expect(Ev::Destroy, live.resource.async_id());
        drop(live);
    }
    sh.check(&frame, top, &Step::Capture);
    let ids = lock(&sh.ids).clone();
    check_lifecycles(&sh.real_log(), &ids);

    let mut stats = lock(&STATS);
    stats.cases += 1;
    stats.steps += lock(&sh.expected).len() as u64;
    stats.resources += ids.len() as u64;
}

fn cases() -> u32 {
    std::env::var("ASYNC_HOOKS_MODEL_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
}

fn recording_hook() -> async_hooks::AsyncHook {
    create_hook(
        Hooks::new()
            .init(|id, _, trigger, _| lock(&LOG).push((Ev::Init(trigger.as_u64()), id.as_u64())))
            .before(|id| lock(&LOG).push((Ev::Before, id.as_u64())))
            .after(|id| lock(&LOG).push((Ev::After, id.as_u64())))
            .promise_resolve(|id| lock(&LOG).push((Ev::Resolve, id.as_u64())))
            .destroy(|id| lock(&LOG).push((Ev::Destroy, id.as_u64()))),
    )
}

#[test]
fn random_programs_match_the_reference_model() {
    let _serial = support::serial();
    let hook = recording_hook().enable();
    let config = ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let cases = (program(), padding());
    let result = proptest::test_runner::TestRunner::new(config).run(&cases, |(steps, padding)| {
        run_program(&steps, padding);
        Ok(())
    });
    hook.disable();
    if let Err(err) = result {
        panic!("{err}");
    }
    let stats = lock(&STATS);
    eprintln!(
        "model: {} cases, {} hook events, {} resources and futures",
        stats.cases, stats.steps, stats.resources
    );
}
