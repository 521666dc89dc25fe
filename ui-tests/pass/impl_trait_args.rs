#![deny(warnings)]

use std::fmt::Display;

use async_hooks::async_resource;

#[async_resource]
async fn join(items: impl IntoIterator<Item = impl Display>, sep: &impl Display) -> String {
    let mut out = String::new();
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push_str(&sep.to_string());
        }
        out.push_str(&item.to_string());
    }
    out
}

#[async_resource]
async fn shown() -> impl Display {
    7
}

fn main() {
    use futures::executor::block_on;
    assert_eq!(block_on(join([1, 2, 3], &'-')), "1-2-3");
    assert_eq!(block_on(shown()).to_string(), "7");
}
