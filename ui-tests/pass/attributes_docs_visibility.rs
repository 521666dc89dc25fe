#![deny(warnings, missing_docs)]
//! Attributes, doc comments and visibility are kept.

use async_hooks::async_resource;

/// Documented and public.
#[async_resource]
#[inline]
pub async fn documented(
    #[allow(unused_mut)] mut n: u32,
) -> u32 {
    n
}

mod inner {
    use async_hooks::async_resource;

    #[async_resource]
    pub(crate) async fn crate_visible() -> u8 {
        #![allow(clippy::let_and_return)]
        let x = 1;
        x
    }

    #[async_resource]
    #[cfg(any())]
    pub(crate) async fn compiled_out() -> u8 {
        this_does_not_exist()
    }
}

#[async_resource]
#[allow(unused_variables)]
async fn unused_argument(x: u32) {}

// An inlining attribute of the fn's own is kept (the macro adds `#[inline]` only to the others).
#[async_resource]
#[inline(never)]
async fn never_inlined() -> u8 {
    2
}

#[async_resource]
#[cold]
async fn cold() -> u8 {
    3
}

#[async_resource]
async fn underscore_argument(_x: u32, _: String) {}

fn main() {
    use futures::executor::block_on;
    assert_eq!(block_on(documented(1)), 1);
    assert_eq!(block_on(inner::crate_visible()), 1);
    block_on(unused_argument(1));
    block_on(underscore_argument(1, String::new()));
    assert_eq!(block_on(never_inlined()), 2);
    assert_eq!(block_on(cold()), 3);
}
