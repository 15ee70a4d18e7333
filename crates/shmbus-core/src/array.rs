//! Named N-dimensional arrays: a segment holding an [`ArrayMeta`] and the elements.
//!
//! The payload of an array segment (kind [`Kind::Array`]) starts with an [`ArrayMeta`]
//! (dtype, shape, strides), and the elements follow at payload offset [`DATA_OFFSET`], one page
//! in, so that they are page-aligned. The segment header's type is the dtype's type string,
//! and its `params` hold `[dtype, ndim, shape[0..6]]` so tools can show an array without
//! mapping it.
//!
//! Arrays are [`Lifetime::Persistent`] unless created scoped: like SharedArray's, they outlive
//! every process until [`unlink`](crate::segment::unlink)ed, and removing the name leaves
//! existing mappings valid.

use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::Duration;

use crate::dtype::{byte_len, c_strides, Dtype};
use crate::layout::{Codec, TypeInfo};
use crate::name::{Name, NameError};
use crate::segment::{
    self, CreateOptions, Expect, Kind, Lifetime, Segment, SegmentError, DEFAULT_OPEN_TIMEOUT,
};
use crate::wire::array_param;

/// Most dimensions an array has (numpy's historical limit).
pub const MAX_NDIM: usize = 32;

/// Payload offset of the elements.
pub const DATA_OFFSET: usize = 4096;

/// Where an array lives.
///
/// # Examples
///
/// ```
/// use shmbus_core::array::Location;
/// use std::path::PathBuf;
///
/// assert!(matches!(Location::parse("frames").unwrap(), Location::Shm(n) if n.as_str() == "frames"));
/// assert!(matches!(Location::parse("shm://frames").unwrap(), Location::Shm(_)));
/// assert_eq!(Location::parse("file:///var/data/calib").unwrap(),
///            Location::File(PathBuf::from("/var/data/calib")));
/// assert!(Location::parse("shm://a/b").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A named segment in the shared-memory directory (tmpfs: gone at reboot).
    Shm(Name),
    /// A regular file, for data that must survive a reboot (see [`RawArray::flush`]).
    File(PathBuf),
}

impl Location {
    /// Parses SharedArray-style locations: `file://PATH` is a file, `shm://NAME` or a bare
    /// `NAME` a shared-memory segment.
    pub fn parse(s: &str) -> Result<Location, NameError> {
        if let Some(path) = s.strip_prefix("file://") {
            if path.is_empty() {
                return Err(NameError::Empty);
            }
            return Ok(Location::File(PathBuf::from(path)));
        }
        Name::new(s.strip_prefix("shm://").unwrap_or(s)).map(Location::Shm)
    }

    /// The name errors and logs use.
    pub fn label(&self) -> String {
        match self {
            Location::Shm(n) => n.to_string(),
            Location::File(p) => format!("file://{}", p.display()),
        }
    }
}

/// The array description at payload offset 0. Written once by the creator before the
/// segment is named; checked by every opener.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ArrayMeta {
    /// [`Dtype::code`].
    pub dtype: u32,
    /// Number of dimensions (0..=[`MAX_NDIM`]).
    pub ndim: u32,
    /// Bytes per element.
    pub itemsize: u64,
    /// Payload offset of the elements ([`DATA_OFFSET`]).
    pub data_offset: u64,
    /// Bytes of elements: the product of the shape times the item size.
    pub data_len: u64,
    /// 1: C order (row-major), the only order written today.
    pub order: u64,
    /// Extent of each dimension; entries past `ndim` are 0.
    pub shape: [u64; MAX_NDIM],
    /// Byte stride of each dimension; entries past `ndim` are 0.
    pub strides: [i64; MAX_NDIM],
}

const _: () = assert!(size_of::<ArrayMeta>() <= DATA_OFFSET);
const ORDER_C: u64 = 1;

