//! A resource's identity: its ids and one tagged word for its type and, once made, its
//! [`Resource`] handle.
//!
//! # Safety
//!
//! The word is a `&'static ResourceType` without the [`HANDLE`] tag, or with it a pointer from
//! `Arc::<ResourceInner>::into_raw` that owns one strong reference, released by the identity's
//! drop. It goes from type to handle at most once, by a compare-and-swap that publishes the
//! handle (release; readers load with acquire), and never back; [`FINISHED`] is a flag beside
//! either, changed only by the owner through `&mut`. Every pointer followed is read from the
//! identity that keeps it alive, and the functions that follow one are private to this module.

use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, Ordering};

use super::*;

/// Who a resource is: its ids, its type and, once made, its [`Resource`] handle.
///
/// It lives inside the resource (an instrumented future or an [`AsyncResource`]), and while the
/// resource runs the thread points at it, so entering an execution stores one pointer instead of
/// copying the context. The type and the handle share one tagged word: the handle knows its type,
/// and a lazily made handle costs no space of its own.
pub(crate) struct Identity {
    pub(crate) async_id: AsyncId,
    pub(crate) trigger_id: AsyncId,
    /// `&'static ResourceType`, or with [`HANDLE`] an `Arc<ResourceInner>` this identity owns a
    /// strong reference to; [`FINISHED`] is the owner's flag (see [`Identity::is_finished`]).
    ///
    /// The handle is published with a compare-and-swap (release) and read with acquire loads: an
    /// `AsyncResource` is shared between threads, and whichever thread asks first makes the one
    /// handle they all see. The finished flag is written only by an instrumented future's owner,
    /// through `&mut`.
    word: AtomicPtr<()>,
}

/// Tag: the word is a handle, not a bare type.
const HANDLE: usize = 0b01;
/// Tag: the owner's inner value is gone (an instrumented future that finished or was dropped).
const FINISHED: usize = 0b10;
const TAGS: usize = HANDLE | FINISHED;
// Both pointees are 8-aligned, which leaves the two tag bits free.
const _: () = assert!(align_of::<ResourceType>() > TAGS && align_of::<ResourceInner>() > TAGS);

/// The identity of the top level of every thread.
pub(crate) static ROOT_IDENTITY: Identity = Identity {
    async_id: AsyncId::ROOT,
    trigger_id: AsyncId::NONE,
    word: AtomicPtr::new(type_word(&ROOT_TYPE)),
};

impl Identity {
    /// Creates a resource on this thread: allocates its id and fires `init` in the creator's
    /// context (inside `init`, `execution_async_id()` is the creator's id). The handle is made
    /// only if an `init` hook needs it.
    #[inline(always)]
    pub(crate) fn create(
        state: &ThreadState,
        ty: &'static ResourceType,
        trigger: Option<AsyncId>,
    ) -> Identity {
        ty.register();
        let async_id = state.ids.allocate();
        let trigger_id = trigger.unwrap_or_else(|| state.execution_async_id());
        let word = if hooks::wants(Kind::Init) {
            emit_init(async_id, trigger_id, ty)
        } else {
            type_word(ty)
        };
        // Built from values, not through a reference: taking the identity's address for the
        // `init` call kept it in a temporary that was then copied into the wrapper with 16-byte
        // loads over fresh 8-byte stores (a store-forwarding stall per resource).
        Identity {
            async_id,
            trigger_id,
            word: AtomicPtr::new(word),
        }
    }

    /// The word, for the owner's flag only (no pointer behind it is followed).
    #[inline(always)]
    fn load_flags(&self) -> *mut () {
        self.word.load(Ordering::Relaxed)
    }

    /// The word, to follow its pointer: acquire, since another thread may have published the
    /// handle.
    #[inline(always)]
    fn load(&self) -> *mut () {
        self.word.load(Ordering::Acquire)
    }

