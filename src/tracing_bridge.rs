//! [`tracing`] bridges (cargo feature `tracing`): [`TracingHook`] shows the async graph as
//! spans, and [`StoreFields`] shows the current values of storages on every log line.
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

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};

use tracing::callsite::{Callsite, Identifier};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, FieldSet, Value, Visit};
use tracing::metadata::Kind;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Span, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::{DefaultFields, FormatFields};
use tracing_subscriber::layer::Context as LayerContext;
use tracing_subscriber::registry::LookupSpan;

use crate::{AsyncId, AsyncLocalStorage, HookCallbacks, Resource};

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

/// A [`tracing_subscriber::Layer`] that adds the current value of named [`AsyncLocalStorage`]s
/// to every event and to every span when it is created, so that `tracing::info!("done")` inside
/// a request prints `request_id=7` with no argument passed.
///
/// Put it below the formatter, right on the registry:
///
/// ```
/// use async_hooks::AsyncLocalStorage;
/// use async_hooks::tracing_bridge::StoreFields;
/// use tracing_subscriber::prelude::*;
///
/// static REQUEST_ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
///
/// # let writer = tracing_subscriber::fmt::TestWriter::new();
/// let subscriber = tracing_subscriber::registry()
///     .with(StoreFields::new().field("request_id", &REQUEST_ID))
///     .with(tracing_subscriber::fmt::layer().with_writer(writer));
/// tracing::subscriber::with_default(subscriber, || {
///     REQUEST_ID.run(7, || tracing::info!("done")); // `... done request_id=7`
///     tracing::info!("outside"); // no `request_id` field
/// });
/// ```
///
/// A field shows the store's `Display`, after the event's own fields (an event that has a
/// field of the same name keeps its own). A storage with no current store adds no field; with
/// every storage empty, an event costs one read per storage and nothing else.
///
/// How it works: a layer cannot add fields to an event, so when a store is set this layer
/// turns the event away in [`Layer::event_enabled`] and dispatches, to the same subscriber, a
/// copy with the same metadata (name, target, level, location, parent) plus the store fields.
/// Every layer, the formatter included, sees only the copy; its values are copied once (a
/// `Debug` value as its text). The copy's metadata is made once per call site and kept for the
/// life of the process (a few bytes per call site that logs while a store is set). Records
/// from the `log` crate (through `tracing-log`) are copied with their `log.*` fields as they
/// are: `fmt` shows them as fields instead of reading the target and location from them.
///
/// Spans get the fields in their formatted fields (the extension `tracing_subscriber::fmt`
/// renders as `span{…}`), written with the field formatter `N`: the default
/// [`DefaultFields`] matches `fmt::layer()`; with `fmt::layer().json()` pass
/// [`fmt_fields(JsonFields::new())`](StoreFields::fmt_fields) to have them in the JSON spans
/// too (events have them with either formatter).
///
/// [`DefaultFields`]: tracing_subscriber::fmt::format::DefaultFields
pub struct StoreFields<N = DefaultFields> {
    names: Vec<&'static str>,
    stores: Vec<Box<dyn ShowStore>>,
    fmt_fields: N,
    /// Tells this layer's own copies from the events it must copy.
    id: usize,
    /// The subscriber this layer is part of, where the copies are dispatched.
    dispatch: OnceLock<WeakDispatch>,
    /// The copy's metadata per call site.
    rewrites: RwLock<HashMap<Identifier, &'static Rewrite>>,
    /// The store fields as a field set of their own, for the spans' records.
    span_fields: OnceLock<&'static Metadata<'static>>,
}

/// A storage whose current value can be shown.
trait ShowStore: Send + Sync {
    fn current(&self) -> Option<Arc<dyn Display + Send + Sync>>;
}

impl<T: Display + Send + Sync + 'static> ShowStore for &'static AsyncLocalStorage<T> {
    #[inline]
    fn current(&self) -> Option<Arc<dyn Display + Send + Sync>> {
        self.get_store()
            .map(|store| store as Arc<dyn Display + Send + Sync>)
    }
}