/// Why an array could not be created, attached or used.
#[derive(Debug, thiserror::Error)]
pub enum ArrayError {
    /// The segment could not be created or opened.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// The name is not valid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The array holds another element type.
    #[error("{name:?} holds {found} elements, not {expected}")]
    WrongDtype {
        /// The array.
        name: String,
        /// The dtype asked for.
        expected: Dtype,
        /// The dtype found.
        found: Dtype,
    },
    /// The shape cannot be laid out (too many dimensions, or too many bytes).
    #[error("invalid shape {shape:?}: {reason}")]
    Shape {
        /// The shape given.
        shape: Vec<usize>,
        /// What is wrong with it.
        reason: String,
    },
    /// The array description in the segment is damaged.
    #[error("{name:?} has a corrupt array description: {reason}")]
    Corrupt {
        /// The array.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A write was attempted through a read-only attachment.
    #[error("{0:?} is attached read-only")]
    ReadOnly(String),
    /// A copy reached past the end of the array.
    #[error("{name:?}: {len} bytes at offset {offset} reach past its {size} bytes")]
    OutOfBounds {
        /// The array.
        name: String,
        /// The first byte asked for.
        offset: usize,
        /// Bytes asked for.
        len: usize,
        /// Bytes the array holds.
        size: usize,
    },
}

/// Copies `dst.len()` bytes from shared memory at `src` with relaxed atomic loads (8 bytes at a
/// time where aligned), so that a concurrent writer is no data race.
///
/// # Safety
///
/// `[src, src + dst.len())` is mapped and readable for the call.
unsafe fn copy_out(src: NonNull<u8>, dst: &mut [u8]) {
    use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
    let head = src.as_ptr().align_offset(8).min(dst.len());
    let (pre, rest) = dst.split_at_mut(head);
    for (i, b) in pre.iter_mut().enumerate() {
        // SAFETY: inside the caller's range; AtomicU8 has no alignment need.
        *b = unsafe { AtomicU8::from_ptr(src.as_ptr().add(i)) }.load(Relaxed);
    }
    let words = src.as_ptr().wrapping_add(head);
    let done = head + (rest.len() / 8) * 8;
    let mut chunks = rest.chunks_exact_mut(8);
    for (i, c) in chunks.by_ref().enumerate() {
        // SAFETY: `words` is 8-aligned and word `i` lies inside the caller's range.
        let w = unsafe { AtomicU64::from_ptr(words.cast::<u64>().add(i)) }.load(Relaxed);
        c.copy_from_slice(&w.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        // SAFETY: inside the caller's range.
        *b = unsafe { AtomicU8::from_ptr(src.as_ptr().add(done + i)) }.load(Relaxed);
    }
}

/// Copies `src` into shared memory at `dst` with relaxed atomic stores (see [`copy_out`]).
///
/// # Safety
///
/// `[dst, dst + src.len())` is mapped and writable for the call.
unsafe fn copy_in(dst: NonNull<u8>, src: &[u8]) {
    use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
    let head = dst.as_ptr().align_offset(8).min(src.len());
    let (pre, rest) = src.split_at(head);
    for (i, &b) in pre.iter().enumerate() {
        // SAFETY: inside the caller's range; AtomicU8 has no alignment need.
        unsafe { AtomicU8::from_ptr(dst.as_ptr().add(i)) }.store(b, Relaxed);
    }
    let words = dst.as_ptr().wrapping_add(head);
    let mut chunks = rest.chunks_exact(8);
    for (i, c) in chunks.by_ref().enumerate() {
        let w = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
        // SAFETY: `words` is 8-aligned and word `i` lies inside the caller's range.
        unsafe { AtomicU64::from_ptr(words.cast::<u64>().add(i)) }.store(w, Relaxed);
    }
    let done = head + (rest.len() / 8) * 8;
    for (i, &b) in chunks.remainder().iter().enumerate() {
        // SAFETY: inside the caller's range.
        unsafe { AtomicU8::from_ptr(dst.as_ptr().add(done + i)) }.store(b, Relaxed);
    }
}

/// What to create.
#[derive(Debug, Clone)]
pub struct ArraySpec {
    /// Element type.
    pub dtype: Dtype,
    /// Extent of each dimension.
    pub shape: Vec<usize>,
    /// How long the array lives ([`Lifetime::Persistent`] by default).
    pub lifetime: Lifetime,
    /// File mode (`0o600` by default).
    pub mode: u32,
}

impl ArraySpec {
    /// A persistent, private array.
    pub fn new(dtype: Dtype, shape: &[usize]) -> ArraySpec {
        ArraySpec {
            dtype,
            shape: shape.to_vec(),
            lifetime: Lifetime::Persistent,
            mode: 0o600,
        }
    }
}

/// The type description an array segment's header carries for `dtype`.
pub fn dtype_type_info(dtype: Dtype) -> TypeInfo {
    let size = dtype.itemsize() as u64;
    TypeInfo::new(dtype.typestr(), size, size.min(8), Codec::Pod).expect("type strings are short")
}

/// A mapped array.
#[derive(Debug)]
pub struct RawArray {
    seg: Segment,
    label: String,
    dtype: Dtype,
    shape: Vec<usize>,
    strides: Vec<usize>,
    data_len: usize,
}

fn shape_error(shape: &[usize], reason: &str) -> ArrayError {
    ArrayError::Shape {
        shape: shape.to_vec(),
        reason: reason.to_owned(),
    }
}

impl RawArray {
    /// Creates the array at `location` (zero-filled); fails if it exists.
    pub fn create(location: &Location, spec: &ArraySpec) -> Result<RawArray, ArrayError> {
        if spec.shape.len() > MAX_NDIM {
            return Err(shape_error(
                &spec.shape,
                &format!("more than {MAX_NDIM} dimensions"),
            ));
        }
        let itemsize = spec.dtype.itemsize();
        let data_len = byte_len(&spec.shape, itemsize)
            .ok_or_else(|| shape_error(&spec.shape, "too many bytes for this machine"))?;
        let payload = DATA_OFFSET
            .checked_add(data_len)
            .ok_or_else(|| shape_error(&spec.shape, "too many bytes for this machine"))?;
        let strides = c_strides(&spec.shape, itemsize);
        let mut params = [0u64; 8];
        params[array_param::DTYPE] = u64::from(spec.dtype.code());
        params[array_param::NDIM] = spec.shape.len() as u64;
        for (p, &d) in params[array_param::SHAPE..].iter_mut().zip(&spec.shape) {
            *p = d as u64;
        }
        let opts = CreateOptions {
            mode: spec.mode,
            lifetime: spec.lifetime,
            params,
            ..CreateOptions::new(Kind::Array, dtype_type_info(spec.dtype), payload)
        };
        let init = |p: &mut [u8]| {
            let mut meta = ArrayMeta {
                dtype: spec.dtype.code(),
                ndim: spec.shape.len() as u32,
                itemsize: itemsize as u64,
                data_offset: DATA_OFFSET as u64,
                data_len: data_len as u64,
                order: ORDER_C,
                shape: [0; MAX_NDIM],
                strides: [0; MAX_NDIM],
            };
            for (i, (&d, &s)) in spec.shape.iter().zip(&strides).enumerate() {
                meta.shape[i] = d as u64;
                meta.strides[i] = s as i64;
            }
            write_meta(p, &meta);
        };
        let seg = match location {
            Location::Shm(name) => Segment::create(name, &opts, init)?,
            Location::File(path) => Segment::create_file(path, &opts, init)?,
        };
        tracing::debug!(array = %location.label(), dtype = %spec.dtype, shape = ?spec.shape, "created array");
        Ok(RawArray {
            seg,
            label: location.label(),
            dtype: spec.dtype,
            shape: spec.shape.clone(),
            strides,
            data_len,
        })
    }

    /// Attaches the array at `location`. With `dtype` given, an array of another element type
    /// is an [`ArrayError::WrongDtype`]; with `None`, any dtype is accepted.
    pub fn open(
        location: &Location,
        dtype: Option<Dtype>,
        read_only: bool,
        timeout: Option<Duration>,
    ) -> Result<RawArray, ArrayError> {
        let expect = Expect {
            kind: Kind::Array,
            type_info: None,
            read_only,
            timeout: timeout.unwrap_or(DEFAULT_OPEN_TIMEOUT),
        };
        let seg = match location {
            Location::Shm(name) => Segment::open(name, &expect)?,
            Location::File(path) => Segment::open_file(path, &expect)?,
        };
        let label = location.label();
        let corrupt = |reason: String| ArrayError::Corrupt {
            name: label.clone(),
            reason,
        };
        let payload_len = seg.payload_len();
        if payload_len < DATA_OFFSET {
            return Err(corrupt(format!("payload of {payload_len} bytes")));
        }
        // SAFETY: the payload is at least DATA_OFFSET >= size_of::<ArrayMeta>() bytes and
        // page-aligned; ArrayMeta is plain integers (any bit pattern is valid); its fields are
        // written once before the segment is named, and copied out here once (volatile: another
        // process may be writing them; the copy is validated below).
        let meta: ArrayMeta =
            unsafe { std::ptr::read_volatile(seg.payload_ptr().cast::<ArrayMeta>().as_ptr()) };
        let found = Dtype::from_code(meta.dtype)
            .ok_or_else(|| corrupt(format!("unknown dtype code {}", meta.dtype)))?;
        let header_type = &seg.snapshot().type_info;
        if header_type.name != found.typestr() {
            return Err(corrupt(format!(
                "the header's type {:?} disagrees with dtype {found}",
                header_type.name
            )));
        }
        if let Some(expected) = dtype {
            if expected != found {
                return Err(ArrayError::WrongDtype {
                    name: label,
                    expected,
                    found,
                });
            }
        }
        let ndim = meta.ndim as usize;
        if ndim > MAX_NDIM {
            return Err(corrupt(format!("{ndim} dimensions")));
        }
        if meta.itemsize != found.itemsize() as u64 {
            return Err(corrupt(format!("item size {} for {found}", meta.itemsize)));
        }
        if meta.order != ORDER_C || meta.data_offset != DATA_OFFSET as u64 {
            return Err(corrupt(format!(
                "order {} / data offset {}",
                meta.order, meta.data_offset
            )));
        }
        let shape: Vec<usize> = meta.shape[..ndim]
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| corrupt("a dimension does not fit this machine".into()))?;
        let data_len = byte_len(&shape, found.itemsize())
            .ok_or_else(|| corrupt(format!("shape {shape:?} overflows")))?;
        if meta.data_len != data_len as u64 {
            return Err(corrupt(format!(
                "{} data bytes for shape {shape:?}",
                meta.data_len
            )));
        }
        if DATA_OFFSET + data_len > payload_len {
            return Err(corrupt(format!(
                "{data_len} data bytes do not fit in a payload of {payload_len}"
            )));
        }
        let strides = c_strides(&shape, found.itemsize());
        if strides
            .iter()
            .zip(&meta.strides[..ndim])
            .any(|(&a, &b)| a as i64 != b)
        {
            return Err(corrupt("strides are not C order".into()));
        }
        tracing::debug!(array = %label, dtype = %found, shape = ?shape, "attached array");
        Ok(RawArray {
            seg,
            label,
            dtype: found,
            shape,
            strides,
            data_len,
        })
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The extent of each dimension.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Byte strides (C order).
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Bytes of elements.
    pub fn byte_len(&self) -> usize {
        self.data_len
    }

    /// The location as text (for messages).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The segment.
    pub fn segment(&self) -> &Segment {
        &self.seg
    }

    /// Whether this attachment is read-only.
    pub fn is_read_only(&self) -> bool {
        self.seg.is_read_only()
    }

    fn data_ptr(&self) -> NonNull<u8> {
        // SAFETY: DATA_OFFSET + data_len <= payload length was checked at open (and holds by
        // construction at create), so the offset stays inside the mapping.
        unsafe { self.seg.payload_ptr().add(DATA_OFFSET) }
    }

    /// The number of element bytes.
    pub fn len_bytes(&self) -> usize {
        self.data_len
    }

    /// Start of the elements (page-aligned); valid for [`RawArray::len_bytes`] bytes while
    /// `self` lives. Reading or writing through it is the caller's to synchronise.
    pub fn data_ptr_raw(&self) -> NonNull<u8> {
        self.data_ptr()
    }

    /// The elements' bytes, in place.
    ///
    /// # Safety
    ///
    /// Nobody writes the array while the slice lives: no handle of this process (another
    /// attachment of the same name, [`RawArray::write_from`]) and no other process. Use
    /// [`RawArray::read_into`] where that cannot be promised.
    pub unsafe fn bytes(&self) -> &[u8] {
        // SAFETY: `[data_ptr, +data_len)` is inside the mapping that lives as long as `self`;
        // u8 has no invalid values and no alignment need; the caller promises no writer.
        unsafe { std::slice::from_raw_parts(self.data_ptr().as_ptr(), self.data_len) }
    }

    /// The elements' bytes, writable in place; [`ArrayError::ReadOnly`] for a read-only
    /// attachment.
    ///
    /// # Safety
    ///
    /// Nobody else reads or writes the array while the slice lives: no other handle of this
    /// process and no other process.
    pub unsafe fn bytes_mut(&mut self) -> Result<&mut [u8], ArrayError> {
        if self.seg.is_read_only() {
            return Err(ArrayError::ReadOnly(self.label.clone()));
        }
        // SAFETY: as in `bytes`; the mapping is writable (checked above), and the caller
        // promises this is the only access.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.data_ptr().as_ptr(), self.data_len) })
    }

    fn range(&self, offset: usize, len: usize) -> Result<(), ArrayError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.data_len => Ok(()),
            _ => Err(ArrayError::OutOfBounds {
                name: self.label.clone(),
                offset,
                len,
                size: self.data_len,
            }),
        }
    }

