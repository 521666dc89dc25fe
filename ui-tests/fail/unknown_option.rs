use async_hooks::async_resource;

#[async_resource(name = "DBQuery")]
async fn query() {}

fn main() {
    let _ = query();
}
