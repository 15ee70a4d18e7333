//! `#[derive(Message)]` for shmbus: gives a struct a stable name and a layout fingerprint.
//!
//! Use it through the `shmbus` crate, which re-exports it beside the trait it implements
//! (`shmbus::Message`); the documentation and examples are there.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{parse_macro_input, parse_quote, Data, DeriveInput, LitStr, Member, Path};

/// Derives `shmbus::Message` for a struct: a stable name and a layout fingerprint, computed at
/// compile time (documented with its examples in `shmbus::identity`).
#[proc_macro_derive(Message, attributes(shmbus))]
pub fn derive_message(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

struct Options {
    name: Option<LitStr>,
    krate: Path,
}

fn options(input: &DeriveInput) -> syn::Result<Options> {
    let mut name = None;
    let mut krate = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("shmbus")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                if name.is_some() {
                    return Err(meta.error("`name` given twice"));
                }
                let lit: LitStr = meta.value()?.parse()?;
                if lit.value().is_empty() {
                    return Err(syn::Error::new(lit.span(), "the name must not be empty"));
                }
                name = Some(lit);
                Ok(())
            } else if meta.path.is_ident("crate") {
                let lit: LitStr = meta.value()?.parse()?;
                krate = Some(lit.parse::<Path>()?);
                Ok(())
            } else {
                Err(meta.error(
                    "unknown shmbus attribute: expected `name = \"...\"` or `crate = \"...\"`",
                ))
            }
        })?;
    }
    Ok(Options {
        name,
        krate: krate.unwrap_or_else(|| parse_quote!(::shmbus)),
    })
}

/// Whether the struct's layout is defined by its declaration (`repr(C)`, `repr(transparent)`,
/// `repr(packed)`), rather than chosen by the compiler.
fn defined_layout(input: &DeriveInput) -> syn::Result<bool> {
    let mut defined = false;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("repr")) {
        attr.parse_nested_meta(|meta| {
            if ["C", "transparent", "packed"]
                .iter()
                .any(|r| meta.path.is_ident(r))
            {
                defined = true;
            }
            // `packed(N)`, `align(N)`: skip the argument.
            if meta.input.peek(syn::token::Paren) {
                let content;
                syn::parenthesized!(content in meta.input);
                content.parse::<TokenStream2>()?;
            }
            Ok(())
        })?;
    }
    Ok(defined)
}

fn expand(mut input: DeriveInput) -> syn::Result<TokenStream2> {
    let fields = match &input.data {
        Data::Struct(s) => s.fields.clone(),
        Data::Enum(e) => {
            return Err(syn::Error::new(
                e.enum_token.span(),
                "#[derive(shmbus::Message)] supports structs only: an enum's layout (tag, \
                 niches, variant placement) is not described by fields in order; implement \
                 `shmbus::Message` by hand for it",
            ))
        }
        Data::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span(),
                "#[derive(shmbus::Message)] supports structs only: a union's fields overlap \
                 and cannot be fingerprinted in order; implement `shmbus::Message` by hand \
                 for it",
            ))
        }
    };
    for field in &fields {
        if let Some(attr) = field.attrs.iter().find(|a| a.path().is_ident("shmbus")) {
            return Err(syn::Error::new(
                attr.span(),
                "shmbus attributes go on the struct, not on its fields",
            ));
        }
    }
    let opts = options(&input)?;
    let defined = defined_layout(&input)?;
    let krate = &opts.krate;
    let ident = &input.ident;
    let name = opts
        .name
        .unwrap_or_else(|| LitStr::new(&ident.unraw().to_string(), ident.span()));

    // Every type parameter must have an identity of its own.
    let params: Vec<_> = input
        .generics
        .type_params()
        .map(|p| p.ident.clone())
        .collect();
    let where_clause = input.generics.make_where_clause();
    for p in params {
        where_clause
            .predicates
            .push(parse_quote!(#p: #krate::Message));
    }
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();

    let count = fields.len();
    let start = if defined {
        quote!(#krate::identity::LayoutHasher::defined::<Self>(#name, #count))
    } else {
        quote!(#krate::identity::LayoutHasher::structural(#name, #count))
    };
    let steps = fields.iter().enumerate().map(|(i, f)| {
        let member = match &f.ident {
            Some(id) => Member::Named(id.clone()),
            None => Member::Unnamed(syn::Index {
                index: i as u32,
                span: f.ty.span(),
            }),
        };
        let field_name = match &f.ident {
            Some(id) => id.unraw().to_string(),
            None => i.to_string(),
        };
        let ty = &f.ty;
        // Spanned at the field's type, so that a type without an identity is reported there.
        if defined {
            quote_spanned! {ty.span()=>
                .field::<#ty>(#field_name, ::core::mem::offset_of!(Self, #member))
            }
        } else {
            quote_spanned! {ty.span()=> .member::<#ty>(#field_name) }
        }
    });
    let name_check = quote_spanned! {name.span()=>
        const _: () = ::core::assert!(
            #name.len() <= #krate::identity::MAX_NAME,
            "a shmbus type name is at most shmbus::identity::MAX_NAME (96) bytes long",
        );
    };
    Ok(quote! {
        #name_check

        #[automatically_derived]
        impl #impl_generics #krate::Message for #ident #ty_generics #where_clause {
            const NAME: &'static str = #name;
            const LAYOUT: u64 = #start #(#steps)* .finish();
        }
    })
}
