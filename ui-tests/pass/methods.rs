#![deny(warnings)]

use std::sync::Arc;

use async_hooks::async_resource;

struct Counter(u32);

impl Counter {
    #[async_resource]
    async fn get(&self) -> u32 {
        self.0
    }

    #[async_resource]
    async fn add(&mut self, by: u32) -> u32 {
        self.0 += by;
        self.0
    }

    #[async_resource]
    async fn into_inner(self) -> u32 {
        self.0
    }

    #[async_resource]
    async fn bumped(mut self) -> u32 {
        self.0 += 1;
        self.0
    }

    #[async_resource]
    async fn shared(self: Arc<Self>) -> u32 {
        self.0
    }

    #[async_resource]
    async fn boxed(self: Box<Self>) -> u32 {
        self.0
    }

    #[async_resource]
    async fn new(n: u32) -> Self {
        Counter(n)
    }
}

fn main() {
    use futures::executor::block_on;
    let mut c = block_on(Counter::new(1));
    assert_eq!(block_on(c.add(2)), 3);
    assert_eq!(block_on(c.get()), 3);
    assert_eq!(block_on(Arc::new(Counter(4)).shared()), 4);
    assert_eq!(block_on(Box::new(Counter(5)).boxed()), 5);
    assert_eq!(block_on(Counter(6).bumped()), 7);
    assert_eq!(block_on(c.into_inner()), 3);
}
