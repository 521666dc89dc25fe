//! Parsing: the options of `#[async_resource(...)]`, the item it is applied to, and the input
//! of `bind!(...)`. What is parsed here is checked by `validate` before `expand` sees it.

use proc_macro2::Span;
use proc_macro2::extra::DelimSpan;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream, Parser};
use syn::{
    Attribute, Block, Expr, ExprLit, ExprPath, Ident, Lit, LitStr, Path, Signature, Stmt, Token,
    Visibility, braced,
};

/// Which macro the options belong to: the messages name it and say what its defaults are.
#[derive(Clone, Copy)]
pub(crate) enum Macro {
    /// `#[async_resource(...)]`.
    AsyncResource,
    /// `bind!(...)`.
    Bind,
}

impl Macro {
    fn name(self) -> &'static str {
        match self {
            Macro::AsyncResource => "#[async_resource]",
            Macro::Bind => "bind!",
        }
    }

    fn default_type(self) -> &'static str {
        match self {
            Macro::AsyncResource => "the function's name",
            Macro::Bind => "`bound-anonymous-fn`",
        }
    }
}

/// The options both macros take.
#[derive(Default)]
pub(crate) struct Options {
    /// `type = "Name"`: the resource type name.
    pub(crate) type_name: Option<LitStr>,
    /// `crate = path`: where the `async-hooks` facade is (default `::async_hooks`).
    pub(crate) krate: Option<Path>,
}

impl Options {
    /// The path generated code uses to reach the runtime.
    pub(crate) fn krate(&self) -> Path {
        self.krate
            .clone()
            .unwrap_or_else(|| syn::parse_quote!(::async_hooks))
    }
}

fn valid_options(mac: Macro) -> String {
    format!(
        "{} takes `type = \"Name\"` (the resource type name; default {}) and `crate = path` (the path of the async-hooks crate; default `::async_hooks`)",
        mac.name(),
        mac.default_type()
    )
}

/// Parses the whole argument list of `#[async_resource(...)]`.
pub(crate) fn attribute_options(args: proc_macro2::TokenStream) -> syn::Result<Options> {
    let parser = |input: ParseStream| {
        let mut options = Options::default();
        while !input.is_empty() {
            parse_one(input, Macro::AsyncResource, &mut options)?;
            if input.is_empty() {
                break;
            }
            if !input.peek(Token![,]) {
                return Err(input.error(
                    "expected `,` between options: write `#[async_resource(type = \"Name\", crate = path)]`",
                ));
            }
            input.parse::<Token![,]>()?;
        }
        Ok(options)
    };
    parser.parse2(args)
}

/// True when the input starts with `name =` (an option), not `name ==` or a closure.
fn peek_option(input: ParseStream) -> bool {
    let fork = input.fork();
    if fork.call(Ident::parse_any).is_err() {
        return false;
    }
    fork.peek(Token![=]) && !fork.peek(Token![==]) && !fork.peek(Token![=>])
}

/// Parses the `option = value,` prefix of `bind!(...)`.
fn bind_options(input: ParseStream) -> syn::Result<Options> {
    let mut options = Options::default();
    while peek_option(input) {
        parse_one(input, Macro::Bind, &mut options)?;
        if !input.peek(Token![,]) {
            return Err(input.error(
                "expected `,` after the option, then the closure or async block: write `bind!(type = \"Name\", move || …)`",
            ));
        }
        input.parse::<Token![,]>()?;
    }
    Ok(options)
}