impl StoreFields {
    /// A layer that shows no storage yet; add them with [`field`](StoreFields::field).
    ///
    /// ```
    /// let layer = async_hooks::tracing_bridge::StoreFields::new();
    /// assert!(layer.names().is_empty());
    /// ```
    pub fn new() -> StoreFields {
        StoreFields {
            names: Vec::new(),
            stores: Vec::new(),
            fmt_fields: DefaultFields::new(),
            id: NEXT_LAYER_ID.fetch_add(1, Ordering::Relaxed),
            dispatch: OnceLock::new(),
            rewrites: RwLock::new(HashMap::new()),
            span_fields: OnceLock::new(),
        }
    }
}

impl Default for StoreFields {
    fn default() -> Self {
        StoreFields::new()
    }
}

static NEXT_LAYER_ID: AtomicUsize = AtomicUsize::new(1);

impl<N> StoreFields<N> {
    /// Shows `storage`'s current store (its `Display`) as the field `name`.
    ///
    /// ```
    /// use async_hooks::AsyncLocalStorage;
    /// use async_hooks::tracing_bridge::StoreFields;
    ///
    /// static REQUEST_ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
    /// static USER: AsyncLocalStorage<String> = AsyncLocalStorage::new();
    /// let layer = StoreFields::new().field("request_id", &REQUEST_ID).field("user", &USER);
    /// assert_eq!(layer.names(), ["request_id", "user"]);
    /// ```
    pub fn field<T: Display + Send + Sync + 'static>(
        mut self,
        name: &'static str,
        storage: &'static AsyncLocalStorage<T>,
    ) -> Self {
        self.names.push(name);
        self.stores.push(Box::new(storage));
        self
    }

    /// The field names, in the order they were added.
    ///
    /// ```
    /// # use async_hooks::{AsyncLocalStorage, tracing_bridge::StoreFields};
    /// static ID: AsyncLocalStorage<u8> = AsyncLocalStorage::new();
    /// assert_eq!(StoreFields::new().field("id", &ID).names(), ["id"]);
    /// ```
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// Writes the spans' store fields with `fmt_fields`, the field formatter of the `fmt`
    /// layer above (`JsonFields` for `fmt::layer().json()`).
    ///
    /// ```
    /// use async_hooks::{AsyncLocalStorage, tracing_bridge::StoreFields};
    /// use tracing_subscriber::fmt::format::JsonFields;
    /// use tracing_subscriber::prelude::*;
    ///
    /// static REQUEST_ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
    /// let subscriber = tracing_subscriber::registry()
    ///     .with(StoreFields::new().field("request_id", &REQUEST_ID).fmt_fields(JsonFields::new()))
    ///     .with(tracing_subscriber::fmt::layer().json().with_writer(std::io::sink));
    /// # drop(subscriber);
    /// ```
    pub fn fmt_fields<N2>(self, fmt_fields: N2) -> StoreFields<N2> {
        StoreFields {
            names: self.names,
            stores: self.stores,
            fmt_fields,
            id: self.id,
            dispatch: self.dispatch,
            rewrites: self.rewrites,
            span_fields: self.span_fields,
        }
    }

    /// The current stores, or `None` (and no allocation) when every storage is empty.
    #[inline]
    fn current(&self) -> Option<Vec<Option<Arc<dyn Display + Send + Sync>>>> {
        let mut values: Option<Vec<_>> = None;
        for (i, store) in self.stores.iter().enumerate() {
            if let Some(value) = store.current() {
                values.get_or_insert_with(|| vec![None; self.stores.len()])[i] = Some(value);
            }
        }
        values
    }

    /// The copy's metadata for events of `meta`'s call site, made on first use.
    fn rewrite(&self, meta: &'static Metadata<'static>) -> &'static Rewrite {
        let key = meta.callsite();
        if let Some(rewrite) = self
            .rewrites
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return rewrite;
        }
        let mut rewrites = self
            .rewrites
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        rewrites.entry(key).or_insert_with(|| {
            let own = meta.fields();
            let mut names: Vec<&'static str> = own.iter().map(|f| f.name()).collect();
            let store_slots = self
                .names
                .iter()
                .map(|name| {
                    (own.field(name).is_none()).then(|| {
                        names.push(name);
                        names.len() - 1
                    })
                })
                .collect();
            Box::leak(Box::new(Rewrite {
                meta: leak_metadata(meta, names, Kind::EVENT),
                original_len: own.len(),
                store_slots,
            }))
        })
    }

    /// Copies `event` with the store fields added and dispatches the copy.
    fn dispatch_copy(
        &self,
        dispatch: &Dispatch,
        event: &Event<'_>,
        stores: &[Option<Arc<dyn Display + Send + Sync>>],
    ) {
        let rewrite = self.rewrite(event.metadata());
        let mut copied = Copied {
            original: event.metadata().fields(),
            values: (0..rewrite.original_len).map(|_| None).collect(),
        };
        event.record(&mut copied);
        let displays: Vec<_> = stores
            .iter()
            .map(|store| store.as_deref().map(tracing::field::display))
            .collect();
        let mut values: Vec<Option<&dyn Value>> = Vec::with_capacity(rewrite.meta.fields().len());
        values.extend(
            copied
                .values
                .iter()
                .map(|v| v.as_ref().map(Owned::as_value)),
        );
        values.resize(rewrite.meta.fields().len(), None);
        for (slot, display) in rewrite.store_slots.iter().zip(&displays) {
            if let (Some(slot), Some(display)) = (slot, display) {
                values[*slot] = Some(display as &dyn Value);
            }
        }
        let value_set = rewrite.meta.fields().value_set_all(&values);
        let copy = if event.is_root() {
            Event::new_child_of(None, rewrite.meta, &value_set)
        } else if let Some(parent) = event.parent() {
            Event::new_child_of(parent.clone(), rewrite.meta, &value_set)
        } else {
            Event::new(rewrite.meta, &value_set)
        };
        let _copying = Copying::enter(self.id);
        dispatch.event(&copy);
    }

    /// The store fields as a field set of their own (for span records), made on first use.
    fn span_fields(&self) -> &'static Metadata<'static> {
        self.span_fields.get_or_init(|| {
            static LIKE: Metadata<'static> = Metadata::new(
                "store_fields",
                "async_hooks::tracing_bridge",
                tracing::Level::TRACE,
                None,
                None,
                None,
                FieldSet::new(&[], Identifier(&NoCallsite)),
                Kind::SPAN,
            );
            leak_metadata(&LIKE, self.names.clone(), Kind::SPAN)
        })
    }
}

