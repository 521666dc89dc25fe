#![deny(dead_code)]

use async_hooks::async_resource;

#[async_resource]
async fn never_called() -> u32 {
    1
}

fn main() {}
