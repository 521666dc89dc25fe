//! Edition-2021 callers of annotated fns and methods.

use std::sync::Arc;

use async_hooks::{
    async_resource, execution_async_id, execution_async_resource, trigger_async_id, AsyncId,
    AsyncResource,
};
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

#[async_resource(type = "Ids")]
async fn ids(_borrowed: &str) -> (AsyncId, AsyncId, &'static str) {
    (
        execution_async_id(),
        trigger_async_id(),
        execution_async_resource().type_name(),
    )
}

#[test]
fn the_resource_is_created_at_the_call_by_the_caller() {
    let request = AsyncResource::new("Request");
    let text = String::from("x");
    let fut = request.run_in_async_scope(|| ids(&text));
    // Polled outside the request's scope, the future still runs as its own resource
    // triggered by the request.
    let (me, trigger, ty) = block_on(fut);
    assert_eq!(trigger, request.async_id());
    assert!(me > request.async_id());
    assert_eq!(ty, "Ids");
    let adder = bound_adder(2);
    assert_eq!(adder(3), 5);
}