    /// Copies `dst.len()` bytes starting at byte `offset` out of the array. Safe whatever other
    /// handles and processes do meanwhile: the bytes are read with atomic loads, so a concurrent
    /// writer yields a mix of old and new values, never undefined behaviour.
    pub fn read_into(&self, offset: usize, dst: &mut [u8]) -> Result<(), ArrayError> {
        self.range(offset, dst.len())?;
        // SAFETY: the range was checked to lie inside the elements, which stay mapped while
        // `self` lives.
        unsafe { copy_out(self.data_ptr().add(offset), dst) };
        Ok(())
    }

    /// Copies `src` into the array at byte `offset`, with atomic stores (see
    /// [`RawArray::read_into`]); [`ArrayError::ReadOnly`] for a read-only attachment.
    pub fn write_from(&self, offset: usize, src: &[u8]) -> Result<(), ArrayError> {
        if self.seg.is_read_only() {
            return Err(ArrayError::ReadOnly(self.label.clone()));
        }
        self.range(offset, src.len())?;
        // SAFETY: as in `read_into`; the mapping is writable (checked above).
        unsafe { copy_in(self.data_ptr().add(offset), src) };
        Ok(())
    }

    /// Writes the array to its file (`msync`); meaningful for file-backed arrays.
    pub fn flush(&self) -> Result<(), ArrayError> {
        Ok(self.seg.flush()?)
    }

