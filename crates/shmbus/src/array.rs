//! Named N-dimensional arrays in shared memory, attached by name from any process.

use std::fmt;
use std::marker::PhantomData;
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
/// One process creates it; any process attaches it by name and gets the same memory (nothing
/// is copied). The header records the dtype and shape, so attaching with another element type
/// is an [`ArrayError::WrongDtype`].
///
/// Arrays are persistent by default: they stay until [`delete`], which removes the name while
/// every existing attachment stays valid.
///
/// # Access: safe copies, or unsafe slices
///
/// Every other attachment, in this process or another, may write the array at any moment, so a
/// safe `&[T]` into it cannot exist. Two ways in:
///
/// - **Safe**: [`get`](Self::get), [`set`](Self::set), [`read_at`](Self::read_at),
///   [`write_at`](Self::write_at), [`to_vec`](Self::to_vec) copy with atomic loads and stores,
///   so a concurrent writer yields stale or mixed values, never undefined behaviour.
/// - **In place**: [`as_slice`](Self::as_slice) and [`as_mut_slice`](Self::as_mut_slice) are
///   `unsafe`: the caller promises that nobody writes (respectively touches) the array while
///   the slice lives, typically because the processes take turns through a
///   [`Mutex`](crate::Mutex), an [`Event`](crate::Event) or a topic (as `memmap2` makes mapping a
///   file that others may change `unsafe`).
///
/// # Examples
///
/// ```
/// use shmbus::SharedArray;
///
/// # let name = format!("doc-array-{}", std::process::id());
/// let a = SharedArray::<f32>::create(&name, &[2, 3])?;
/// a.set(4, 1.5)?;
///
/// // Any other process:
/// let b = SharedArray::<f32>::attach(&name)?;
/// assert_eq!(b.shape(), &[2, 3]);
/// assert_eq!(b.get(4), Some(1.5));
///
/// // In place, when no one else writes meanwhile (here: nobody does).
/// // SAFETY: no other handle writes the array while `elements` lives.
/// let elements = unsafe { b.as_slice() };
/// assert_eq!(elements[4], 1.5);
///
/// // A wrong element type is refused, naming both.
/// assert!(matches!(SharedArray::<u8>::attach(&name),
///                  Err(shmbus::ArrayError::WrongDtype { .. })));
/// shmbus::array::delete(&name)?; // `a` and `b` stay valid until dropped
/// assert_eq!(b.to_vec()[4], 1.5);
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

/// Element-wise safe access shared by [`SharedArray`] and [`ReadOnlyArray`].
fn elements<T: Element>(raw: &RawArray) -> usize {
    raw.len_bytes() / size_of::<T>()
}

fn read_at<T: Element>(raw: &RawArray, index: usize, dst: &mut [T]) -> Result<(), ArrayError> {
    let offset = index
        .checked_mul(size_of::<T>())
        .ok_or_else(|| out_of_bounds(raw, index))?;
    raw.read_into(offset, bytemuck::cast_slice_mut(dst))
}

fn out_of_bounds(raw: &RawArray, index: usize) -> ArrayError {
    ArrayError::OutOfBounds {
        name: raw.label().to_owned(),
        offset: index,
        len: 1,
        size: raw.len_bytes(),
    }
}

fn get<T: Element>(raw: &RawArray, index: usize) -> Option<T> {
    let mut v = [T::zeroed()];
    read_at(raw, index, &mut v).ok().map(|()| v[0])
}

fn to_vec<T: Element>(raw: &RawArray) -> Vec<T> {
    let mut v = vec![T::zeroed(); elements::<T>(raw)];
    read_at(raw, 0, &mut v).expect("the whole array is in bounds");
    v
}