impl<N> std::fmt::Debug for StoreFields<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreFields")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl<S, N> Layer<S> for StoreFields<N>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + Send + Sync + 'static,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn event_enabled(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) -> bool {
        let Some(stores) = self.current() else {
            return true;
        };
        if Copying::is_copying(self.id) {
            return true;
        }
        let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade) else {
            return true;
        };
        self.dispatch_copy(&dispatch, event, &stores);
        // The copy took the event's place.
        false
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let Some(stores) = self.current() else {
            return;
        };
        let own = attrs.metadata().fields();
        let displays: Vec<_> = stores
            .iter()
            .zip(&self.names)
            .map(|(store, name)| {
                store
                    .as_deref()
                    .filter(|_| own.field(name).is_none())
                    .map(tracing::field::display)
            })
            .collect();
        let values: Vec<Option<&dyn Value>> = displays
            .iter()
            .map(|d| d.as_ref().map(|d| d as &dyn Value))
            .collect();
        let value_set = self.span_fields().fields().value_set_all(&values);
        let record = Record::new(&value_set);
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        // Written before the `fmt` layer sees the span, which then keeps these fields.
        if let Some(fields) = extensions.get_mut::<FormattedFields<N>>() {
            let _ = self.fmt_fields.add_fields(fields, &record);
        } else {
            let mut fields = FormattedFields::<N>::new(String::new());
            if self
                .fmt_fields
                .format_fields(fields.as_writer(), attrs)
                .is_ok()
                && self.fmt_fields.add_fields(&mut fields, &record).is_ok()
            {
                extensions.insert(fields);
            }
        }
    }
}

