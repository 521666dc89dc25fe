//! Checks on what `parse` read: the item `#[async_resource]` is applied to and the expression
//! `bind!` binds. Each check turns parsed input into the validated form `expand` takes.

use proc_macro2::extra::DelimSpan;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, ExprAsync, ExprClosure, Signature, Stmt, Token, Visibility};

use crate::parse::AnyFn;

/// An `async fn` with a body that `#[async_resource]` can rewrite.
pub(crate) struct AsyncFn {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) defaultness: Option<Token![default]>,
    pub(crate) sig: Signature,
    pub(crate) inner_attrs: Vec<Attribute>,
    pub(crate) stmts: Vec<Stmt>,
    pub(crate) brace: DelimSpan,
}

/// Checks the item `#[async_resource]` is applied to.
pub(crate) fn async_fn(func: AnyFn) -> syn::Result<AsyncFn> {
    signature(&func.sig)?;
    let Some((inner_attrs, stmts, brace)) = func.body else {
        return Err(missing_body(&func.sig));
    };
    Ok(AsyncFn {
        attrs: func.attrs,
        vis: func.vis,
        defaultness: func.defaultness,
        sig: func.sig,
        inner_attrs,
        stmts,
        brace,
    })
}

/// Checks that `sig` is an `async fn` the macro can rewrite.
fn signature(sig: &Signature) -> syn::Result<()> {
    if let Some(constness) = &sig.constness {
        return Err(syn::Error::new(
            constness.span(),
            "#[async_resource] cannot go on a `const fn`: a resource is created at run time; remove `const` and write `async fn`",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new(
            abi.span(),
            "#[async_resource] cannot go on an `extern` fn: it returns a Rust future; remove the `extern` ABI and write a plain `async fn`",
        ));
    }
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            "#[async_resource] goes on an `async fn`: write `async fn` here; to bind a future you already have, use `.bind_context()` from `async_hooks::BindContext`",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new(
            variadic.span(),
            "#[async_resource] cannot rewrite a variadic fn: remove `...`",
        ));
    }
    Ok(())
}

/// The error for a trait method declared without a body.
fn missing_body(sig: &Signature) -> syn::Error {
    syn::Error::new(
        sig.ident.span(),
        "#[async_resource] needs a function body: put it on the method in each `impl` instead of on the trait's declaration",
    )
}

/// What `bind!` binds.
pub(crate) enum BindTarget {
    /// A closure that is not `async`.
    Closure(ExprClosure),
    /// An `async` block.
    Async(ExprAsync),
}

/// Checks that `bind!`'s expression is a closure (not an async one) or an async block.
pub(crate) fn bind_target(mut expr: Expr) -> syn::Result<BindTarget> {
    while let Expr::Group(group) = expr {
        expr = *group.expr;
    }
    match expr {
        Expr::Closure(closure) => match &closure.asyncness {
            Some(asyncness) => Err(syn::Error::new(
                asyncness.span(),
                "bind! does not take an async closure: bind the future each call makes instead, e.g. `move |x| bind!(async move { … })`, or write `bind!(async move { … })` for one future",
            )),
            None => Ok(BindTarget::Closure(closure)),
        },
        Expr::Async(block) => Ok(BindTarget::Async(block)),
        Expr::Paren(paren) => Err(syn::Error::new_spanned(
            paren,
            "bind! takes a closure or an async block directly: remove the parentheses",
        )),
        other => Err(syn::Error::new_spanned(
            other,
            "bind! takes a closure or an async block: write `bind!(move |x| f(x))` or `bind!(async move { … })`; to bind a future you already have, call `.bind_context()` on it (from `async_hooks::BindContext`)",
        )),
    }
}