    /// The resource's type.
    #[inline]
    pub(crate) fn ty(&self) -> &'static ResourceType {
        let word = self.load();
        let untagged = word.map_addr(|addr| addr & !TAGS);
        if word.addr() & HANDLE == 0 {
            // SAFETY: a word without `HANDLE` is a `&'static ResourceType` (see `type_word`).
            #[allow(unsafe_code)]
            unsafe {
                &*untagged.cast::<ResourceType>()
            }
        } else {
            // SAFETY: a `HANDLE` word is an `Arc<ResourceInner>` this identity keeps alive.
            #[allow(unsafe_code)]
            unsafe {
                (*untagged.cast::<ResourceInner>()).ty
            }
        }
    }

    /// The resource's handle, made now if it was not yet (then kept, so that every call and the
    /// `init` hook see the same handle).
    #[allow(unsafe_code)]
    pub(crate) fn handle(&self) -> Resource {
        if self.async_id == AsyncId::ROOT {
            return Resource::root();
        }
        let word = self.load();
        if word.addr() & HANDLE != 0 {
            // SAFETY: the word holds this identity's reference to the handle (published with
            // release, read with acquire).
            return unsafe { clone_handle(word) };
        }
        self.publish(word, new_handle(self.async_id, self.trigger_id, self.ty()))
    }

    /// Publishes a new handle made after reading `word` (which had none), or, if another thread
    /// published one first, gives ours back and returns that one.
    #[allow(unsafe_code)]
    fn publish(&self, mut word: *mut (), (handle, handle_word): (Resource, *mut ())) -> Resource {
        loop {
            let published = handle_word.map_addr(|addr| addr | (word.addr() & FINISHED));
            match self.word.compare_exchange_weak(
                word,
                published,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return handle,
                Err(current) if current.addr() & HANDLE != 0 => {
                    // Another thread made the handle first (a shared `AsyncResource`): use that
                    // one, and give back ours and the reference our word would have held.
                    // SAFETY: `handle_word`'s reference was never published; `current` holds the
                    // identity's reference to the winning handle.
                    unsafe {
                        drop(Arc::from_raw(
                            handle_word
                                .map_addr(|addr| addr & !TAGS)
                                .cast::<ResourceInner>()
                                .cast_const(),
                        ));
                        return clone_handle(current);
                    }
                }
                // A spurious failure, or the owner's flag changed: try again.
                Err(current) => word = current,
            }
        }
    }

    /// Whether the owner marked its inner value as gone. Through `&mut` (only the owner asks),
    /// a plain read: LLVM sees the word it wrote at creation and drops the test when the whole
    /// lifecycle is inlined, which it cannot do with an atomic load.
    #[inline(always)]
    pub(crate) fn is_finished(&mut self) -> bool {
        self.word.get_mut().addr() & FINISHED != 0
    }

    /// Marks the owner's inner value as gone. Only an instrumented future's owner calls this,
    /// through `&mut`, and only that owner's thread can be publishing its handle: a plain store
    /// loses nothing.
    #[inline(always)]
    pub(crate) fn set_finished(&self) {
        let word = self.load_flags();
        self.word
            .store(word.map_addr(|addr| addr | FINISHED), Ordering::Relaxed);
    }
}

impl Identity {
    /// Whether dropping this identity releases a handle (the only work its drop can do). With
    /// `&mut`, no other thread can be publishing one.
    #[inline(always)]
    pub(crate) fn owns_handle(&mut self) -> bool {
        self.word.get_mut().addr() & HANDLE != 0
    }
}

impl Drop for Identity {
    // Inlined: most identities never make a handle, and then dropping one is a test of a word
    // already in a register, not a call.
    #[inline]
    fn drop(&mut self) {
        let word = *self.word.get_mut();
        if word.addr() & HANDLE != 0 {
            release_handle(word);
        }
    }
}

/// Releases the strong reference that a `HANDLE` word owns.
#[cold]
#[inline(never)]
fn release_handle(word: *mut ()) {
    let inner = word.map_addr(|addr| addr & !TAGS).cast::<ResourceInner>();
    // SAFETY: a `HANDLE` word owns one strong reference, released once, here (from `Drop`).
    #[allow(unsafe_code)]
    drop(unsafe { Arc::from_raw(inner.cast_const()) });
}

/// A new reference to the handle in a `HANDLE` word.
///
/// # Safety
///
/// `word` must be a `HANDLE` word read (with acquire) from an identity that still holds it.
#[allow(unsafe_code)]
unsafe fn clone_handle(word: *mut ()) -> Resource {
    let inner = word
        .map_addr(|addr| addr & !TAGS)
        .cast::<ResourceInner>()
        .cast_const();
    // SAFETY: per the caller, the identity keeps a strong reference alive meanwhile; the new
    // `Arc` takes one of its own.
    unsafe {
        Arc::increment_strong_count(inner);
        Resource {
            repr: Repr::Shared(Arc::from_raw(inner)),
        }
    }
}

/// The identity word of a resource of type `ty` with no handle yet.
#[inline(always)]
const fn type_word(ty: &'static ResourceType) -> *mut () {
    ptr::from_ref(ty).cast_mut().cast()
}

/// A new handle, and the identity word that owns one strong reference to it.
fn new_handle(
    async_id: AsyncId,
    trigger_id: AsyncId,
    ty: &'static ResourceType,
) -> (Resource, *mut ()) {
    let inner = Arc::new(ResourceInner::new(async_id, trigger_id, ty));
    let word = handle_word(inner.clone());
    (
        Resource {
            repr: Repr::Shared(inner),
        },
        word,
    )
}

/// The identity word that owns `inner`'s strong reference.
fn handle_word(inner: Arc<ResourceInner>) -> *mut () {
    let raw = Arc::into_raw(inner).cast_mut().cast::<()>();
    raw.map_addr(|addr| addr | HANDLE)
}

