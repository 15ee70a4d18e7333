//! Stable type identity: a name you choose and a fingerprint of the layout, both constants.
//!
//! By default a topic records its type by `std::any::type_name`, which depends on the module
//! path and may change with the compiler: two programs whose copies of a message live in
//! different crates disagree on it, and one layout change that keeps the size (two fields of the
//! same size swapped) goes unnoticed. A type implementing [`Message`] has a name of its own
//! choosing and a layout fingerprint; [`Topic::join`] records both, so that programs agree on
//! the type whatever their crates, compilers and module paths, and a topic refuses a type of the
//! same name whose layout differs ([`SegmentError::WrongType`](crate::SegmentError::WrongType),
//! naming both sides).
//!
//! ```
//! use shmbus::{Message, Publisher, Subscriber, Topic};
//!
//! #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Message)]
//! #[repr(C)]
//! #[shmbus(name = "robot.Pose")]
//! struct Pose { x: f64, y: f64, theta: f64 }
//!
//! /// Another program's copy, fields in another order: same name, same size, other layout.
//! mod elsewhere {
//!     #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, shmbus::Message)]
//!     #[repr(C)]
//!     #[shmbus(name = "robot.Pose")]
//!     pub struct Pose { pub theta: f64, pub x: f64, pub y: f64 }
//! }
//!
//! # let name = format!("doc-identity-{}", std::process::id());
//! let topic = Topic::builder(&name);
//! let mut publisher: Publisher<Pose> = topic.join()?;
//! assert!(topic.join::<Subscriber<elsewhere::Pose>>().is_err()); // WrongType
//! let subscriber = topic.join::<Subscriber<Pose>>()?;
//! publisher.send(Pose { x: 1.0, y: 2.0, theta: 0.5 })?;
//! assert_eq!(subscriber.try_recv()?.theta, 0.5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::marker::PhantomData;

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shmbus_core::layout::{fnv1a, TypeInfo, FNV_OFFSET};

use crate::error::OpenError;
use crate::frames::{ArrayPublisher, ArraySubscriber};
use crate::topic::{Publisher, SerdePublisher, SerdeSubscriber, Subscriber, Topic};

/// Derives [`Message`](trait@Message) for a struct: a stable name and a layout fingerprint,
/// both computed at compile time.
///
/// - **Name**: `#[shmbus(name = "robot.Pose")]`, or by default the struct's identifier
///   (`Pose`), never `std::any::type_name` (which changes with the module path and may change
///   with the compiler). At most [`MAX_NAME`] bytes.
/// - **Layout fingerprint** (FNV-1a 64, in a `const`): the name, then for each field in
///   declaration order its name (its index in a tuple struct) and its type's own
///   [`Message::LAYOUT`]. For a struct whose declaration defines its layout (`#[repr(C)]`,
///   `#[repr(transparent)]`, packed: every `bytemuck::Pod` struct) it also covers the struct's
///   size and alignment, and each field's offset (`core::mem::offset_of!`) and size
///   ([`LayoutHasher::defined`], [`LayoutHasher::field`]). For other structs, whose layout the
///   compiler chooses (serde messages, typically), it covers the structure only: field names,
///   order and types ([`LayoutHasher::structural`], [`LayoutHasher::member`]), so that it does
///   not change with the compiler.
/// - Every field's type must implement [`Message`](trait@Message); a type parameter `T` gets
///   the bound `T: Message` (its layout is part of the fingerprint, the name is not).
/// - `#[shmbus(crate = "path")]` names the shmbus crate when it is not a dependency named
///   `shmbus`.
///
/// The generated code is safe code. Reordering two fields of the same size, changing a field's
/// type or renaming it changes the fingerprint:
///
/// ```
/// use shmbus::Message;
///
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Message)]
/// #[repr(C)]
/// #[shmbus(name = "robot.Pose")]
/// struct Pose { x: f64, y: f64, theta: f64 }
///
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Message)]
/// #[repr(C)]
/// #[shmbus(name = "robot.Pose")]
/// struct Reordered { y: f64, x: f64, theta: f64 }
///
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Message)]
/// #[repr(C)]
/// struct Grid(u32, f32); // named "Grid", fields "0" and "1"
///
/// assert_eq!(Pose::NAME, "robot.Pose");
/// assert_eq!(Grid::NAME, "Grid");
/// assert_eq!(size_of::<Pose>(), size_of::<Reordered>());
/// assert_ne!(Pose::LAYOUT, Reordered::LAYOUT);
/// ```
///
/// Enums and unions are refused (implement the trait by hand, as its documentation shows):
///
/// ```compile_fail
/// #[derive(shmbus::Message)]
/// enum Mode { Idle, Busy }
/// ```
///
/// So is a field whose type has no identity:
///
/// ```compile_fail
/// struct Opaque;
///
/// #[derive(shmbus::Message)]
/// struct Holder { inner: Opaque }
/// ```
#[doc(inline)]
pub use shmbus_derive::Message;

