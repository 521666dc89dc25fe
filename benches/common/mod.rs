//! Helpers shared by the benches.
#![allow(dead_code)] // each bench uses only some of these

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use async_hooks::{AsyncHook, Hooks, create_hook};

/// Events seen by [`counting_hook`], so the work cannot be optimised away.
pub static EVENTS: AtomicU64 = AtomicU64::new(0);

/// A hook that counts all five events: the cheapest hook that sees everything.
pub fn counting_hook() -> AsyncHook {
    let count = |_| {
        EVENTS.fetch_add(1, Ordering::Relaxed);
    };
    create_hook(
        Hooks::new()
            .init(|_, _, _, _| {
                EVENTS.fetch_add(1, Ordering::Relaxed);
            })
            .before(count)
            .after(count)
            .destroy(count)
            .promise_resolve(count),
    )
}

/// Polls `fut` with a no-op waker until it is ready.
///
/// Inlined into every bench, as in `instructions.rs`: out of line, whether LLVM inlined it
/// decided whether the freshly built future was copied into it (with 16-byte loads of fields
/// just written with 8-byte stores: a store-forwarding stall), and so which lifecycle rows paid
/// that stall, differently from one build to the next.
#[inline(always)]
pub fn poll_to_ready<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}
