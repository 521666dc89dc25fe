use async_hooks::async_resource;

trait Db {
    #[async_resource]
    async fn query(&self) -> u32;
}

fn main() {}