/// The longest [`Message::NAME`], in bytes (what a segment header holds).
pub const MAX_NAME: usize = TypeInfo::MAX_NAME;

/// A type with a stable identity: a name of its own and a fingerprint of its layout, both
/// computed at compile time. Topics joined with [`Topic::join`] record them instead of Rust's
/// type name.
///
/// Derive it (`#[derive(shmbus::Message)]`, see [`macro@Message`]) for structs. It is
/// implemented for the primitive types (`u8` to `u128`, `i8` to `i128`, `usize`, `isize`, `f32`,
/// `f64`, `bool`, `char`, `()`), arrays `[T; N]`, `PhantomData<T>`, and, for serde messages,
/// `String`, `Vec<T>`, `Option<T>` and `Box<T>` (which is `T`'s identity, as serde encodes it).
///
/// Implementing it by hand (for an enum, say) is safe: the identity only decides which types
/// may share a topic; reading the bytes stays `bytemuck`'s or serde's business. Compute the
/// fingerprint with a [`LayoutHasher`]:
///
/// ```
/// use shmbus::identity::LayoutHasher;
/// use shmbus::Message;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// enum Command { Stop, Go { speed: f32 } }
///
/// impl Message for Command {
///     const NAME: &'static str = "robot.Command";
///     const LAYOUT: u64 = LayoutHasher::new()
///         .write_str(Self::NAME)
///         .write_str("Stop")
///         .write_str("Go")
///         .member::<f32>("speed")
///         .finish();
/// }
///
/// assert_ne!(Command::LAYOUT, <u32 as Message>::LAYOUT);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no stable shmbus identity",
    label = "`{Self}` does not implement `shmbus::Message`",
    note = "derive it with `#[derive(shmbus::Message)]`, or join with `Topic::publisher`, \
            `subscriber` and the like, which name the type by `std::any::type_name`"
)]
pub trait Message {
    /// The name recorded in topics (at most [`MAX_NAME`] bytes): `#[shmbus(name = "...")]`,
    /// or the struct's identifier.
    const NAME: &'static str;

    /// A fingerprint of the type's layout: what two programs must agree on to share it.
    const LAYOUT: u64;
}

/// An FNV-1a 64 hash usable in constants, with the steps that `#[derive(Message)]` takes.
///
/// Every `write_*` step is unambiguous (strings carry their length), so that different field
/// lists give different byte streams.
///
/// ```
/// use shmbus::identity::LayoutHasher;
///
/// const A: u64 = LayoutHasher::new().write_str("ab").write_str("c").finish();
/// const B: u64 = LayoutHasher::new().write_str("a").write_str("bc").finish();
/// assert_ne!(A, B);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutHasher(u64);

impl Default for LayoutHasher {
    fn default() -> Self {
        LayoutHasher::new()
    }
}

impl LayoutHasher {
    /// An empty hash.
    pub const fn new() -> LayoutHasher {
        LayoutHasher(FNV_OFFSET)
    }

