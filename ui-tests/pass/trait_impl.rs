#![deny(warnings)]

use std::future::Future;

use async_hooks::async_resource;

trait Store {
    async fn load(&self, key: &str) -> Option<String>;
    fn save(&mut self, key: &str, value: String) -> impl Future<Output = ()> + Send;
}

#[derive(Default)]
struct Memory(Vec<(String, String)>);

impl Store for Memory {
    #[async_resource(type = "Load")]
    async fn load(&self, key: &str) -> Option<String> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    #[async_resource(type = "Save")]
    async fn save(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}

async fn roundtrip<S: Store>(store: &mut S) -> Option<String> {
    store.save("k", "v".to_string()).await;
    store.load("k").await
}

fn main() {
    let mut m = Memory::default();
    assert_eq!(futures::executor::block_on(roundtrip(&mut m)), Some("v".to_string()));
}
