#![deny(warnings)]

use std::sync::Arc;

use async_hooks::{async_resource, bind};

#[async_resource]
async fn fetch(url: String, client: Arc<str>) -> String {
    tokio::task::yield_now().await;
    format!("{client} {url}")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let client: Arc<str> = Arc::from("c");
    let a = tokio::spawn(fetch("u".to_string(), client.clone()));
    let b = tokio::spawn(bind!(async move { client.len() }));
    let c = tokio::task::spawn_blocking(bind!(move || 3));
    let d = std::thread::spawn(bind!(move || 4));
    assert_eq!(a.await.unwrap(), "c u");
    assert_eq!(b.await.unwrap(), 1);
    assert_eq!(c.await.unwrap(), 3);
    assert_eq!(d.join().unwrap(), 4);
}