    /// Hashes `bytes` as they are.
    pub const fn write(self, bytes: &[u8]) -> LayoutHasher {
        LayoutHasher(fnv1a(self.0, bytes))
    }

    /// Hashes `v` as 8 little-endian bytes.
    pub const fn write_u64(self, v: u64) -> LayoutHasher {
        self.write(&v.to_le_bytes())
    }

    /// Hashes the length of `s`, then its bytes.
    pub const fn write_str(self, s: &str) -> LayoutHasher {
        self.write_u64(s.len() as u64).write(s.as_bytes())
    }

    /// The hash.
    pub const fn finish(self) -> u64 {
        self.0
    }

    /// Starts the fingerprint of a struct `T` whose layout its declaration defines
    /// (`#[repr(C)]`, `#[repr(transparent)]`, packed): its name, size, alignment and number of
    /// fields. Follow with one [`field`](LayoutHasher::field) per field, in order.
    pub const fn defined<T>(name: &str, fields: usize) -> LayoutHasher {
        LayoutHasher::new()
            .write_str("shmbus.defined")
            .write_str(name)
            .write_u64(size_of::<T>() as u64)
            .write_u64(align_of::<T>() as u64)
            .write_u64(fields as u64)
    }

    /// A field of type `F` at `offset` in a struct started with
    /// [`defined`](LayoutHasher::defined): its name, offset, size and fingerprint.
    pub const fn field<F: Message>(self, name: &str, offset: usize) -> LayoutHasher {
        self.write_str(name)
            .write_u64(offset as u64)
            .write_u64(size_of::<F>() as u64)
            .write_u64(F::LAYOUT)
    }

    /// Starts the fingerprint of a struct whose layout the compiler chooses (a serde message,
    /// typically): its name and number of fields, not its size or offsets, which may change
    /// with the compiler. Follow with one [`member`](LayoutHasher::member) per field, in order.
    pub const fn structural(name: &str, fields: usize) -> LayoutHasher {
        LayoutHasher::new()
            .write_str("shmbus.structural")
            .write_str(name)
            .write_u64(fields as u64)
    }

    /// A member of type `F` (a field, a variant's payload): its name and fingerprint.
    pub const fn member<F: Message>(self, name: &str) -> LayoutHasher {
        self.write_str(name).write_u64(F::LAYOUT)
    }
}

macro_rules! primitives {
    ($($t:ty => $name:literal),* $(,)?) => {$(
        impl Message for $t {
            const NAME: &'static str = $name;
            const LAYOUT: u64 = LayoutHasher::new()
                .write_str("shmbus.primitive")
                .write_str($name)
                .write_u64(size_of::<$t>() as u64)
                .finish();
        }
    )*};
}

primitives! {
    u8 => "u8", u16 => "u16", u32 => "u32", u64 => "u64", u128 => "u128", usize => "usize",
    i8 => "i8", i16 => "i16", i32 => "i32", i64 => "i64", i128 => "i128", isize => "isize",
    f32 => "f32", f64 => "f64", bool => "bool", char => "char", () => "()",
}

/// Named `[T; N]` (a topic of a bare array may set [`Topic::type_name`]); the element's
/// fingerprint and the length are in the layout.
impl<T: Message, const N: usize> Message for [T; N] {
    const NAME: &'static str = "[T; N]";
    const LAYOUT: u64 = LayoutHasher::new()
        .write_str("shmbus.array")
        .write_u64(N as u64)
        .write_u64(T::LAYOUT)
        .finish();
}

impl<T: ?Sized> Message for PhantomData<T> {
    const NAME: &'static str = "PhantomData";
    const LAYOUT: u64 = LayoutHasher::new().write_str("shmbus.phantom").finish();
}

impl Message for String {
    const NAME: &'static str = "String";
    const LAYOUT: u64 = LayoutHasher::new().write_str("shmbus.string").finish();
}

