//! Event recording shared by the reliability tests (`#[path]`-included, not a test target).
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use async_hooks::{AsyncHook, AsyncId, Hooks, create_hook};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ev {
    Init,
    Before,
    After,
    Resolve,
    Destroy,
}

static LOG: Mutex<Vec<(Ev, AsyncId)>> = Mutex::new(Vec::new());

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hooks are process-wide: tests that enable one take this lock.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    lock(&SERIAL)
}

/// A hook recording every event into the log (enable it; disable it at the end).
pub fn recorder() -> AsyncHook {
    create_hook(
        Hooks::new()
            .init(|id, _, _, _| lock(&LOG).push((Ev::Init, id)))
            .before(|id| lock(&LOG).push((Ev::Before, id)))
            .after(|id| lock(&LOG).push((Ev::After, id)))
            .promise_resolve(|id| lock(&LOG).push((Ev::Resolve, id)))
            .destroy(|id| lock(&LOG).push((Ev::Destroy, id))),
    )
}

/// The events recorded so far for `id`, in order.
pub fn events_of(id: AsyncId) -> Vec<Ev> {
    lock(&LOG)
        .iter()
        .filter(|(_, i)| *i == id)
        .map(|(e, _)| *e)
        .collect()
}

/// How many `destroy` events `id` got.
pub fn destroys_of(id: AsyncId) -> usize {
    events_of(id).iter().filter(|e| **e == Ev::Destroy).count()
}

/// Pending `n` times (waking itself), then ready.
pub struct PendingN(pub u32);

impl Future for PendingN {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 == 0 {
            Poll::Ready(())
        } else {
            self.0 -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

pub fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

/// The id of the last resource whose `init` was recorded (for `#[async_resource]` futures,
/// which do not expose their id).
pub fn last_init() -> AsyncId {
    lock(&LOG)
        .iter()
        .rev()
        .find(|(e, _)| *e == Ev::Init)
        .map(|(_, id)| *id)
        .expect("an init was recorded")
}

/// The recorder, enabled until the guard drops (also when the test fails, so one failure does
/// not double the events of the next test).
pub struct Recording(AsyncHook);

impl Drop for Recording {
    fn drop(&mut self) {
        self.0.disable();
    }
}

pub fn record() -> Recording {
    Recording(recorder().enable())
}
