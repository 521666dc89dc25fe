//! Helpers shared by the integration tests: `mod support;` in a test file.
//!
//! - [`serial`]: hooks are process-wide, so every test that enables one takes this lock.
//! - [`Log`] with [`recorder`] (events as `"{name} {event} {id}"` lines, several hooks into one
//!   log, in dispatch order) and [`record`] (unprefixed lines plus the ids created).
//! - [`events`]: per-resource event sequences, on the crate's own [`async_hooks::Recorder`].
//! - [`futures`]: small futures for tests that poll by hand.
//! - [`counting_alloc`]: a counting global allocator; [`xml`]: a well-formedness check.
#![allow(dead_code)] // each test binary uses only some of these

pub mod counting_alloc;
pub mod events;
pub mod futures;
pub mod xml;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_hooks::{AsyncHook, AsyncId, Hooks, create_hook};

/// Locks `mutex`, also after a test that held it panicked.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Hooks are process-wide: tests that enable one take this lock so their logs hold only their
/// own events.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    lock(&SERIAL)
}

/// An event log shared by hooks: text lines, and the ids of the resources created.
#[derive(Clone, Default)]
pub struct Log {
    lines: Arc<Mutex<Vec<String>>>,
    inits: Arc<Mutex<Vec<AsyncId>>>,
}

impl Log {
    pub fn push(&self, line: String) {
        lock(&self.lines).push(line);
    }

    /// The lines logged since the last call.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.lines))
    }

    /// The ids of the resources created since the last call, in creation order ([`record`]).
    pub fn take_inits(&self) -> Vec<AsyncId> {
        std::mem::take(&mut *lock(&self.inits))
    }

    /// The id of the one resource created since the last call ([`record`]).
    pub fn only_init(&self) -> AsyncId {
        let inits = self.take_inits();
        assert_eq!(inits.len(), 1, "expected exactly one init, got {inits:?}");
        inits[0]
    }
}

/// A hook (not enabled) that logs every event as `"{prefix}{event} {id}"`; `init` logs
/// `"{prefix}init {type}({id}) trigger={trigger}"` and notes the id.
fn logging_hook(prefix: String, log: &Log) -> AsyncHook {
    let line = move |event: &str, rest: String| format!("{prefix}{event} {rest}");
    let (l1, l2, l3, l4, l5) = (
        log.clone(),
        log.clone(),
        log.clone(),
        log.clone(),
        log.clone(),
    );
    let (f1, f2, f3, f4, f5) = (line.clone(), line.clone(), line.clone(), line.clone(), line);
    create_hook(
        Hooks::new()
            .init(move |id, ty, trigger, _| {
                lock(&l1.inits).push(id);
                l1.push(f1("init", format!("{ty}({id}) trigger={trigger}")))
            })
            .before(move |id| l2.push(f2("before", id.to_string())))
            .after(move |id| l3.push(f3("after", id.to_string())))
            .destroy(move |id| l4.push(f4("destroy", id.to_string())))
            .promise_resolve(move |id| l5.push(f5("resolve", id.to_string()))),
    )
}

/// A hook (not enabled) that logs every event as `"{name} {event} {id}"` (`init` also logs type
/// and trigger): several of them into one log show the dispatch order.
pub fn recorder(name: &'static str, log: &Log) -> AsyncHook {
    logging_hook(format!("{name} "), log)
}

/// A hook logging every event as `"{event} {id}"` into `log`, enabled until the guard drops
/// (also when the test fails, so one failure does not leak events into the next test).
pub fn record(log: &Log) -> Recording {
    Recording(logging_hook(String::new(), log).enable())
}

/// Disables its hook on drop.
pub struct Recording(pub AsyncHook);

impl Drop for Recording {
    fn drop(&mut self) {
        self.0.disable();
    }
}

pub fn id(n: AsyncId) -> String {
    n.to_string()
}
