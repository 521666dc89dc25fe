//! loom model tests of the hook registry: `enable`/`disable` on one thread while another
//! dispatches, a thread leaving the registry while another publishes, and concurrent
//! `enable`/`disable`.
//!
//! Built only with `--cfg async_hooks_loom`, which puts the registry's lock and atomics on loom's:
//!
//! ```text
//! RUSTFLAGS="--cfg async_hooks_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p async-hooks-core --lib --release loom -- --nocapture
//! ```
//!
//! Each model builds its own [`HookRegistry`] (loom forbids sharing a `static` across its runs)
//! and gives each loom thread its own [`ThreadHooks`], the per-thread view that production keeps
//! in the thread's state. [`deliver`] is `emit` + `dispatch` without the callbacks: the
//! production check `ThreadHooks::wants` (the thread's word), then `ThreadHooks::dispatch_table`
//! (refresh, which registers the thread, in an outermost dispatch, depth 0, only) and the list
//! for the event's kind. loom explores every distinct interleaving of the registry's lock, its
//! `version`, the threads' words and the tests' flags, with no preemption bound, under the C11
//! memory model (relaxed loads may return any value the model allows).
//!
//! What is *not* modelled: the `ThreadState` thread-local (loom runs its threads on one OS
//! thread, so std thread-locals would be shared; the tests pass the depth explicitly), the
//! hooks' `Arc` reference counts and `enabled` flags (std atomics, not part of the protocol), and
//! the callbacks themselves.

use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};
use std::sync::{Arc, Mutex as StdMutex};

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;

use super::{AsyncHook, HookRegistry, Hooks, Kind, ThreadHooks, create_hook};

/// The hooks of a model, each subscribed to `init` and possibly other events, named for the
/// assertions.
struct Named(Vec<(&'static str, AsyncHook)>);

impl Named {
    fn new(hooks: &[(&'static str, bool)]) -> Named {
        Named(
            hooks
                .iter()
                .map(|&(name, before)| {
                    let mut callbacks = Hooks::new().init(|_, _, _, _| {});
                    if before {
                        callbacks = callbacks.before(|_| {});
                    }
                    (name, create_hook(callbacks))
                })
                .collect(),
        )
    }

    fn get(&self, name: &str) -> &AsyncHook {
        &self.0.iter().find(|(n, _)| *n == name).unwrap().1
    }

    fn name_of(&self, hook: &Arc<super::HookInner>) -> &'static str {
        self.0
            .iter()
            .find(|(_, h)| Arc::ptr_eq(&h.inner, hook))
            .map(|(n, _)| *n)
            .expect("a hook that no model created")
    }

    fn enable(&self, registry: &HookRegistry, name: &str) -> bool {
        registry.enable(&self.get(name).inner)
    }

    fn disable(&self, registry: &HookRegistry, name: &str) -> bool {
        registry.disable(&self.get(name).inner)
    }

    /// The registry's enabled list, by name.
    fn enabled(&self, registry: &HookRegistry) -> Vec<&'static str> {
        let locked = registry.lock();
        locked.enabled.iter().map(|h| self.name_of(h)).collect()
    }
}

/// A loom thread's [`ThreadHooks`], which leaves the registry and releases its cached table
/// when the thread's model run ends (in production, the thread's exit does). Boxed: the registry
/// keeps a pointer to its word, so it must not move once registered (in production it lives in a
/// thread-local).
struct Cache {
    hooks: Box<ThreadHooks>,
    registry: Arc<HookRegistry>,
}

impl Cache {
    fn new(registry: &Arc<HookRegistry>) -> Cache {
        Cache {
            hooks: Box::new(ThreadHooks::new()),
            registry: registry.clone(),
        }
    }
}

impl std::ops::Deref for Cache {
    type Target = ThreadHooks;
    fn deref(&self) -> &ThreadHooks {
        &self.hooks
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.hooks.release(&self.registry);
    }
}

/// The hooks an event of `kind` raised at `depth` on `thread` is delivered to, in order: `emit`'s
/// check (`wants`) then `dispatch`'s choice of table and list.
fn deliver(
    named: &Named,
    registry: &HookRegistry,
    cache: &ThreadHooks,
    kind: Kind,
    depth: u32,
) -> Vec<&'static str> {
    if !cache.wants(kind) {
        return Vec::new();
    }
    let table = cache.dispatch_table(registry, depth == 0);
    match table {
        Some(table) => table.list(kind).iter().map(|h| named.name_of(h)).collect(),
        None => Vec::new(),
    }
}

/// Runs `model` under loom, every interleaving, and returns how many it explored.
fn explore(name: &str, model: impl Fn() + Sync + Send + 'static) -> usize {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    loom::model::Builder::new().check(move || {
        counter.fetch_add(1, StdOrdering::Relaxed);
        model();
    });
    let runs = runs.load(StdOrdering::Relaxed);
    println!("{name}: {runs} interleavings explored");
    // A model that loom ran once explored nothing concurrent: the shim is not in effect.
    assert!(runs > 1, "{name}: loom explored {runs} interleaving(s)");
    runs
}

