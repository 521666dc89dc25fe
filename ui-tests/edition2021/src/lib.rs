//! Edition-2021 code using `#[async_resource]` and `bind!`: the rewritten fns live in an
//! edition-2021 crate, so the generated `impl Future` must capture the borrowed arguments' lifetimes
//! under the 2021 rules too.
#![deny(missing_docs)]

use std::sync::Arc;

use async_hooks::{async_resource, bind, execution_async_resource};

/// Borrowed arguments with elided lifetimes.
#[async_resource]
pub async fn first_word(text: &str) -> &str {
    text.split(' ').next().unwrap_or("")
}

/// Two elided lifetimes and a type parameter.
#[async_resource(type = "Join")]
pub async fn join<T: std::fmt::Display>(a: &str, b: &String, sep: T) -> String {
    format!("{a}{sep}{b}")
}

/// An `impl Trait` argument borrowed for the future's life.
#[async_resource]
pub async fn total<'a>(items: impl IntoIterator<Item = &'a u32>) -> u32 {
    items.into_iter().sum()
}

/// A counter with methods of every receiver kind.
#[derive(Default)]
pub struct Counter {
    /// The count.
    pub n: u32,
}

impl Counter {
    /// `&self`.
    #[async_resource]
    pub async fn get(&self) -> u32 {
        self.n
    }

    /// `&mut self` and a borrowed argument.
    #[async_resource]
    pub async fn add(&mut self, by: &u32) -> u32 {
        self.n += *by;
        self.n
    }

    /// `self`.
    #[async_resource]
    pub async fn into_inner(self) -> u32 {
        self.n
    }

    /// `self: Arc<Self>`.
    #[async_resource]
    pub async fn shared(self: Arc<Self>) -> u32 {
        self.n
    }

    /// Returns a borrow of `self`.
    #[async_resource]
    pub async fn name(&self) -> &'static str {
        execution_async_resource().type_name()
    }
}

/// A trait whose method is an `async fn`.
pub trait Greeter {
    /// Greets `who`.
    fn greet(&self, who: &str) -> impl std::future::Future<Output = String> + Send;
}

impl Greeter for Counter {
    #[async_resource]
    async fn greet(&self, who: &str) -> String {
        format!("hello {who} #{}", self.n)
    }
}

/// A bound closure made in an edition-2021 crate.
pub fn bound_adder(k: u32) -> impl Fn(u32) -> u32 {
    bind!(move |x: u32| x + k)
}
