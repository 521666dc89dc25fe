//! Checks on the item `#[async_resource]` is applied to.

use syn::Signature;
use syn::spanned::Spanned;

/// Checks that `sig` is an `async fn` the macro can rewrite.
pub(crate) fn signature(sig: &Signature) -> syn::Result<()> {
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
pub(crate) fn missing_body(sig: &Signature) -> syn::Error {
    syn::Error::new(
        sig.ident.span(),
        "#[async_resource] needs a function body: put it on the method in each `impl` instead of on the trait's declaration",
    )
}
