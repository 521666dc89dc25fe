//! Code generation for `#[async_resource]` and `bind!`.

use proc_macro2::{Delimiter, Group, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{ExprClosure, FnArg, Pat, PatIdent, ReturnType, Type};

use crate::parse::Options;
use crate::validate::{AsyncFn, BindTarget};

/// Rewrites `async fn` into a fn whose call creates the resource and returns the future.
pub(crate) fn async_resource(options: &Options, func: AsyncFn) -> syn::Result<TokenStream> {
    let AsyncFn {
        attrs,
        vis,
        defaultness,
        sig,
        inner_attrs,
        stmts,
        brace,
    } = func;
    let krate = options.krate();
    let type_name = match &options.type_name {
        Some(lit) => lit.clone(),
        None => syn::LitStr::new(&sig.ident.unraw().to_string(), sig.ident.span()),
    };

    let mut sig = sig;
    sig.asyncness = None;

    // Every argument moves into the future, as with `async fn`: a simple `name` binding is
    // re-bound by name (keeping the user's span, so `unused_variables` still points at it);
    // any other pattern gets a plain name in the signature and is destructured inside.
    let mut moves = Vec::new();
    for (index, input) in sig.inputs.iter_mut().enumerate() {
        match input {
            FnArg::Receiver(_) => {
                // `async move` captures `self` whole once it is mentioned.
                moves.push(quote!(let _ = &self;));
            }
            FnArg::Typed(pat_type) => match &mut *pat_type.pat {
                Pat::Ident(PatIdent {
                    by_ref: None,
                    mutability,
                    ident,
                    subpat: None,
                    ..
                }) if ident != "self" => {
                    // The argument's attributes (`#[allow(unused_mut)]`, `#[cfg]`) apply to the
                    // binding the body sees.
                    let attrs = &pat_type.attrs;
                    let mutability = mutability.take();
                    moves.push(quote!(#(#attrs)* let #mutability #ident = #ident;));
                }
                pat => {
                    let arg = format_ident!("__async_hooks_arg{}", index);
                    let user_pat = std::mem::replace(
                        pat,
                        Pat::Ident(PatIdent {
                            attrs: Vec::new(),
                            by_ref: None,
                            mutability: None,
                            ident: arg.clone(),
                            subpat: None,
                        }),
                    );
                    let attrs = &pat_type.attrs;
                    moves.push(quote!(#(#attrs)* let #arg = #arg;));
                    moves.push(quote!(#(#attrs)* let #user_pat = #arg;));
                }
            },
        }
    }

    // `!` can be written only as a function's return type on stable Rust: the future's output
    // and the fake return's `let` name it through a function type instead.
    let never = |ty: &Type| -> TokenStream {
        match ty {
            Type::Never(_) => quote_spanned! {ty.span()=>
                <fn() -> #ty as #krate::__private::FnOutput>::Output
            },
            _ => quote!(#ty),
        }
    };
    let output = match &sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => never(ty),
    };
    // The "fake return edge" (as in tracing-attributes): the async block's output type is
    // fixed before the user's body is checked, so a mismatch is reported on the user's
    // expression and `?` knows its error type. Skipped when the type mentions `impl Trait`,
    // which a `let` cannot name.
    let fake_return_type = match &sig.output {
        ReturnType::Type(_, ty) if mentions_impl(ty) => None,
        ReturnType::Type(_, ty) => Some((never(ty), ty.span())),
        ReturnType::Default => Some((quote!(()), Span::call_site())),
    };
    let fake_return = match fake_return_type {
        None => quote!(),
        Some((ty, span)) => quote_spanned! {span=>
            #[allow(
                unknown_lints,
                unreachable_code,
                clippy::diverging_sub_expression,
                clippy::empty_loop,
                clippy::let_unit_value,
                clippy::let_with_type_underscore,
                clippy::needless_return,
                clippy::unreachable
            )]
            if false {
                let __async_hooks_fake_return: #ty = loop {};
                return __async_hooks_fake_return;
            }
        },
    };
    // `impl` has the macro's span, hence edition 2024 (the edition of this crate) whatever the
    // caller's edition: the opaque type captures every lifetime in scope, including elided
    // ones, as `async fn` does. The closing `>` has the user's span, so the fn's span stays in
    // the user's code and lints about the fn (such as `dead_code`) still fire.
    let close_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => sig.paren_token.span.close(),
    };
    let mut new_output = quote!(-> impl ::core::future::Future<Output = #output);
    new_output.extend(quote_spanned!(close_span=> >));
    sig.output = syn::parse2(new_output)?;

    let body = quote_spanned! {brace.join()=>
        {
            #(#moves)*
            #fake_return
            #(#stmts)*
        }
    };
    let async_block = quote_spanned!(brace.join()=> async move #body);
    // The fn's braces keep the user's span (the item's span then lies in the user's code, so
    // `dead_code` and other item lints still fire); what is inside has the macro's.
    let mut fn_body = Group::new(
        Delimiter::Brace,
        quote! {
            #(#inner_attrs)*
            static __ASYNC_HOOKS_TYPE: #krate::__private::ResourceType =
                #krate::__private::ResourceType::new(#type_name);
            #krate::__private::Instrumented::new(&__ASYNC_HOOKS_TYPE, #async_block)
        },
    );
    fn_body.set_span(brace.join());
    // Like a plain `async fn`'s, the call only builds the future. Inlinable (also across
    // crates), the caller builds it where it is then polled instead of copying it out of a
    // temporary (a store-forwarding stall); the `lifecycle` rows of benches/macros.rs guard it.
    // The user's own choice wins.
    let user_inlining = attrs
        .iter()
        .any(|attr| attr.path().is_ident("inline") || attr.path().is_ident("cold"));
    let inline = if user_inlining {
        quote!()
    } else {
        quote!(#[inline])
    };
    Ok(quote! {
        #(#attrs)*
        #inline
        #vis #defaultness #sig #fn_body
    })
}

fn mentions_impl(ty: &Type) -> bool {
    fn scan(tokens: TokenStream) -> bool {
        tokens.into_iter().any(|tt| match tt {
            TokenTree::Ident(ident) => ident == "impl",
            TokenTree::Group(group) => scan(group.stream()),
            _ => false,
        })
    }
    scan(quote!(#ty))
}

/// Expands `bind!(...)`.
pub(crate) fn bind(options: &Options, target: BindTarget) -> TokenStream {
    let krate = options.krate();
    let (ty_static, ty_ref) = match &options.type_name {
        Some(name) => (
            quote! {
                static __ASYNC_HOOKS_TYPE: #krate::__private::ResourceType =
                    #krate::__private::ResourceType::new(#name);
            },
            quote!(&__ASYNC_HOOKS_TYPE),
        ),
        None => (quote!(), quote!(&#krate::__private::BOUND_TYPE)),
    };
    match target {
        BindTarget::Closure(closure) => bind_closure(&closure, &krate, ty_static, ty_ref),
        BindTarget::Async(block) => quote! {
            {
                #ty_static
                #krate::__private::Instrumented::new(#ty_ref, #block)
            }
        },
    }
}

fn bind_closure(
    closure: &ExprClosure,
    krate: &syn::Path,
    ty_static: TokenStream,
    ty_ref: TokenStream,
) -> TokenStream {
    // The outer closure has the user's arity and parameter types; the user's closure is kept
    // intact (its captures, `move`-ness and Fn trait) and called inside the resource's scope.
    // It is bound as `closure` (it cannot see that binding: it is the initializer), so
    // compiler notes such as "moves the variable `closure`" read naturally.
    let mut params = Vec::new();
    let mut args = Vec::new();
    for (index, input) in closure.inputs.iter().enumerate() {
        let arg = format_ident!("__async_hooks_a{}", index);
        match input {
            Pat::Type(pat_type) => {
                let ty = &pat_type.ty;
                params.push(quote!(#arg: #ty));
            }
            _ => params.push(quote!(#arg)),
        }
        args.push(arg);
    }
    quote! {
        {
            #ty_static
            #[allow(unused_mut)]
            let mut closure = #closure;
            let __async_hooks_r = #krate::__private::bound_resource(#ty_ref);
            move |#(#params),*| __async_hooks_r.run_in_async_scope(|| closure(#(#args),*))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(item: &str) -> String {
        let func = syn::parse_str(item).expect("parses");
        let func = crate::validate::async_fn(func).expect("valid");
        async_resource(&Options::default(), func)
            .expect("expands")
            .to_string()
    }

    #[test]
    fn the_generated_fn_is_inline_unless_it_chose_its_own_inlining() {
        assert_eq!(expand("async fn f() {}").matches("# [inline]").count(), 1);
        for own in ["#[inline(never)]", "#[inline(always)]", "#[inline]"] {
            let expanded = expand(&format!("{own} async fn f() {{}}"));
            assert_eq!(
                expanded.matches("# [inline").count(),
                1,
                "{own}: {expanded}"
            );
        }
        let cold = expand("#[cold] async fn f() {}");
        assert!(!cold.contains("inline"), "{cold}");
    }
}
