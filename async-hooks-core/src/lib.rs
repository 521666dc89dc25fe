//! The runtime of [`async-hooks`](https://docs.rs/async-hooks): async ids, the per-thread
//! execution context, the hook registry, resources and context-local storage.
//!
//! Depend on the `async-hooks` facade crate, which re-exports everything here together with the
//! `#[async_resource]` and `bind!` macros.
#![deny(missing_docs)]
// `unsafe` is denied except where an item allows it: `storage::frame` (frames and the thread's
// frame cell, which export only safe operations), the thread state and its pointer to the
// running resource (`context`), a resource identity's tagged word (`resource`), the
// instrumented future's pinning (`future`) and the hook registry's cached pointers (`hooks`).
// Each of those modules states its invariants at its top and each block says why it is sound;
// the core's unit tests run under Miri.
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod context;
mod error;
mod execution;
mod future;
mod hooks;
mod id;
mod resource;
mod storage;

pub use context::{execution_async_id, execution_async_resource, trigger_async_id};
pub use error::{Error, ErrorKind};
pub use future::{BindContext, Instrumented};
pub use hooks::{AsyncHook, EventMask, HookCallbacks, Hooks, create_hook};
pub use id::AsyncId;
pub use resource::{AsyncResource, AsyncResourceOptions, Resource, async_wrap_providers};
pub use storage::{AsyncLocalStorage, Scope, Snapshot, StorageGuard};

/// Items the macros expand to. Not part of the public API: no stability guarantees.
#[doc(hidden)]
pub mod __private {
    pub use crate::future::{BOUND_TYPE, Instrumented};
    pub use crate::resource::{AsyncResource, ResourceType};

    /// The resource behind a `bind!` closure: created where `bind!` is evaluated, destroyed
    /// when the closure is dropped.
    #[inline]
    pub fn bound_resource(ty: &'static ResourceType) -> AsyncResource {
        AsyncResource::__with_type(ty)
    }

    /// Names a function type's output: `<fn() -> ! as FnOutput>::Output` is `!` on stable Rust,
    /// where `!` can be written only as a function's return type. `#[async_resource]` uses it
    /// for a `-> !` fn's future output.
    pub trait FnOutput {
        /// The output.
        type Output;
    }

    impl<T> FnOutput for fn() -> T {
        type Output = T;
    }
}
