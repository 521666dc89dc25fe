use async_hooks::async_resource;

#[async_resource(type = 5)]
async fn query() {}

fn main() {
    let _ = query();
}
