//! A hook that shows the async graph to [`tracing`] subscribers (cargo feature `tracing`).
//!
//! [`TracingHook`] opens one `tracing` span per async resource, named `async_resource`, at
//! `init`, with the fields `async_id`, `trigger_async_id` and `type`. Its parent is the span of
//! the resource's trigger when the trigger has one, otherwise the span current at `init` (as for
//! any new span). The span is entered on every `before`, exited on the matching `after`, and
//! closed (its handle dropped) on `destroy`; a subscriber sees it closed once its children are.
//!
//! ```
//! use async_hooks::{AsyncResource, TracingHook, create_hook};
//!
//! let hook = create_hook(TracingHook::new()).enable();
//! let job = AsyncResource::new("Job");
//! job.run_in_async_scope(|| tracing::info!("inside the Job span"));
//! drop(job);
//! hook.disable();
//! ```

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tracing::Span;

use crate::{AsyncId, HookCallbacks, Resource};

/// A [`HookCallbacks`] that opens a `tracing` span (`async_resource`, level `INFO`) per async
/// resource; see the [module docs](self).
///
/// ```
/// use async_hooks::{TracingHook, create_hook};
/// let hook = create_hook(TracingHook::new()).enable();
/// hook.disable();
/// ```
#[derive(Default)]
pub struct TracingHook {
    spans: Mutex<HashMap<AsyncId, Span>>,
}

impl TracingHook {
    /// A hook with no span open yet.
    ///
    /// ```
    /// let hook = async_hooks::TracingHook::new();
    /// assert_eq!(hook.open_spans(), 0);
    /// ```
    pub fn new() -> TracingHook {
        TracingHook::default()
    }

    /// How many resource spans this hook holds open (resources created and not yet destroyed
    /// while it was enabled).
    ///
    /// ```
    /// use async_hooks::{AsyncResource, HookCallbacks, TracingHook};
    /// let hook = TracingHook::new();
    /// let job = AsyncResource::new("Job");
    /// hook.init(job.async_id(), "Job", job.trigger_async_id(), &job.resource());
    /// assert_eq!(hook.open_spans(), 1);
    /// hook.destroy(job.async_id());
    /// assert_eq!(hook.open_spans(), 0);
    /// ```
    pub fn open_spans(&self) -> usize {
        self.spans().len()
    }

    fn spans(&self) -> MutexGuard<'_, HashMap<AsyncId, Span>> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn span(&self, async_id: AsyncId) -> Option<Span> {
        self.spans().get(&async_id).cloned()
    }
}

impl std::fmt::Debug for TracingHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracingHook")
            .field("open_spans", &self.open_spans())
            .finish()
    }
}

impl HookCallbacks for TracingHook {
    fn init(&self, async_id: AsyncId, type_name: &str, trigger: AsyncId, _resource: &Resource) {
        let parent = self.span(trigger);
        let (id, trigger_id) = (async_id.as_u64(), trigger.as_u64());
        // The span is created outside the lock: a subscriber may itself create resources.
        let span = match parent {
            Some(parent) => tracing::info_span!(
                parent: &parent,
                "async_resource",
                async_id = id,
                trigger_async_id = trigger_id,
                r#type = type_name
            ),
            None => tracing::info_span!(
                "async_resource",
                async_id = id,
                trigger_async_id = trigger_id,
                r#type = type_name
            ),
        };
        self.spans().insert(async_id, span);
    }

    fn before(&self, async_id: AsyncId) {
        if let Some(span) = self.span(async_id) {
            span.with_subscriber(|(id, dispatch)| dispatch.enter(id));
        }
    }

    fn after(&self, async_id: AsyncId) {
        if let Some(span) = self.span(async_id) {
            span.with_subscriber(|(id, dispatch)| dispatch.exit(id));
        }
    }

    fn destroy(&self, async_id: AsyncId) {
        let span = self.spans().remove(&async_id);
        // Dropped outside the lock: closing may run subscriber code.
        drop(span);
    }
}