/// Fires `init` for a new resource and returns its identity word: the type, or the handle a
/// callback made (see [`PendingInit`]).
// `extern "C"`, so it cannot unwind (a hook's panic is fatal anyway): the wrapper being built
// around this call then needs no landing pad and is built in place. Never called from C; the ABI
// is only for the no-unwind guarantee.
#[allow(improper_ctypes_definitions)]
#[cold]
#[inline(never)]
extern "C" fn emit_init(
    async_id: AsyncId,
    trigger_id: AsyncId,
    ty: &'static ResourceType,
) -> *mut () {
    with_pending(async_id, trigger_id, ty, |resource| {
        hooks::emit_init(async_id, ty.name, trigger_id, resource)
    })
}

/// Calls `init` with the resource being created, as a pending handle (see [`PendingInit`]),
/// and returns its identity word: the type, or the handle `init` made.
#[inline(always)]
fn with_pending(
    async_id: AsyncId,
    trigger_id: AsyncId,
    ty: &'static ResourceType,
    init: impl FnOnce(&Resource),
) -> *mut () {
    let mut pending = PendingInit {
        async_id,
        trigger_async_id: trigger_id,
        ty,
        handle: AtomicPtr::new(ptr::null_mut()),
    };
    let resource = Resource {
        repr: Repr::Pending(NonNull::from(&pending)),
    };
    init(&resource);
    drop(resource);
    let handle = *pending.handle.get_mut();
    if handle.is_null() {
        type_word(ty)
    } else {
        // The handle's reference passes to the word.
        handle.cast::<()>().map_addr(|addr| addr | HANDLE)
    }
}

#[cfg(test)]
mod tests {
    //! The identity word's `unsafe` paths, deterministically (they run under Miri).
    use super::*;

    #[test]
    fn a_pending_resource_makes_its_handle_only_when_init_keeps_it() {
        static TYPE: ResourceType = ResourceType::new("Pending");
        let (id, trigger) = (AsyncId::from_u64(1_000_003), AsyncId::ROOT);
        let word = with_pending(id, trigger, &TYPE, |resource| {
            assert_eq!(resource.async_id(), id);
            assert_eq!(resource.trigger_async_id(), trigger);
            assert_eq!(resource.type_name(), "Pending");
            let _ = format!("{resource:?}");
        });
        assert_eq!(word, type_word(&TYPE));

        let mut kept = None;
        let word = with_pending(id, trigger, &TYPE, |resource| {
            std::thread::scope(|s| {
                s.spawn(|| resource.insert(5u8));
            });
            assert_eq!(resource.get::<u8>().as_deref(), Some(&5));
            kept = Some(resource.clone());
            assert_eq!(kept.as_ref(), Some(resource));
        });
        assert_eq!(word.addr() & TAGS, HANDLE);
        let identity = Identity {
            async_id: id,
            trigger_id: trigger,
            word: AtomicPtr::new(word),
        };
        let kept = kept.expect("cloned in init");
        assert_eq!(identity.handle(), kept);
        assert_eq!(identity.ty().name, "Pending");
        drop(identity);
        // The clone still holds the handle and its slot.
        assert_eq!(kept.remove::<u8>().as_deref(), Some(&5));
    }

    #[test]
    fn losing_the_race_to_publish_a_handle_gives_ours_back() {
        static TYPE: ResourceType = ResourceType::new("Raced");
        let mut identity = Identity {
            async_id: AsyncId::from_u64(1_000_001),
            trigger_id: AsyncId::ROOT,
            word: AtomicPtr::new(type_word(&TYPE)),
        };
        // What a thread reads before making its handle...
        let stale = identity.load();
        // ...while another thread publishes first.
        let winner = identity.handle();
        let ours = new_handle(identity.async_id, identity.trigger_id, &TYPE);
        let ours_inner = match &ours.0.repr {
            Repr::Shared(inner) => Arc::downgrade(inner),
            Repr::Pending(_) => unreachable!("a new handle is shared"),
        };
        let got = identity.publish(stale, ours);
        assert_eq!(got, winner);
        assert_eq!(identity.handle(), winner);
        assert_eq!(identity.ty().name(), "Raced");
        // Ours was released entirely: both the handle and the word's reference.
        assert!(ours_inner.upgrade().is_none());
        // The owner's flag survives a publication made after it was set.
        identity.set_finished();
        assert!(identity.is_finished());
        let mut finished = Identity {
            async_id: AsyncId::from_u64(1_000_002),
            trigger_id: AsyncId::ROOT,
            word: AtomicPtr::new(type_word(&TYPE)),
        };
        finished.set_finished();
        let handle = finished.handle();
        assert!(finished.is_finished());
        assert_eq!(finished.handle(), handle);
    }
}
