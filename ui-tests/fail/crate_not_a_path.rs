use async_hooks::async_resource;

#[async_resource(crate = "async_hooks")]
async fn query() {}

fn main() {
    let _ = query();
}
