use async_hooks::async_resource;

#[async_resource(type = "DBQuery", type = "Query")]
async fn query() {}

fn main() {
    let _ = query();
}
