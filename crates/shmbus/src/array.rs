//! Named N-dimensional arrays in shared memory, attached by name from any process.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use bytemuck::Pod;
use shmbus_core::array::{self as raw, ArraySpec, Location, RawArray};
pub use shmbus_core::array::{ArrayError, ArrayInfo};
use shmbus_core::dtype::Dtype;
use shmbus_core::segment::Lifetime;

/// A Rust type that is an array element of a known [`Dtype`].
///
/// Implemented for the integer and floating-point primitives; `bool`, `float16` and complex
/// arrays are reachable as bytes through [`AnyArray`].
pub trait Element: Pod {
    /// The element's dtype.
    const DTYPE: Dtype;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {
        $(impl Element for $t { const DTYPE: Dtype = Dtype::$d; })*
    };
}
element!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, u64 => U64,
         i64 => I64, f32 => F32, f64 => F64);

fn location(name: &str) -> Result<Location, ArrayError> {
    Ok(Location::parse(name)?)
}

fn typed<T: Element>(raw: &RawArray) -> &[T] {
    // The data is page-aligned and `byte_len` is a whole number of `T` (its dtype is T's).
    bytemuck::try_cast_slice(raw.bytes()).expect("page-aligned data of T's dtype")
}

/// How to create a named array: lifetime, permissions, memory locking.
///
/// # Examples
///
/// ```
/// use shmbus::SharedArray;
///
/// # let name = format!("doc-arrayopts-{}", std::process::id());
/// // Gone when the last process using it leaves, readable by the group.
/// let a = SharedArray::<f64>::options().scoped().mode(0o640).create(&name, &[3, 3])?;
/// assert_eq!(a.len(), 9);
/// # Ok::<(), shmbus::ArrayError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ArrayOptions<T: Element> {
    lifetime: Lifetime,
    mode: u32,
    mlock: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T: Element> ArrayOptions<T> {
    /// Removed when the last process using it leaves or dies (the default is persistent: kept
    /// until [`delete`]).
    pub fn scoped(mut self) -> Self {
        self.lifetime = Lifetime::Scoped;
        self
    }

    /// Kept until [`delete`], whoever uses it (the default).
    pub fn persistent(mut self) -> Self {
        self.lifetime = Lifetime::Persistent;
        self
    }

    /// File permission bits (default `0o600`, owner only).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Lock the pages in RAM (`mlock`) once created.
    pub fn mlock(mut self, yes: bool) -> Self {
        self.mlock = yes;
        self
    }

    /// Creates the array `name` (zero-filled) of `shape`. `name` is a shm name (`"frames"`,
    /// `"shm://frames"`) or a file (`"file:///var/data/calib"`, always persistent; see
    /// [`SharedArray::flush`]). Fails if it exists.
    pub fn create(&self, name: &str, shape: &[usize]) -> Result<SharedArray<T>, ArrayError> {
        let spec = ArraySpec {
            lifetime: self.lifetime,
            mode: self.mode,
            ..ArraySpec::new(T::DTYPE, shape)
        };
        let raw = RawArray::create(&location(name)?, &spec)?;
        if self.mlock {
            raw.lock_memory()?;
        }
        Ok(SharedArray {
            raw,
            _t: PhantomData,
        })
    }
}

/// A named N-d array of `T` in shared memory (the SharedArray model, from Rust).
///
/// It dereferences to the elements, C order, in place. One process creates it; any process
/// attaches it by name and gets the same memory (nothing is copied). The header records the
/// dtype and shape, so attaching with another element type is an [`ArrayError::WrongDtype`].
///
/// Arrays are persistent by default: they stay until [`delete`], which removes the name while
/// every existing attachment stays valid. Concurrent writers in several processes coordinate
/// as they would with any shared memory (a [`Mutex`](crate::Mutex), an
/// [`Event`](crate::Event) or a topic); elements are plain data, so a race yields stale or
/// mixed values, never invalid ones.
///
/// # Examples
///
/// ```
/// use shmbus::SharedArray;
///
/// # let name = format!("doc-array-{}", std::process::id());
/// let mut a = SharedArray::<f32>::create(&name, &[2, 3])?;
/// a[4] = 1.5;
///
/// // Any other process:
/// let b = SharedArray::<f32>::attach(&name)?;
/// assert_eq!(b.shape(), &[2, 3]);
/// assert_eq!(b[4], 1.5);
///
/// // A wrong element type is refused, naming both.
/// assert!(matches!(SharedArray::<u8>::attach(&name),
///                  Err(shmbus::ArrayError::WrongDtype { .. })));
/// shmbus::array::delete(&name)?; // `a` and `b` stay valid until dropped
/// assert!(b[4] == 1.5);
/// # Ok::<(), shmbus::ArrayError>(())
/// ```
pub struct SharedArray<T: Element> {
    raw: RawArray,
    _t: PhantomData<T>,
}

impl<T: Element> fmt::Debug for SharedArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedArray")
            .field("name", &self.raw.label())
            .field("dtype", &self.raw.dtype())
            .field("shape", &self.raw.shape())
            .finish()
    }
}

impl<T: Element> SharedArray<T> {
    /// Options for creating an array.
    pub fn options() -> ArrayOptions<T> {
        ArrayOptions {
            lifetime: Lifetime::Persistent,
            mode: 0o600,
            mlock: false,
            _t: PhantomData,
        }
    }

    /// Creates the persistent, private array `name` of `shape`, zero-filled.
    pub fn create(name: &str, shape: &[usize]) -> Result<Self, ArrayError> {
        Self::options().create(name, shape)
    }

    /// Attaches the existing array `name`, read-write.
    pub fn attach(name: &str) -> Result<Self, ArrayError> {
        let raw = RawArray::open(&location(name)?, Some(T::DTYPE), false, None)?;
        Ok(SharedArray {
            raw,
            _t: PhantomData,
        })
    }

