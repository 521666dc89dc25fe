use std::rc::Rc;

use async_hooks::async_resource;

#[async_resource]
async fn count() -> usize {
    let shared = Rc::new(5);
    tokio::task::yield_now().await;
    *shared
}

#[tokio::main]
async fn main() {
    let _ = tokio::spawn(count()).await;
}
