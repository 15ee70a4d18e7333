//! Message layouts: the `--as SPEC` grammar, and the Rust type names topics record.
//!
//! ```text
//! spec   := fields | type
//! fields := field ("," field)*          (at least one field; a trailing comma is fine)
//! field  := ident ":" type
//! type   := base "?"*                    ("T?" is an option of T)
//! base   := "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | ... | "i64" | "isize"
//!         | "f32" | "f64" | "bool" | "string" | "str" | "&str" | "String"
//!         | "[" type "]"                 (a sequence)
//!         | "[" type ";" N "]"           (a fixed array, N >= 1)
//!         | "{" fields "}"               (a nested struct)
//!         | "Vec<" type ">" | "Option<" type ">"
//! ```
//!
//! Rust paths are accepted and only their last segment counts, so the names a topic records
//! (`alloc::string::String`, `alloc::vec::Vec<u8>`, `[f32; 4]`) parse with the same grammar.

use std::fmt;

/// Deepest nesting accepted (a guard against stack exhaustion on hostile input).
const MAX_DEPTH: usize = 32;

/// A message layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ty {
    /// `bool`.
    Bool,
    /// An unsigned integer of this many bytes (1, 2, 4, 8).
    Uint(u8),
    /// A signed integer of this many bytes (1, 2, 4, 8).
    Int(u8),
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// A UTF-8 string (serde only).
    Str,
    /// A variable-length sequence (serde only).
    Seq(Box<Ty>),
    /// An option (serde only).
    Opt(Box<Ty>),
    /// A fixed-length array of at least one element.
    Array(Box<Ty>, usize),
    /// Named fields in order (at least one).
    Struct(Vec<(String, Ty)>),
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Bool => f.write_str("bool"),
            Ty::Uint(n) => write!(f, "u{}", u32::from(*n) * 8),
            Ty::Int(n) => write!(f, "i{}", u32::from(*n) * 8),
            Ty::F32 => f.write_str("f32"),
            Ty::F64 => f.write_str("f64"),
            Ty::Str => f.write_str("string"),
            Ty::Seq(t) => write!(f, "[{t}]"),
            Ty::Opt(t) => write!(f, "{t}?"),
            Ty::Array(t, n) => write!(f, "[{t}; {n}]"),
            Ty::Struct(fields) => {
                f.write_str("{")?;
                for (i, (name, t)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{name}:{t}")?;
                }
                f.write_str("}")
            }
        }
    }
}

/// Why a spec did not parse: what was expected, and where (a 1-based column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at column {column} of `{spec}`")]
pub(crate) struct SpecError {
    /// What went wrong.
    pub(crate) what: String,
    /// 1-based character column.
    pub(crate) column: usize,
    /// The whole spec.
    pub(crate) spec: String,
}

/// Parses a `--as` spec: a field list (`seq:u64,x:f64`) or a single type (`[f32]`).
pub(crate) fn parse(spec: &str) -> Result<Ty, SpecError> {
    let mut p = Parser {
        s: spec.as_bytes(),
        pos: 0,
        spec,
    };
    p.ws();
    let ty = if p.at_field() {
        Ty::Struct(p.fields(0, None)?)
    } else {
        p.ty(0)?
    };
    p.ws();
    if p.pos < p.s.len() {
        return Err(p.err("unexpected text after the end of the layout"));
    }
    Ok(ty)
}

/// The layout of a type a topic records by its Rust name, if it is one the CLI knows
/// (primitives, strings, and sequences, options and arrays of known types).
pub(crate) fn known_type(type_name: &str) -> Option<Ty> {
    let mut p = Parser {
        s: type_name.as_bytes(),
        pos: 0,
        spec: type_name,
    };
    p.ws();
    if p.at_field() {
        return None;
    }
    let ty = p.ty(0).ok()?;
    p.ws();
    (p.pos == p.s.len()).then_some(ty)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    spec: &'a str,
}

