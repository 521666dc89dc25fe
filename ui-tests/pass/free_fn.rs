#![deny(warnings)]

use async_hooks::{async_resource, execution_async_resource};

#[async_resource]
async fn nothing() {}

#[async_resource]
async fn name() -> &'static str {
    execution_async_resource().type_name()
}

fn main() {
    futures::executor::block_on(nothing());
    assert_eq!(futures::executor::block_on(name()), "name");
}