    /// Locks the array's pages in RAM (`mlock`).
    pub fn lock_memory(&self) -> Result<(), ArrayError> {
        Ok(self.seg.lock_memory()?)
    }

    /// Undoes [`RawArray::lock_memory`].
    pub fn unlock_memory(&self) -> Result<(), ArrayError> {
        Ok(self.seg.unlock_memory()?)
    }
}

fn write_meta(payload: &mut [u8], meta: &ArrayMeta) {
    assert!(payload.len() >= size_of::<ArrayMeta>());
    // SAFETY: the payload is page-aligned and at least size_of::<ArrayMeta>() bytes (asserted),
    // and exclusively ours (it is the creator's `init` slice).
    unsafe { payload.as_mut_ptr().cast::<ArrayMeta>().write(*meta) };
}

/// What [`list`] tells of an array.
#[derive(Debug, Clone)]
pub struct ArrayInfo {
    /// The name.
    pub name: Name,
    /// Element type.
    pub dtype: Dtype,
    /// Shape (the first six dimensions are in the header; more are read from the segment).
    pub shape: Vec<usize>,
    /// Lifetime.
    pub lifetime: Lifetime,
    /// File size in bytes.
    pub total_size: u64,
    /// Whether some process has it attached.
    pub in_use: bool,
}

