#![deny(warnings)]

use std::fmt::Debug;

use async_hooks::async_resource;

#[async_resource]
async fn largest<'a, T, const N: usize>(items: &'a [T; N]) -> Option<&'a T>
where
    T: Ord + Debug,
{
    items.iter().max()
}

struct Wrapper<T>(T);

impl<T: Clone + Send> Wrapper<T> {
    #[async_resource]
    async fn get<U>(&self, other: U) -> (T, U)
    where
        U: Send,
    {
        (self.0.clone(), other)
    }
}

fn main() {
    use futures::executor::block_on;
    assert_eq!(block_on(largest(&[1, 3, 2])), Some(&3));
    assert_eq!(block_on(Wrapper('a').get(1u8)), ('a', 1));
}
