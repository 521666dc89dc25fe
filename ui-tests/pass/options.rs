#![deny(warnings)]

use async_hooks::{async_resource, execution_async_resource};

mod reexport {
    pub use async_hooks as hooks;
}

#[async_resource(type = "DBQuery")]
async fn query() -> &'static str {
    execution_async_resource().type_name()
}

#[async_resource(crate = ::async_hooks)]
async fn absolute() -> &'static str {
    execution_async_resource().type_name()
}

#[async_resource(crate = reexport::hooks, type = "Renamed",)]
async fn renamed() -> &'static str {
    execution_async_resource().type_name()
}

fn main() {
    use futures::executor::block_on;
    assert_eq!(block_on(query()), "DBQuery");
    assert_eq!(block_on(absolute()), "absolute");
    assert_eq!(block_on(renamed()), "Renamed");
}
