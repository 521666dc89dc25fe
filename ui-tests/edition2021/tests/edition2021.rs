//! Edition-2021 callers of annotated fns and methods.

use std::sync::Arc;

use async_hooks::{async_resource, bind, execution_async_id, execution_async_resource, AsyncId};
use async_hooks_edition2021_tests::{bound_adder, first_word, join, total, Counter, Greeter};
use futures::executor::block_on;

#[async_resource]
async fn local_borrow(a: &str, b: &str) -> (String, &'static str) {
    (format!("{a}-{b}"), execution_async_resource().type_name())
}

#[test]
fn free_fns_with_borrowed_arguments() {
    let text = String::from("hello world");
    assert_eq!(block_on(first_word(&text)), "hello");
    let b = String::from("b");
    assert_eq!(block_on(join("a", &b, '+')), "a+b");
    let v = vec![1, 2, 3];
    assert_eq!(block_on(total(&v)), 6);
    assert_eq!(
        block_on(local_borrow("x", "y")),
        ("x-y".to_string(), "local_borrow")
    );
}

#[test]
fn methods_with_every_receiver() {
    let mut c = Counter::default();
    assert_eq!(block_on(c.add(&2)), 2);
    assert_eq!(block_on(c.get()), 2);
    assert_eq!(block_on(c.name()), "name");
    assert_eq!(block_on(c.greet("ann")), "hello ann #2");
    assert_eq!(block_on(Arc::new(Counter { n: 5 }).shared()), 5);
    assert_eq!(block_on(c.into_inner()), 2);
}

#[test]
fn the_resource_exists_at_the_call() {
    let c = Counter { n: 1 };
    let fut = c.get();
    // Not polled yet; the id it runs under is a fresh one, not the caller's.
    let inner = block_on(async {
        let id = bind!(async { execution_async_id() }).await;
        drop(fut);
        id
    });
    assert!(inner > AsyncId::ROOT);
    assert_eq!(bound_adder(2)(3), 5);
}