impl<T: Message> Message for Vec<T> {
    const NAME: &'static str = "Vec";
    const LAYOUT: u64 = LayoutHasher::new()
        .write_str("shmbus.sequence")
        .write_u64(T::LAYOUT)
        .finish();
}

impl<T: Message> Message for Option<T> {
    const NAME: &'static str = "Option";
    const LAYOUT: u64 = LayoutHasher::new()
        .write_str("shmbus.option")
        .write_u64(T::LAYOUT)
        .finish();
}

impl<T: Message + ?Sized> Message for Box<T> {
    const NAME: &'static str = T::NAME;
    const LAYOUT: u64 = T::LAYOUT;
}

mod sealed {
    /// Only shmbus's handles are [`Join`](super::Join).
    #[allow(unreachable_pub)]
    pub trait Sealed {}
}

/// A publisher or subscriber that [`Topic::join`] makes for a [`Message`] type: [`Publisher`],
/// [`Subscriber`], [`SerdePublisher`], [`SerdeSubscriber`], [`ArrayPublisher`],
/// [`ArraySubscriber`].
pub trait Join: Sized + sealed::Sealed {
    /// Joins `topic` as this handle (see [`Topic::join`]).
    #[doc(hidden)]
    fn join(topic: &Topic) -> Result<Self, OpenError>;
}

macro_rules! joins {
    ($($handle:ident<$t:ident: $bound:path> => $method:ident),* $(,)?) => {$(
        impl<$t: $bound + Message> sealed::Sealed for $handle<$t> {}
        impl<$t: $bound + Message> Join for $handle<$t> {
            fn join(topic: &Topic) -> Result<Self, OpenError> {
                topic.identified($t::NAME, $t::LAYOUT).$method::<$t>()
            }
        }
    )*};
}

joins! {
    Publisher<T: Pod> => publisher,
    Subscriber<T: Pod> => subscriber,
    SerdePublisher<T: Serialize> => serde_publisher,
    SerdeSubscriber<T: DeserializeOwned> => serde_subscriber,
    ArrayPublisher<M: Pod> => array_publisher,
    ArraySubscriber<M: Pod> => array_subscriber,
}

impl Topic {
    /// Joins (creating the topic if needed) as the handle `H` of a type with a stable
    /// identity: the topic records [`Message::NAME`] (unless [`Topic::type_name`] set another)
    /// and mixes [`Message::LAYOUT`] into its type fingerprint. Otherwise the same as the method
    /// of that handle ([`Topic::publisher`], [`Topic::subscriber`],
    /// [`Topic::serde_publisher`], [`Topic::serde_subscriber`], [`Topic::array_publisher`],
    /// [`Topic::array_subscriber`]), which record `std::any::type_name` instead.
    ///
    /// Every program sharing the topic joins it this way: a topic created by
    /// [`Topic::publisher`] records another name and fingerprint, and is a
    /// [`SegmentError::WrongType`](crate::SegmentError::WrongType) here.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Message, Publisher, SerdePublisher, SerdeSubscriber, Subscriber, Topic};
    ///
    /// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Message)]
    /// #[repr(C)]
    /// #[shmbus(name = "robot.Reading")]
    /// struct Reading { sensor: u32, celsius: f32 }
    ///
    /// #[derive(serde::Serialize, serde::Deserialize, Message)]
    /// #[shmbus(name = "robot.Plan")]
    /// struct Plan { label: String, waypoints: Vec<[f64; 2]> }
    ///
    /// # let id = std::process::id();
    /// # let (readings, plans) = (format!("doc-join-r-{id}"), format!("doc-join-p-{id}"));
    /// let topic = Topic::builder(&readings);
    /// let mut publisher: Publisher<Reading> = topic.join()?;
    /// let subscriber = topic.join::<Subscriber<Reading>>()?;
    /// publisher.send(Reading { sensor: 7, celsius: 21.5 })?;
    /// assert_eq!(subscriber.try_recv()?.sensor, 7);
    ///
    /// let topic = Topic::builder(&plans);
    /// let mut publisher = topic.join::<SerdePublisher<Plan>>()?;
    /// let subscriber = topic.join::<SerdeSubscriber<Plan>>()?;
    /// publisher.send(Plan { label: "dock".into(), waypoints: vec![[0.0, 1.0]] })?;
    /// assert_eq!(subscriber.try_recv()?.label, "dock");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn join<H: Join>(&self) -> Result<H, OpenError> {
        H::join(self)
    }
}

