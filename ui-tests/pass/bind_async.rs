#![deny(warnings)]

use async_hooks::{bind, execution_async_resource};

fn main() {
    use futures::executor::block_on;
    let text = String::from("borrowed");
    let borrowing = bind!(async { text.len() });
    let moving = bind!(async move { 2 });
    let named = bind!(type = "Job", async move { execution_async_resource().type_name() });
    assert_eq!(block_on(borrowing), 8);
    assert_eq!(block_on(moving), 2);
    assert_eq!(block_on(named), "Job");
    assert_eq!(text, "borrowed");
}
