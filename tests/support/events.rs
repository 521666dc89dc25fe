//! Per-resource event sequences, recorded by the crate's own [`Recorder`] into one process-wide
//! buffer: `let _hook = events::record();`, then `events_of(id)`.

use std::sync::LazyLock;

use async_hooks::recorder::EventKind;
use async_hooks::{AsyncHook, AsyncId, Recorder, create_hook};

/// An event, without its details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ev {
    Init,
    Before,
    After,
    Resolve,
    Destroy,
}

impl From<EventKind> for Ev {
    fn from(kind: EventKind) -> Ev {
        match kind {
            EventKind::Init { .. } => Ev::Init,
            EventKind::Before => Ev::Before,
            EventKind::After => Ev::After,
            EventKind::PromiseResolve => Ev::Resolve,
            EventKind::Destroy => Ev::Destroy,
        }
    }
}

/// Large enough never to drop an event in these tests ([`events_of`] checks).
static RECORDER: LazyLock<Recorder> = LazyLock::new(|| Recorder::new(1 << 26));

/// A hook recording every event into the process-wide buffer (enable it; disable it at the end).
pub fn recorder() -> AsyncHook {
    create_hook(RECORDER.clone())
}

/// The events recorded so far for `id`, in order.
pub fn events_of(id: AsyncId) -> Vec<Ev> {
    let trace = RECORDER.snapshot();
    assert_eq!(trace.dropped, 0, "the test recorder dropped events");
    trace
        .events
        .iter()
        .filter(|e| e.async_id == id)
        .map(|e| Ev::from(e.kind))
        .collect()
}

/// How many `destroy` events `id` got.
pub fn destroys_of(id: AsyncId) -> usize {
    events_of(id).iter().filter(|e| **e == Ev::Destroy).count()
}

/// The id of the last resource whose `init` was recorded (for `#[async_resource]` futures,
/// which do not expose their id).
pub fn last_init() -> AsyncId {
    RECORDER
        .snapshot()
        .events
        .iter()
        .rev()
        .find(|e| matches!(e.kind, EventKind::Init { .. }))
        .map(|e| e.async_id)
        .expect("an init was recorded")
}

/// The recorder, enabled until the guard drops.
pub fn record() -> super::Recording {
    super::Recording(recorder().enable())
}