#[cfg(test)]
#[allow(dead_code)] // the structs exist for their layouts
mod tests {
    use super::*;

    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, shmbus_derive::Message)]
    #[repr(C)]
    #[shmbus(crate = "crate", name = "test.Pair")]
    struct Pair {
        a: u32,
        b: u32,
    }

    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, shmbus_derive::Message)]
    #[repr(C)]
    #[shmbus(crate = "crate", name = "test.Pair")]
    struct Swapped {
        b: u32,
        a: u32,
    }

    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, shmbus_derive::Message)]
    #[repr(C)]
    #[shmbus(crate = "crate", name = "test.Pair")]
    struct OtherTypes {
        a: f32,
        b: u32,
    }

    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, shmbus_derive::Message)]
    #[repr(C)]
    #[shmbus(crate = "crate", name = "test.Pair")]
    struct Tuple(u32, u32);

    #[derive(shmbus_derive::Message)]
    #[shmbus(crate = "crate")]
    struct Pair2 {
        a: u32,
        b: u32,
    }

    #[derive(shmbus_derive::Message)]
    #[repr(C)]
    #[shmbus(crate = "crate")]
    struct Stamped<T> {
        stamp: u64,
        value: T,
    }

    #[test]
    fn names_default_to_the_identifier() {
        assert_eq!(Pair::NAME, "test.Pair");
        assert_eq!(Pair2::NAME, "Pair2");
        assert_eq!(<Stamped<u8>>::NAME, "Stamped");
    }

    #[test]
    fn the_layout_follows_the_fields() {
        // Swapped fields of the same size: other offsets.
        assert_ne!(Pair::LAYOUT, Swapped::LAYOUT);
        // Same names, offsets and sizes, other field types.
        assert_ne!(Pair::LAYOUT, OtherTypes::LAYOUT);
        // Tuple fields are named by their index.
        assert_ne!(Pair::LAYOUT, Tuple::LAYOUT);
        // Generic structs carry their parameter's layout.
        assert_ne!(<Stamped<u32>>::LAYOUT, <Stamped<f32>>::LAYOUT);
        assert_ne!(<[u32; 2]>::LAYOUT, <[u32; 3]>::LAYOUT);
        assert_ne!(<[u32; 2]>::LAYOUT, <[f32; 2]>::LAYOUT);
        assert_ne!(<Vec<u8>>::LAYOUT, <[u8; 0]>::LAYOUT);
    }

    #[test]
    fn a_structural_layout_ignores_offsets_but_not_order() {
        #[derive(shmbus_derive::Message)]
        #[shmbus(crate = "crate", name = "Pair2")]
        struct Reordered {
            b: u32,
            a: u32,
        }
        assert_ne!(Pair2::LAYOUT, Reordered::LAYOUT);
        let by_hand = LayoutHasher::structural("Pair2", 2)
            .member::<u32>("a")
            .member::<u32>("b")
            .finish();
        assert_eq!(Pair2::LAYOUT, by_hand);
    }

    #[test]
    fn a_defined_layout_is_the_documented_steps() {
        let by_hand = LayoutHasher::defined::<Pair>("test.Pair", 2)
            .field::<u32>("a", 0)
            .field::<u32>("b", 4)
            .finish();
        assert_eq!(Pair::LAYOUT, by_hand);
        // Only an offset differs: another fingerprint.
        let moved = LayoutHasher::defined::<Pair>("test.Pair", 2)
            .field::<u32>("a", 0)
            .field::<u32>("b", 8)
            .finish();
        assert_ne!(by_hand, moved);
    }
}