/// Thread A enables `H` while thread B dispatches events. Every event of B goes to a whole
/// published table (`init` to `[G]` or `[G, H]`, `before` to `[]` or `[H]`), never a torn or
/// reordered one, and once B has delivered to `H` it keeps doing so (the cache never goes back to
/// an older table).
#[test]
fn loom_enable_racing_a_dispatch_delivers_whole_tables() {
    explore(
        "loom_enable_racing_a_dispatch_delivers_whole_tables",
        || {
            let named = Arc::new(Named::new(&[("G", false), ("H", true)]));
            let registry = Arc::new(HookRegistry::new());
            named.enable(&registry, "G");

            let a = {
                let (named, registry) = (named.clone(), registry.clone());
                thread::spawn(move || assert!(named.enable(&registry, "H")))
            };
            let b = {
                let (named, registry) = (named.clone(), registry.clone());
                thread::spawn(move || {
                    let cache = Cache::new(&registry);
                    let mut saw_h = false;
                    for kind in [Kind::Init, Kind::Before, Kind::Init] {
                        let got = deliver(&named, &registry, &cache, kind, 0);
                        let (old, new): (&[&str], &[&str]) = match kind {
                            Kind::Init => (&["G"], &["G", "H"]),
                            _ => (&[], &["H"]),
                        };
                        assert!(got == old || got == new, "{kind:?} delivered to {got:?}");
                        if saw_h {
                            assert_eq!(got, new, "{kind:?} went back to an older table");
                        }
                        saw_h |= got == new;
                    }
                })
            };
            a.join().unwrap();
            b.join().unwrap();
        },
    );
}

/// Thread A enables `H`, then signals B through a Release/Acquire flag, then enables `K`. B's
/// first dispatch (before the signal) caches a table; its next outermost dispatches after the
/// signal deliver to `H` (also `before`, which only `H` wants: the relaxed word must not skip
/// it), while A may still be publishing `K`.
#[test]
fn loom_enable_then_signal_reaches_the_next_outermost_dispatch() {
    explore(
        "loom_enable_then_signal_reaches_the_next_outermost_dispatch",
        || {
            let named = Arc::new(Named::new(&[("G", false), ("H", true), ("K", false)]));
            let registry = Arc::new(HookRegistry::new());
            let enabled = Arc::new(AtomicBool::new(false));
            named.enable(&registry, "G");

            let a = {
                let (named, registry, enabled) = (named.clone(), registry.clone(), enabled.clone());
                thread::spawn(move || {
                    named.enable(&registry, "H");
                    enabled.store(true, Ordering::Release);
                    named.enable(&registry, "K");
                })
            };
            let cache = Cache::new(&registry);
            let first = deliver(&named, &registry, &cache, Kind::Init, 0);
            assert!(
                [&["G"][..], &["G", "H"], &["G", "H", "K"]].contains(&&first[..]),
                "init delivered to {first:?}"
            );
            while !enabled.load(Ordering::Acquire) {
                thread::yield_now();
            }
            let before = deliver(&named, &registry, &cache, Kind::Before, 0);
            assert_eq!(before, ["H"], "before after the signal");
            let init = deliver(&named, &registry, &cache, Kind::Init, 0);
            assert!(
                init == ["G", "H"] || init == ["G", "H", "K"],
                "init after the signal delivered to {init:?}"
            );
            a.join().unwrap();
            // Joined: every change happened before this event.
            let last = deliver(&named, &registry, &cache, Kind::Init, 0);
            assert_eq!(last, ["G", "H", "K"], "init after the join");
        },
    );
}

