//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::sync::{Arc, Mutex, MutexGuard};

use async_hooks::{AsyncHook, AsyncId, Hooks, create_hook};

/// Hooks are process-wide: tests that enable one take this lock so their logs hold only their
/// own events.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// An event log shared by hooks.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A hook that logs every event as `"{name} {event} {id}"` (`init` also logs type and trigger).
pub fn recorder(name: &'static str, log: &Log) -> AsyncHook {
    let (l1, l2, l3, l4, l5) = (
        log.clone(),
        log.clone(),
        log.clone(),
        log.clone(),
        log.clone(),
    );
    create_hook(
        Hooks::new()
            .init(move |id, ty, trigger, _| {
                l1.push(format!("{name} init {ty}({id}) trigger={trigger}"))
            })
            .before(move |id| l2.push(format!("{name} before {id}")))
            .after(move |id| l3.push(format!("{name} after {id}")))
            .destroy(move |id| l4.push(format!("{name} destroy {id}")))
            .promise_resolve(move |id| l5.push(format!("{name} resolve {id}"))),
    )
}

pub fn id(n: AsyncId) -> String {
    n.to_string()
}
