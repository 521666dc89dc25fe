//! Procedural macros of [`async-hooks`](https://docs.rs/async-hooks): `#[async_resource]` and
//! `bind!`.
//!
//! Depend on the `async-hooks` facade crate, which re-exports both macros; the generated code
//! refers to it as `::async_hooks` (change that with the `crate = path` option).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use proc_macro::TokenStream;

// Each macro is parse (syntax) → validate (what the macro accepts) → expand (code generation,
// on validated input only), as in tracing-attributes.
mod expand;
mod parse;
mod validate;

/// Makes an `async fn` an async resource: calling it creates the resource and returns the
/// future.
///
/// The call allocates an id, records the caller's [`execution_async_id`] as the trigger,
/// captures the current storage context and fires `init` — before the future is ever polled
/// (Node: `init` at construction). Every poll runs in the resource's context between `before`
/// and `after`, the poll that returns `Ready` fires `promise_resolve`, and dropping the future
/// (completed, cancelled or never polled) fires `destroy`.
///
/// Works on free fns, inherent methods with any receiver (`&self`, `&mut self`, `self`,
/// `self: Arc<Self>`, `self: Pin<&mut Self>`), trait-impl methods (the trait may declare
/// `async fn`), generics (also `const` ones), lifetimes, borrowed and `impl Trait` arguments,
/// patterns as parameters, and `-> !` (a loop that never ends). The returned future is `Send`
/// exactly when the body's future is. As with `async fn`, every argument moves into the future,
/// even unused ones, and they are dropped in the same order as `async fn` drops them.
///
/// Options: `type = "DBQuery"` (the resource type name; default: the function's name) and
/// `crate = path` (where `async-hooks` is; default `::async_hooks`).
///
/// The generated fn is `#[inline]` unless it has an `#[inline(…)]` or `#[cold]` attribute of its
/// own: like a plain `async fn`'s call, it only builds the future, which the caller can then
/// build in place instead of copying it.
///
/// ```
/// use async_hooks::{async_resource, execution_async_resource};
///
/// #[async_resource(type = "DBQuery")]
/// async fn query(sql: &str) -> String {
///     format!("{} ran {sql}", execution_async_resource().type_name())
/// }
///
/// assert_eq!(futures::executor::block_on(query("SELECT 1")), "DBQuery ran SELECT 1");
/// ```
///
/// [`execution_async_id`]: https://docs.rs/async-hooks/latest/async_hooks/fn.execution_async_id.html
#[proc_macro_attribute]
pub fn async_resource(args: TokenStream, item: TokenStream) -> TokenStream {
    let expanded = parse::attribute_options(args.into()).and_then(|options| {
        let func = validate::async_fn(syn::parse(item.clone())?)?;
        expand::async_resource(&options, func)
    });
    match expanded {
        Ok(tokens) => tokens.into(),
        Err(error) => token_stream_with_error(item, error),
    }
}

/// Binds a closure or an async block to the context current where `bind!` is evaluated.
///
/// - `bind!(closure)`, `bind!(move |a, b| …)`: a closure with the same parameters that runs
///   every call in that context, as a resource of type `bound-anonymous-fn` created here;
///   `destroy` fires when the closure is dropped. The closure you write is kept as it is (its
///   captures, whether it is `move`, and whether it is `Fn`, `FnMut` or `FnOnce`); annotate
///   parameter types its body calls methods on, as for a closure stored in a `let`.
/// - `bind!(async { … })`, `bind!(async move { … })`: a future that is such a resource.
/// - `bind!(type = "Name", …)` names the resource type; `crate = path` says where
///   `async-hooks` is.
///
/// ```
/// use async_hooks::{AsyncLocalStorage, bind};
///
/// static REQUEST: AsyncLocalStorage<u32> = AsyncLocalStorage::new();
///
/// let (listener, fut) = REQUEST.run(7, || {
///     (
///         bind!(move |n: u32| n + *REQUEST.get_store().unwrap()),
///         bind!(async move { *REQUEST.get_store().unwrap() }),
///     )
/// });
/// // Called and polled outside the `run`, both still see request 7.
/// assert_eq!(listener(1), 8);
/// assert_eq!(futures::executor::block_on(fut), 7);
/// ```
#[proc_macro]
pub fn bind(input: TokenStream) -> TokenStream {
    let expanded = syn::parse::<parse::BindInput>(input).and_then(|input| {
        let target = validate::bind_target(input.expr)?;
        Ok(expand::bind(&input.options, target))
    });
    match expanded {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// The original item followed by the error, so that the item still exists for the rest of the
/// crate and for IDEs while the error is reported.
fn token_stream_with_error(mut item: TokenStream, error: syn::Error) -> TokenStream {
    item.extend(TokenStream::from(error.into_compile_error()));
    item
}