/// An event call site's copy: its metadata with the store fields appended.
struct Rewrite {
    meta: &'static Metadata<'static>,
    /// The number of fields of the original call site (the copy's first fields).
    original_len: usize,
    /// Each store's field in the copy; `None` where the event has a field of that name.
    store_slots: Vec<Option<usize>>,
}

/// The call site of leaked metadata: it is never registered, since the copies are dispatched
/// only after the original's call site was found enabled.
struct LeakedCallsite(OnceLock<Metadata<'static>>);

impl Callsite for LeakedCallsite {
    fn set_interest(&self, _: Interest) {}
    fn metadata(&self) -> &Metadata<'_> {
        self.0.get().expect("set right after the callsite is made")
    }
}

struct NoCallsite;

impl Callsite for NoCallsite {
    fn set_interest(&self, _: Interest) {}
    fn metadata(&self) -> &Metadata<'_> {
        unreachable!("a template, never dispatched")
    }
}

/// `like`'s metadata with the field names `names`, kept for the life of the process.
fn leak_metadata(
    like: &Metadata<'static>,
    names: Vec<&'static str>,
    kind: Kind,
) -> &'static Metadata<'static> {
    let names: &'static [&'static str] = Box::leak(names.into_boxed_slice());
    let callsite: &'static LeakedCallsite = Box::leak(Box::new(LeakedCallsite(OnceLock::new())));
    let meta = Metadata::new(
        like.name(),
        like.target(),
        *like.level(),
        like.file(),
        like.line(),
        like.module_path(),
        FieldSet::new(names, Identifier(callsite)),
        kind,
    );
    callsite.0.get_or_init(|| meta)
}

/// The layers dispatching a copy on this thread: their copies pass through them untouched.
struct Copying;

thread_local! {
    static COPYING: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

impl Copying {
    fn enter(id: usize) -> Copying {
        COPYING.with(|c| c.borrow_mut().push(id));
        Copying
    }
    fn is_copying(id: usize) -> bool {
        COPYING.with(|c| c.borrow().contains(&id))
    }
}

impl Drop for Copying {
    fn drop(&mut self) {
        COPYING.with(|c| c.borrow_mut().pop());
    }
}

/// An event's values, owned so that the copy can carry them.
struct Copied<'a> {
    original: &'a FieldSet,
    values: Vec<Option<Owned>>,
}

enum Owned {
    I64(i64),
    U64(u64),
    I128(i128),
    U128(u128),
    F64(f64),
    Bool(bool),
    Str(String),
    Bytes(Box<[u8]>),
    /// A `Debug` value (or an error), as the text it wrote.
    Text(tracing::field::DisplayValue<String>),
}

impl Owned {
    fn as_value(&self) -> &dyn Value {
        match self {
            Owned::I64(v) => v,
            Owned::U64(v) => v,
            Owned::I128(v) => v,
            Owned::U128(v) => v,
            Owned::F64(v) => v,
            Owned::Bool(v) => v,
            Owned::Str(v) => v,
            Owned::Bytes(v) => v,
            Owned::Text(v) => v,
        }
    }
}

impl Copied<'_> {
    fn put(&mut self, field: &Field, value: Owned) {
        if let Some(i) = self.original.iter().position(|f| f == *field) {
            self.values[i] = Some(value);
        }
    }
}

impl Visit for Copied<'_> {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Owned::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Owned::U64(value));
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        self.put(field, Owned::I128(value));
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        self.put(field, Owned::U128(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Owned::F64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Owned::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Owned::Str(value.to_owned()));
    }
    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        self.put(field, Owned::Bytes(value.into()));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(
            field,
            Owned::Text(tracing::field::display(value.to_string())),
        );
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(
            field,
            Owned::Text(tracing::field::display(format!("{value:?}"))),
        );
    }
}
