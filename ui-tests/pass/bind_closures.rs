#![deny(warnings)]

use async_hooks::{bind, execution_async_resource};

fn takes_fn(f: impl Fn(&str) -> usize + Send + 'static) -> usize {
    f("four")
}

fn main() {
    let zero = bind!(|| 0);
    let one = bind!(move |x: u32| x + 1);
    let three = bind!(type = "Three", |a: u32, b: u64, c: (u8, char)| (a, b, c));
    let typed = bind!(type = "Typed", crate = ::async_hooks, || {
        execution_async_resource().type_name()
    });
    assert_eq!(zero(), 0);
    assert_eq!(one(1), 2);
    assert_eq!(three(1, 2, (3, 'x')), (1, 2, (3, 'x')));
    assert_eq!(typed(), "Typed");
    assert_eq!(takes_fn(bind!(|s: &str| s.len())), 4);

    let mut total = 0;
    let mut add = bind!(|n: u32| total += n);
    add(2);
    add(3);
    drop(add);
    assert_eq!(total, 5);

    let owned = vec![1, 2];
    let consume = bind!(move || owned);
    assert_eq!(consume(), vec![1, 2]);

    // The user's closure may capture a variable of any name, even the one bind! uses inside.
    let closure = 5;
    assert_eq!(bind!(move || closure + 1)(), 6);

    // A closure forwarded through a `macro_rules!` macro still binds.
    macro_rules! forward {
        ($e:expr) => {
            bind!($e)
        };
    }
    assert_eq!(forward!(|x: u8| x * 2)(4), 8);
}
