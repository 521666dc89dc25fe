//! Node.js's `async_hooks` and `AsyncLocalStorage` for Rust async code.
//!
//! Every async resource — an [`AsyncResource`] you drive yourself, or an instrumented future —
//! gets an [`AsyncId`], remembers which execution triggered it, fires lifecycle hooks
//! ([`create_hook`]) and carries the [`AsyncLocalStorage`] context that was current when it was
//! created, on any executor and across threads.
//!
//! ```
//! use async_hooks::{AsyncLocalStorage, BindContext};
//!
//! static REQUEST_ID: AsyncLocalStorage<u64> = AsyncLocalStorage::new();
//!
//! async fn handle() -> String {
//!     format!("request {}", REQUEST_ID.get_store().unwrap())
//! }
//!
//! // The future is bound where it is made; it keeps request 7 wherever it is polled.
//! let fut = REQUEST_ID.run(7, || handle().bind_context());
//! assert_eq!(futures::executor::block_on(fut), "request 7");
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub use async_hooks_core::*;
/// `#[async_resource]` makes an `async fn` an async resource created at each call; `bind!` binds a
/// closure or an async block to the context current where it is evaluated.
pub use async_hooks_macros::{async_resource, bind};