/// The elements in place, for the `unsafe` accessors.
///
/// # Safety
///
/// As for [`RawArray::bytes`].
#[allow(unsafe_code)]
unsafe fn typed<T: Element>(raw: &RawArray) -> &[T] {
    // SAFETY: the caller promises no writer while the slice lives.
    let bytes = unsafe { raw.bytes() };
    // The data is page-aligned and `byte_len` is a whole number of `T` (its dtype is T's).
    bytemuck::try_cast_slice(bytes).expect("page-aligned data of T's dtype")
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

    /// The number of elements (the product of the shape).
    pub fn len(&self) -> usize {
        elements::<T>(&self.raw)
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `index` (C order), copied out; `None` past the end.
    pub fn get(&self, index: usize) -> Option<T> {
        get(&self.raw, index)
    }

    /// Writes element `index` (C order); [`ArrayError::OutOfBounds`] past the end.
    pub fn set(&self, index: usize, value: T) -> Result<(), ArrayError> {
        self.write_at(index, &[value])
    }

    /// Copies `dst.len()` elements starting at element `index` out of the array.
    pub fn read_at(&self, index: usize, dst: &mut [T]) -> Result<(), ArrayError> {
        read_at(&self.raw, index, dst)
    }

    /// Copies `src` into the array starting at element `index`.
    pub fn write_at(&self, index: usize, src: &[T]) -> Result<(), ArrayError> {
        let offset = index
            .checked_mul(size_of::<T>())
            .ok_or_else(|| out_of_bounds(&self.raw, index))?;
        self.raw.write_from(offset, bytemuck::cast_slice(src))
    }

    /// A copy of every element.
    pub fn to_vec(&self) -> Vec<T> {
        to_vec(&self.raw)
    }

    /// Sets every element to `value`.
    pub fn fill(&self, value: T) {
        let chunk = vec![value; (64 * 1024 / size_of::<T>()).max(1)];
        let mut at = 0;
        while at < self.len() {
            let n = chunk.len().min(self.len() - at);
            self.write_at(at, &chunk[..n])
                .expect("in bounds, and a SharedArray is writable");
            at += n;
        }
    }

    /// The elements, in place.
    ///
    /// # Safety
    ///
    /// Nobody writes the array while the slice lives: no other handle of this process (another
    /// attachment of the same name, [`SharedArray::set`]/[`write_at`](Self::write_at) on any
    /// handle) and no other process. Processes that take turns through a lock, an event or a
    /// topic meet this; otherwise use the copying methods.
    #[allow(unsafe_code)]
    pub unsafe fn as_slice(&self) -> &[T] {
        // SAFETY: forwarded to the caller.
        unsafe { typed(&self.raw) }
    }

    /// The elements, in place, writable.
    ///
    /// # Safety
    ///
    /// Nobody else reads or writes the array while the slice lives: no other handle of this
    /// process and no other process.
    #[allow(unsafe_code)]
    pub unsafe fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: forwarded to the caller; the attachment is read-write (a `SharedArray` is
        // never made from a read-only one).
        let bytes = unsafe { self.raw.bytes_mut() }.expect("attached read-write");
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

    /// The number of elements.
    pub fn len(&self) -> usize {
        elements::<T>(&self.raw)
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `index` (C order), copied out; `None` past the end.
    pub fn get(&self, index: usize) -> Option<T> {
        get(&self.raw, index)
    }

    /// Copies `dst.len()` elements starting at element `index` out of the array.
    pub fn read_at(&self, index: usize, dst: &mut [T]) -> Result<(), ArrayError> {
        read_at(&self.raw, index, dst)
    }

    /// A copy of every element.
    pub fn to_vec(&self) -> Vec<T> {
        to_vec(&self.raw)
    }

    /// The elements, in place.
    ///
    /// # Safety
    ///
    /// As for [`SharedArray::as_slice`]: nobody writes the array while the slice lives.
    #[allow(unsafe_code)]
    pub unsafe fn as_slice(&self) -> &[T] {
        // SAFETY: forwarded to the caller.
        unsafe { typed(&self.raw) }
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
/// assert_eq!(any.len_bytes(), 8);
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

    /// The number of element bytes.
    pub fn len_bytes(&self) -> usize {
        self.raw.len_bytes()
    }

    /// Copies `dst.len()` bytes starting at byte `offset` out of the array (safe whatever
    /// others write meanwhile; see [`SharedArray`]).
    pub fn read_into(&self, offset: usize, dst: &mut [u8]) -> Result<(), ArrayError> {
        self.raw.read_into(offset, dst)
    }

    /// Copies `src` into the array at byte `offset` ([`ArrayError::ReadOnly`] if attached
    /// read-only).
    pub fn write_from(&self, offset: usize, src: &[u8]) -> Result<(), ArrayError> {
        self.raw.write_from(offset, src)
    }

    /// The elements' bytes, in place.
    ///
    /// # Safety
    ///
    /// As for [`SharedArray::as_slice`]: nobody writes the array while the slice lives.
    #[allow(unsafe_code)]
    pub unsafe fn bytes(&self) -> &[u8] {
        // SAFETY: forwarded to the caller.
        unsafe { self.raw.bytes() }
    }

    /// The elements' bytes, writable in place ([`ArrayError::ReadOnly`] if attached
    /// read-only).
    ///
    /// # Safety
    ///
    /// As for [`SharedArray::as_mut_slice`]: nobody else touches the array while it lives.
    #[allow(unsafe_code)]
    pub unsafe fn bytes_mut(&mut self) -> Result<&mut [u8], ArrayError> {
        // SAFETY: forwarded to the caller.
        unsafe { self.raw.bytes_mut() }
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