impl Parser<'_> {
    fn err(&self, what: impl Into<String>) -> SpecError {
        SpecError {
            what: what.into(),
            column: self.spec[..self.pos.min(self.spec.len())].chars().count() + 1,
            spec: self.spec.to_owned(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8, context: &str) -> Result<(), SpecError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.err(format!("expected `{}` {context}", c as char)))
        }
    }

    fn ident(&mut self) -> Option<String> {
        self.ws();
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            self.pos += 1;
        }
        // Identifiers are ASCII, so `start..pos` lies on char boundaries.
        (self.pos > start).then(|| self.spec[start..self.pos].to_owned())
    }

    /// Whether the input continues with `ident :` (and not `ident ::`, a Rust path).
    fn at_field(&mut self) -> bool {
        let save = self.pos;
        let is_field = self.ident().is_some() && {
            self.ws();
            self.peek() == Some(b':') && self.s.get(self.pos + 1) != Some(&b':')
        };
        self.pos = save;
        is_field
    }

    fn fields(&mut self, depth: usize, close: Option<u8>) -> Result<Vec<(String, Ty)>, SpecError> {
        let mut fields: Vec<(String, Ty)> = Vec::new();
        loop {
            self.ws();
            if close.is_some() && self.peek() == close && !fields.is_empty() {
                break;
            }
            if close.is_none() && self.peek().is_none() && !fields.is_empty() {
                break;
            }
            let Some(name) = self.ident() else {
                return Err(self.err("expected a field name"));
            };
            if fields.iter().any(|(n, _)| *n == name) {
                return Err(self.err(format!("field `{name}` appears twice")));
            }
            self.expect(b':', &format!("after field name `{name}`"))?;
            let ty = self.ty(depth + 1)?;
            fields.push((name, ty));
            if !self.eat(b',') {
                break;
            }
        }
        Ok(fields)
    }

    fn ty(&mut self, depth: usize) -> Result<Ty, SpecError> {
        if depth > MAX_DEPTH {
            return Err(self.err(format!("nested more than {MAX_DEPTH} levels deep")));
        }
        let mut ty = self.base(depth)?;
        while self.eat(b'?') {
            ty = Ty::Opt(Box::new(ty));
        }
        Ok(ty)
    }

    fn base(&mut self, depth: usize) -> Result<Ty, SpecError> {
        self.ws();
        match self.peek() {
            Some(b'[') => {
                self.pos += 1;
                let inner = self.ty(depth + 1)?;
                if self.eat(b';') {
                    self.ws();
                    let start = self.pos;
                    while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                        self.pos += 1;
                    }
                    let n: usize = self.spec[start..self.pos]
                        .parse()
                        .map_err(|_| self.err("expected an array length"))?;
                    if n == 0 {
                        return Err(self.err("an array needs at least one element"));
                    }
                    self.expect(b']', "to close the array")?;
                    Ok(Ty::Array(Box::new(inner), n))
                } else {
                    self.expect(b']', "to close the sequence")?;
                    Ok(Ty::Seq(Box::new(inner)))
                }
            }
            Some(b'{') => {
                self.pos += 1;
                let fields = self.fields(depth + 1, Some(b'}'))?;
                self.expect(b'}', "to close the struct")?;
                Ok(Ty::Struct(fields))
            }
            Some(b'&') => {
                self.pos += 1;
                self.ws();
                if self.peek() == Some(b'\'') {
                    // A lifetime: `&'static str`.
                    self.pos += 1;
                    if self.ident().is_none() {
                        return Err(self.err("expected a lifetime name"));
                    }
                }
                match self.ident().as_deref() {
                    Some("str") => Ok(Ty::Str),
                    _ => Err(self.err("expected `str` after `&`")),
                }
            }
            _ => self.named(depth),
        }
    }

    /// A (possibly path-qualified) type name.
    fn named(&mut self, depth: usize) -> Result<Ty, SpecError> {
        let start = self.pos;
        let mut last = self.ident().ok_or_else(|| self.err("expected a type"))?;
        loop {
            let save = self.pos;
            self.ws();
            if self.s.get(self.pos..self.pos + 2) == Some(b"::") {
                self.pos += 2;
                last = match self.ident() {
                    Some(id) => id,
                    None => return Err(self.err("expected a name after `::`")),
                };
            } else {
                self.pos = save;
                break;
            }
        }
        let generic = |p: &mut Self, wrap: fn(Box<Ty>) -> Ty| -> Result<Ty, SpecError> {
            p.expect(b'<', &format!("after `{last}`"))?;
            let inner = p.ty(depth + 1)?;
            p.expect(b'>', &format!("to close `{last}<`"))?;
            Ok(wrap(Box::new(inner)))
        };
        Ok(match last.as_str() {
            "bool" => Ty::Bool,
            "u8" => Ty::Uint(1),
            "u16" => Ty::Uint(2),
            "u32" => Ty::Uint(4),
            "u64" | "usize" => Ty::Uint(8),
            "i8" => Ty::Int(1),
            "i16" => Ty::Int(2),
            "i32" => Ty::Int(4),
            "i64" | "isize" => Ty::Int(8),
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "string" | "String" | "str" => Ty::Str,
            "Vec" => generic(self, Ty::Seq)?,
            "Option" => generic(self, Ty::Opt)?,
            _ => {
                self.pos = start;
                self.ws();
                return Err(self.err(format!(
                    "unknown type `{last}` (known: u8..u64, i8..i64, f32, f64, bool, string, \
                     [T], [T; N], T?, {{fields}})"
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(fields: &[(&str, Ty)]) -> Ty {
        Ty::Struct(
            fields
                .iter()
                .map(|(n, t)| ((*n).to_owned(), t.clone()))
                .collect(),
        )
    }

    #[test]
    fn field_lists() {
        assert_eq!(
            parse("seq:u64,x:f64, y : f64,theta:f64").unwrap(),
            s(&[
                ("seq", Ty::Uint(8)),
                ("x", Ty::F64),
                ("y", Ty::F64),
                ("theta", Ty::F64)
            ])
        );
        assert_eq!(
            parse("seq:u64,mode:string,warnings:[string]").unwrap(),
            s(&[
                ("seq", Ty::Uint(8)),
                ("mode", Ty::Str),
                ("warnings", Ty::Seq(Box::new(Ty::Str)))
            ])
        );
        assert_eq!(
            parse("a:u8?,b:[i16; 3],c:{d:bool,e:f32}??,").unwrap(),
            s(&[
                ("a", Ty::Opt(Box::new(Ty::Uint(1)))),
                ("b", Ty::Array(Box::new(Ty::Int(2)), 3)),
                (
                    "c",
                    Ty::Opt(Box::new(Ty::Opt(Box::new(s(&[
                        ("d", Ty::Bool),
                        ("e", Ty::F32)
                    ])))))
                ),
            ])
        );
    }

    #[test]
    fn single_types_and_rust_names() {
        assert_eq!(parse("[f32]").unwrap(), Ty::Seq(Box::new(Ty::F32)));
        assert_eq!(parse("u16").unwrap(), Ty::Uint(2));
        assert_eq!(known_type("alloc::string::String"), Some(Ty::Str));
        assert_eq!(known_type("&str"), Some(Ty::Str));
        assert_eq!(known_type("&'static str"), Some(Ty::Str));
        assert_eq!(
            known_type("alloc::vec::Vec<u8>"),
            Some(Ty::Seq(Box::new(Ty::Uint(1))))
        );
        assert_eq!(
            known_type("[f32; 4]"),
            Some(Ty::Array(Box::new(Ty::F32), 4))
        );
        assert_eq!(
            known_type("core::option::Option<i64>"),
            Some(Ty::Opt(Box::new(Ty::Int(8))))
        );
        assert_eq!(known_type("pubsub::Pose"), None);
        let array_topic = format!(
            "{}image_transfer::FrameMeta",
            shmbus_core::wire::type_name::ARRAY_TOPIC_PREFIX
        );
        assert_eq!(known_type(&array_topic), None);
        assert_eq!(known_type("(u8, u16)"), None);
        assert_eq!(known_type("x:u8"), None, "a field list is not a type name");
    }

    #[test]
    fn errors_say_where() {
        let e = parse("seq:u64,x:f65").unwrap_err();
        assert!(e.what.contains("unknown type `f65`"), "{e}");
        assert_eq!(e.column, 11);
        let e = parse("seq u64").unwrap_err();
        assert!(e.to_string().contains("column"), "{e}");
        assert!(parse("").is_err());
        assert!(parse("a:u8,a:u8").unwrap_err().what.contains("twice"));
        assert!(parse("a:[u8;0]").unwrap_err().what.contains("at least one"));
        assert!(parse("a:[u8").is_err());
        assert!(parse("a:{}").is_err());
        assert!(parse("a:u8 junk").is_err());
        assert!(parse("Vec<u8").is_err());
        let deep = format!("{}u8{}", "[".repeat(100), "]".repeat(100));
        assert!(parse(&deep).unwrap_err().what.contains("nested"));
    }

    #[test]
    fn display_round_trips() {
        for spec in ["{a:u8,b:[string],c:[f64; 2]?}", "[i32]", "bool"] {
            let ty = parse(spec).unwrap();
            assert_eq!(parse(&ty.to_string()).unwrap(), ty);
        }
    }
}