/// Every named array in the shared-memory directory, sorted by name.
pub fn list() -> std::io::Result<Vec<ArrayInfo>> {
    let mut out = Vec::new();
    for name in segment::list()? {
        let Ok(info) = segment::peek(&name) else {
            continue;
        };
        if let Some(a) = array_info(info) {
            out.push(a);
        }
    }
    Ok(out)
}

/// The array view of a peeked segment, if it is a well-formed array.
pub fn array_info(info: segment::SegmentInfo) -> Option<ArrayInfo> {
    if info.kind != Kind::Array {
        return None;
    }
    let dtype = Dtype::from_code(u32::try_from(info.params[array_param::DTYPE]).ok()?)?;
    let ndim = usize::try_from(info.params[array_param::NDIM]).ok()?;
    let shape = if ndim <= 6 {
        info.params[array_param::SHAPE..array_param::SHAPE + ndim]
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<Vec<_>>>()?
    } else {
        RawArray::open(&Location::Shm(info.name.clone()), Some(dtype), true, None)
            .ok()?
            .shape
    };
    Some(ArrayInfo {
        name: info.name,
        dtype,
        shape,
        lifetime: info.lifetime,
        total_size: info.total_size,
        in_use: info.in_use,
    })
}

/// Removes the array's name (checking that it names an array). Processes that have it attached
/// keep a valid mapping; the memory is freed when the last of them detaches.
pub fn delete(location: &Location) -> Result<(), ArrayError> {
    match location {
        Location::Shm(name) => {
            let info = segment::peek(name)?;
            if info.kind != Kind::Array {
                return Err(SegmentError::WrongKind {
                    name: name.clone(),
                    expected: Kind::Array,
                    found: info.kind,
                }
                .into());
            }
            Ok(segment::unlink(name)?)
        }
        Location::File(path) => {
            // Check it is ours before removing a user's file.
            drop(RawArray::open(location, None, true, None)?);
            remove_file(path)
        }
    }
}

fn remove_file(path: &Path) -> Result<(), ArrayError> {
    std::fs::remove_file(path).map_err(|source| {
        SegmentError::Os {
            name: Name::label_for_path(path),
            op: "unlink",
            source,
        }
        .into()
    })
}
