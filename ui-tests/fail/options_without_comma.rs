use async_hooks::async_resource;

#[async_resource(type = "DBQuery" crate = ::async_hooks)]
async fn query() {}

fn main() {
    let _ = query();
}
