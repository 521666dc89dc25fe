#![deny(warnings)]

use std::pin::Pin;

use async_hooks::async_resource;

/// A fn that never returns, as an accept loop: `-> !` works as on a plain `async fn`.
#[async_resource]
async fn serve(mut budget: u32) -> ! {
    loop {
        budget = budget.saturating_sub(1);
        futures::pending!();
    }
}

struct Counter(u32);

impl Counter {
    #[async_resource]
    async fn pinned(self: Pin<&mut Self>) -> u32 {
        self.0
    }

    #[async_resource]
    async fn boxed(self: Box<Self>) -> u32 {
        self.0
    }
}

/// Patterns in the parameters, `mut`, `_` and const generics.
#[async_resource]
async fn patterns<const N: usize>((a, b): (u32, u32), mut c: u32, _: u32, bytes: [u8; N]) -> usize {
    c += 1;
    (a + b + c) as usize + bytes.len()
}

fn main() {
    let mut future = Box::pin(serve(3));
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    for _ in 0..5 {
        assert!(future.as_mut().poll(&mut cx).is_pending());
    }
    futures::executor::block_on(async {
        let mut counter = Counter(7);
        assert_eq!(Pin::new(&mut counter).pinned().await, 7);
        assert_eq!(Box::new(Counter(8)).boxed().await, 8);
        assert_eq!(patterns((1, 2), 3, 4, [0u8; 5]).await, 12);
    });
}