    /// Attaches the existing array `name` read-only (the mapping itself is read-only).
    pub fn attach_read_only(name: &str) -> Result<ReadOnlyArray<T>, ArrayError> {
        let raw = RawArray::open(&location(name)?, Some(T::DTYPE), true, None)?;
        Ok(ReadOnlyArray {
            raw,
            _t: PhantomData,
        })
    }

    /// The extent of each dimension.
    pub fn shape(&self) -> &[usize] {
        self.raw.shape()
    }

    /// Byte strides (C order).
    pub fn strides(&self) -> &[usize] {
        self.raw.strides()
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.raw.dtype()
    }

    /// The elements, in place.
    pub fn as_slice(&self) -> &[T] {
        typed(&self.raw)
    }

    /// The elements, in place, writable.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        let bytes = self.raw.bytes_mut().expect("attached read-write");
        bytemuck::try_cast_slice_mut(bytes).expect("page-aligned data of T's dtype")
    }

    /// Writes the array to its file and waits (`msync`); for `file://` arrays, whose data must
    /// survive a reboot. Harmless for shm arrays.
    pub fn flush(&self) -> Result<(), ArrayError> {
        self.raw.flush()
    }

    /// Locks the pages in RAM (`mlock`).
    pub fn lock_memory(&self) -> Result<(), ArrayError> {
        self.raw.lock_memory()
    }

    /// Undoes [`SharedArray::lock_memory`].
    pub fn unlock_memory(&self) -> Result<(), ArrayError> {
        self.raw.unlock_memory()
    }

    /// The array's lifetime.
    pub fn lifetime(&self) -> Lifetime {
        self.raw.segment().lifetime()
    }
}

impl<T: Element> Deref for SharedArray<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Element> DerefMut for SharedArray<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

/// A named array attached read-only ([`SharedArray::attach_read_only`]).
pub struct ReadOnlyArray<T: Element> {
    raw: RawArray,
    _t: PhantomData<T>,
}

impl<T: Element> fmt::Debug for ReadOnlyArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadOnlyArray")
            .field("name", &self.raw.label())
            .field("shape", &self.raw.shape())
            .finish()
    }
}

impl<T: Element> ReadOnlyArray<T> {
    /// The extent of each dimension.
    pub fn shape(&self) -> &[usize] {
        self.raw.shape()
    }
}

impl<T: Element> Deref for ReadOnlyArray<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        typed(&self.raw)
    }
}

/// An array attached without knowing its element type (tools, bindings).
///
/// # Examples
///
/// ```
/// use shmbus::{array::AnyArray, SharedArray};
///
/// # let name = format!("doc-anyarray-{}", std::process::id());
/// let _a = SharedArray::<u16>::options().scoped().create(&name, &[4])?;
/// let any = AnyArray::attach(&name)?;
/// assert_eq!(any.dtype().typestr(), "<u2");
/// assert_eq!(any.bytes().len(), 8);
/// let typed = any.into_typed::<u16>()?;
/// assert_eq!(typed.len(), 4);
/// # Ok::<(), shmbus::ArrayError>(())
/// ```
#[derive(Debug)]
pub struct AnyArray {
    raw: RawArray,
}

impl AnyArray {
    /// Attaches `name` read-write, whatever its dtype.
    pub fn attach(name: &str) -> Result<AnyArray, ArrayError> {
        Self::attach_with(name, false, None)
    }

    /// Attaches `name`, read-only or not, waiting up to `timeout` for a segment not ready yet.
    pub fn attach_with(
        name: &str,
        read_only: bool,
        timeout: Option<Duration>,
    ) -> Result<AnyArray, ArrayError> {
        Ok(AnyArray {
            raw: RawArray::open(&location(name)?, None, read_only, timeout)?,
        })
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.raw.dtype()
    }

    /// The extent of each dimension.
    pub fn shape(&self) -> &[usize] {
        self.raw.shape()
    }

    /// The elements' bytes.
    pub fn bytes(&self) -> &[u8] {
        self.raw.bytes()
    }

    /// The elements' bytes, writable ([`ArrayError::ReadOnly`] if attached read-only).
    pub fn bytes_mut(&mut self) -> Result<&mut [u8], ArrayError> {
        self.raw.bytes_mut()
    }

    /// The typed array, if its dtype is `T`'s.
    pub fn into_typed<T: Element>(self) -> Result<SharedArray<T>, ArrayError> {
        if self.raw.dtype() != T::DTYPE {
            return Err(ArrayError::WrongDtype {
                name: self.raw.label().to_owned(),
                expected: T::DTYPE,
                found: self.raw.dtype(),
            });
        }
        if self.raw.is_read_only() {
            return Err(ArrayError::ReadOnly(self.raw.label().to_owned()));
        }
        Ok(SharedArray {
            raw: self.raw,
            _t: PhantomData,
        })
    }
}

/// Every named array in `/dev/shm`, with dtype, shape and lifetime.
///
/// ```
/// # let name = format!("doc-arraylist-{}", std::process::id());
/// let _a = shmbus::SharedArray::<u8>::options().scoped().create(&name, &[10, 10])?;
/// let all = shmbus::array::list()?;
/// let mine = all.iter().find(|a| a.name.as_str() == name).unwrap();
/// assert_eq!(mine.shape, vec![10, 10]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn list() -> std::io::Result<Vec<ArrayInfo>> {
    raw::list()
}

/// Removes the array `name` (a shm name or `file://` path). Existing attachments stay valid;
/// the memory is freed when the last of them is dropped.
pub fn delete(name: &str) -> Result<(), ArrayError> {
    raw::delete(&location(name)?)
}