/// Thread A disables `H` once thread B is inside an outermost `init` dispatch to `[G, H]`. B's
/// nested events (depth 1) still go to that table, `H` included, whatever A has done (changes
/// apply when the outermost dispatch returns); after A signals that `disable` returned, B's next
/// outermost dispatches skip `H` (`before`, which only `H` wanted, is not even dispatched).
#[test]
fn loom_disable_during_a_dispatch_applies_when_the_outermost_returns() {
    explore(
        "loom_disable_during_a_dispatch_applies_when_the_outermost_returns",
        || {
            let named = Arc::new(Named::new(&[("G", false), ("H", true)]));
            let registry = Arc::new(HookRegistry::new());
            let dispatching = Arc::new(AtomicBool::new(false));
            let disabled = Arc::new(AtomicBool::new(false));
            named.enable(&registry, "G");
            named.enable(&registry, "H");

            let a = {
                let (named, registry) = (named.clone(), registry.clone());
                let (dispatching, disabled) = (dispatching.clone(), disabled.clone());
                thread::spawn(move || {
                    while !dispatching.load(Ordering::Acquire) {
                        thread::yield_now();
                    }
                    assert!(named.disable(&registry, "H"));
                    disabled.store(true, Ordering::Release);
                })
            };
            let cache = Cache::new(&registry);
            {
                // The outermost `init` dispatch: the table it delivers to, held while the
                // callbacks run (as `dispatch` holds it).
                let outer = cache.dispatch_table(&registry, true);
                let list: Vec<_> = outer.unwrap().list(Kind::Init).to_vec();
                let outer_names: Vec<_> = list.iter().map(|h| named.name_of(h)).collect();
                // A disables only once B is dispatching: B's table has both hooks.
                assert_eq!(outer_names, ["G", "H"]);
                dispatching.store(true, Ordering::Release);
                // Events raised inside the callbacks (depth 1), possibly after A's disable.
                assert_eq!(deliver(&named, &registry, &cache, Kind::Before, 1), ["H"]);
                assert_eq!(
                    deliver(&named, &registry, &cache, Kind::Init, 1),
                    ["G", "H"]
                );
            }
            while !disabled.load(Ordering::Acquire) {
                thread::yield_now();
            }
            // The thread's word still has `before` (a disable writes no thread's word) until
            // this outermost event's refresh clears it.
            assert!(deliver(&named, &registry, &cache, Kind::Before, 0).is_empty());
            assert!(
                !cache.wants(Kind::Before),
                "`before` left in the thread's word"
            );
            assert_eq!(deliver(&named, &registry, &cache, Kind::Init, 0), ["G"]);
            a.join().unwrap();
        },
    );
}

/// Thread B registers (its first event) and then exits (its view is released) while thread A
/// enables `H`, which adds `before` to every registered thread's word. Whatever the order, A
/// writes B's word only while B is registered, B's events before it exits go to a whole table,
/// and the registry ends with no thread listed. Thread C, registered before A starts and alive
/// throughout, has `before` in its word once A is joined, and its next `before` reaches `H`.
#[test]
fn loom_a_thread_leaving_while_a_hook_is_enabled_is_never_written_after() {
    explore(
        "loom_a_thread_leaving_while_a_hook_is_enabled_is_never_written_after",
        || {
            let named = Arc::new(Named::new(&[("G", false), ("H", true)]));
            let registry = Arc::new(HookRegistry::new());
            named.enable(&registry, "G");
            let c = Cache::new(&registry);
            assert_eq!(deliver(&named, &registry, &c, Kind::Init, 0), ["G"]);
            assert!(
                !c.wants(Kind::Before),
                "`before` in C's word before H is enabled"
            );

            let a = {
                let (named, registry) = (named.clone(), registry.clone());
                thread::spawn(move || assert!(named.enable(&registry, "H")))
            };
            let b = {
                let (named, registry) = (named.clone(), registry.clone());
                thread::spawn(move || {
                    let cache = Cache::new(&registry);
                    let got = deliver(&named, &registry, &cache, Kind::Init, 0);
                    assert!(
                        got == ["G"] || got == ["G", "H"],
                        "init delivered to {got:?}"
                    );
                    drop(cache);
                })
            };
            a.join().unwrap();
            b.join().unwrap();
            assert!(c.wants(Kind::Before), "enable did not reach C's word");
            assert_eq!(deliver(&named, &registry, &c, Kind::Before, 0), ["H"]);
            drop(c);
            assert!(registry.lock().threads.is_empty(), "a thread left listed");
        },
    );
}

