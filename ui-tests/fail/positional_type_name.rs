use async_hooks::async_resource;

#[async_resource("DBQuery")]
async fn query() {}

fn main() {
    let _ = query();
}