fn parse_one(input: ParseStream, mac: Macro, options: &mut Options) -> syn::Result<()> {
    let key = input.call(Ident::parse_any).map_err(|e| {
        syn::Error::new(
            e.span(),
            format!(
                "expected an option: {}; write e.g. `type = \"DBQuery\"`",
                valid_options(mac)
            ),
        )
    })?;
    let name = key.to_string();
    if name != "type" && name != "crate" {
        return Err(syn::Error::new(
            key.span(),
            format!(
                "unknown option `{name}`: {}; remove `{name}` or write one of those",
                valid_options(mac)
            ),
        ));
    }
    let example = if name == "type" {
        "type = \"Name\""
    } else {
        "crate = ::async_hooks"
    };
    if !input.peek(Token![=]) {
        return Err(syn::Error::new(
            key.span(),
            format!("option `{name}` needs a value: write `{example}`"),
        ));
    }
    let eq = input.parse::<Token![=]>()?;
    if input.is_empty() || input.peek(Token![,]) {
        return Err(syn::Error::new(
            eq.span,
            format!("option `{name}` needs a value after `=`: write `{example}`"),
        ));
    }
    let value: Expr = input.parse()?;
    if name == "type" {
        if options.type_name.is_some() {
            return Err(duplicate(&key));
        }
        options.type_name = Some(type_name(value, mac)?);
    } else {
        if options.krate.is_some() {
            return Err(duplicate(&key));
        }
        options.krate = Some(crate_path(value)?);
    }
    Ok(())
}

fn duplicate(key: &Ident) -> syn::Error {
    syn::Error::new(
        key.span(),
        format!("duplicate option `{key}`: give `{key}` only once and remove this one"),
    )
}

fn type_name(value: Expr, mac: Macro) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => {
            if lit.value().is_empty() {
                Err(syn::Error::new(
                    lit.span(),
                    format!(
                        "the resource type name is empty: write a name such as `type = \"DBQuery\"`, or remove `type` to use {}",
                        mac.default_type()
                    ),
                ))
            } else {
                Ok(lit)
            }
        }
        other => Err(syn::Error::new_spanned(
            other,
            "option `type` takes a string literal: write `type = \"Name\"`",
        )),
    }
}

fn crate_path(value: Expr) -> syn::Result<Path> {
    match value {
        Expr::Path(ExprPath {
            qself: None,
            path,
            attrs,
        }) if attrs.is_empty() => Ok(path),
        other => Err(syn::Error::new_spanned(
            other,
            "option `crate` takes a path: write `crate = ::async_hooks` or the path you re-export async-hooks under, e.g. `crate = ::my_crate::async_hooks`",
        )),
    }
}

/// A fn item, an impl method or a trait method (with or without a body): whatever
/// `#[async_resource]` may be applied to, before `validate::async_fn` checks it.
pub(crate) struct AnyFn {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) defaultness: Option<Token![default]>,
    pub(crate) sig: Signature,
    /// The body's inner attributes, statements and braces; `None` for a declaration (`;`).
    pub(crate) body: Option<(Vec<Attribute>, Vec<Stmt>, DelimSpan)>,
}

impl Parse for AnyFn {
    fn parse(input: ParseStream) -> syn::Result<AnyFn> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let defaultness: Option<Token![default]> = input.parse()?;
        let sig: Signature = input.parse()?;
        let body = if input.peek(Token![;]) {
            input.parse::<Token![;]>()?;
            None
        } else {
            let content;
            let brace = braced!(content in input);
            let inner = content.call(Attribute::parse_inner)?;
            let stmts = content.call(Block::parse_within)?;
            Some((inner, stmts, brace.span))
        };
        Ok(AnyFn {
            attrs,
            vis,
            defaultness,
            sig,
            body,
        })
    }
}

/// The input of `bind!`: options, then one expression (`validate::bind_target` checks that it
/// is a closure or an async block).
pub(crate) struct BindInput {
    pub(crate) options: Options,
    pub(crate) expr: Expr,
}

impl Parse for BindInput {
    fn parse(input: ParseStream) -> syn::Result<BindInput> {
        let options = bind_options(input)?;
        if input.is_empty() {
            return Err(syn::Error::new(
                Span::call_site(),
                "bind! needs a closure or an async block: write `bind!(move || …)` or `bind!(async move { … })`",
            ));
        }
        let expr: Expr = input.parse()?;
        if input.peek(Token![,]) {
            input.parse::<Token![,]>()?;
        }
        if !input.is_empty() {
            return Err(input.error(
                "bind! takes one closure or async block after its options: remove what follows it",
            ));
        }
        Ok(BindInput { options, expr })
    }
}
