use async_hooks::async_resource;

#[async_resource(type)]
async fn query() {}

fn main() {
    let _ = query();
}
