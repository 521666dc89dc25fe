#![deny(warnings)]

use async_hooks::async_resource;

/// # Safety
/// `p` must point to a live `u32`.
#[async_resource]
async unsafe fn read(p: *const u32) -> u32 {
    unsafe { *p }
}

fn main() {
    let x = 5;
    assert_eq!(futures::executor::block_on(unsafe { read(&x) }), 5);
}