/// The registry's final enabled list, and how many tables were published, when `a`'s then `b`'s
/// operations run one after the other in the order `order` (`true`: take `a`'s next).
fn run_sequentially(
    start: &[&'static str],
    a: &[(bool, &'static str)],
    b: &[(bool, &'static str)],
    order: &[bool],
) -> (Vec<&'static str>, u64) {
    let (mut enabled, mut published) = (start.to_vec(), 0);
    let (mut a, mut b) = (a.iter(), b.iter());
    for &take_a in order {
        let &(enable, name) = if take_a { a.next() } else { b.next() }.unwrap();
        let present = enabled.contains(&name);
        if enable && !present {
            enabled.push(name);
            published += 1;
        } else if !enable && present {
            enabled.retain(|n| *n != name);
            published += 1;
        }
    }
    (enabled, published)
}

/// Threads A and B enable and disable hooks concurrently (A: enable `Q`, disable `P`; B: enable
/// `R`, re-enable `P`). At the end the enabled list is the outcome of one of the sequential
/// orders, the published table is exactly that list per kind in enable order, its kinds are
/// those of its non-empty lists, `version` equals the number of publishes, each `is_enabled()` agrees, and
/// each thread saw `version` grow with its own changes.
#[test]
fn loom_concurrent_enable_and_disable_leave_a_consistent_registry() {
    const A: [(bool, &str); 2] = [(true, "Q"), (false, "P")];
    const B: [(bool, &str); 2] = [(true, "R"), (true, "P")];
    let outcomes: Vec<_> = [
        [true, true, false, false],
        [true, false, true, false],
        [true, false, false, true],
        [false, true, true, false],
        [false, true, false, true],
        [false, false, true, true],
    ]
    .iter()
    .map(|order| run_sequentially(&["P"], &A, &B, order))
    .collect();
    let seen = Arc::new(StdMutex::new(Vec::new()));
    let seen_in_model = seen.clone();
    explore(
        "loom_concurrent_enable_and_disable_leave_a_consistent_registry",
        move || {
            // P: init; Q: init + before; R: init.
            let named = Arc::new(Named::new(&[("P", false), ("Q", true), ("R", false)]));
            let registry = Arc::new(HookRegistry::new());
            named.enable(&registry, "P");

            let spawn = |ops: [(bool, &'static str); 2]| {
                let (named, registry) = (named.clone(), registry.clone());
                thread::spawn(move || {
                    let mut last = registry.version.load(Ordering::Acquire);
                    for (enable, name) in ops {
                        let changed = if enable {
                            named.enable(&registry, name)
                        } else {
                            named.disable(&registry, name)
                        };
                        let now = registry.version.load(Ordering::Acquire);
                        assert!(now >= last + u64::from(changed), "version {last} -> {now}");
                        last = now;
                    }
                })
            };
            let (a, b) = (spawn(A), spawn(B));
            a.join().unwrap();
            b.join().unwrap();

            let enabled = named.enabled(&registry);
            let version = registry.version.load(Ordering::Acquire);
            assert!(
                outcomes.contains(&(enabled.clone(), version - 1)),
                "enabled {enabled:?}, version {version}: no sequential order gives this"
            );
            let locked = registry.lock();
            assert_eq!(locked.version, version);
            let table = locked.table.as_deref().unwrap();
            for kind in Kind::ALL {
                let expected: Vec<_> = enabled
                    .iter()
                    .copied()
                    .filter(|&n| named.get(n).inner.events.contains(kind.mask()))
                    .collect();
                let listed: Vec<_> = table.list(kind).iter().map(|h| named.name_of(h)).collect();
                assert_eq!(listed, expected, "{kind:?} list");
                let in_kinds = table.kinds & kind.mask().0 != 0;
                assert_eq!(
                    in_kinds,
                    !listed.is_empty(),
                    "{kind:?} in the table's kinds"
                );
            }
            for (name, hook) in &named.0 {
                assert_eq!(
                    hook.is_enabled(),
                    enabled.contains(name),
                    "{name} is_enabled"
                );
            }
            seen_in_model.lock().unwrap().push(enabled);
        },
    );
    // loom reached more than one outcome: the threads really interleaved.
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    seen.dedup();
    assert!(seen.len() > 1, "one outcome only: {seen:?}");
}
