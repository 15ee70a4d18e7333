//! The block descriptor at the start of an array topic's slot, and the inline shape.

#[allow(unused_imports)]
use super::*;

/// The descriptor at the start of a slot of an array topic. Plain integers; written by the
/// publisher, copied out and validated by every subscriber.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockDescriptor {
    /// [`DESCRIPTOR_MAGIC`].
    pub magic: u32,
    /// [`Dtype::code`] of the elements.
    pub dtype: u32,
    /// The publisher's pool (random, chosen when the publisher joins).
    pub pool_id: u64,
    /// Segment index within the pool.
    pub segment: u32,
    /// Block index within the segment.
    pub block: u32,
    /// The block's generation when it was loaned for this message.
    pub generation: u64,
    /// Bytes of the array.
    pub len: u64,
    /// Number of dimensions (0..=[`MAX_BLOCK_NDIM`]).
    pub ndim: u32,
    /// Zero.
    pub reserved: u32,
    /// Extent of each dimension; entries past `ndim` are 0.
    pub shape: [u64; MAX_BLOCK_NDIM],
}

const _: () = assert!(size_of::<BlockDescriptor>() <= DESCRIPTOR_SIZE);

/// The shape of a block's array: at most [`MAX_BLOCK_NDIM`] dimensions, stored inline (no
/// allocation per message).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    pub(crate) dims: [usize; MAX_BLOCK_NDIM],
    pub(crate) ndim: usize,
}

impl Shape {
    /// `dims` as a shape, if it has at most [`MAX_BLOCK_NDIM`] dimensions.
    pub fn new(dims: &[usize]) -> Option<Shape> {
        let mut shape = Shape {
            dims: [0; MAX_BLOCK_NDIM],
            ndim: dims.len(),
        };
        shape.dims.get_mut(..dims.len())?.copy_from_slice(dims);
        Some(shape)
    }

    /// The extent of each dimension.
    pub fn as_slice(&self) -> &[usize] {
        &self.dims[..self.ndim]
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_slice(), f)
    }
}

impl BlockDescriptor {
    /// The dtype and shape, if well formed (known dtype, at most [`MAX_BLOCK_NDIM`] dimensions
    /// that fit in `usize`, `len` equal to their bytes).
    pub fn array(&self) -> Result<(Dtype, Shape), String> {
        if self.magic != DESCRIPTOR_MAGIC {
            return Err(format!(
                "bad magic {:#x}: not a block descriptor",
                self.magic
            ));
        }
        let dtype =
            Dtype::from_code(self.dtype).ok_or_else(|| format!("unknown dtype {}", self.dtype))?;
        let ndim = self.ndim as usize;
        if ndim > MAX_BLOCK_NDIM {
            return Err(format!("{ndim} dimensions (at most {MAX_BLOCK_NDIM})"));
        }
        let mut shape = Shape {
            dims: [0; MAX_BLOCK_NDIM],
            ndim,
        };
        for (to, &d) in shape.dims.iter_mut().zip(&self.shape[..ndim]) {
            *to = usize::try_from(d).map_err(|_| format!("dimension {d} too large"))?;
        }
        match byte_len(shape.as_slice(), dtype.itemsize()) {
            Some(n) if n as u64 == self.len => Ok((dtype, shape)),
            _ => Err(format!(
                "length {} does not match shape {shape:?} of {dtype}",
                self.len
            )),
        }
    }
}

// Every field is an integer and the fields leave no padding, so any 112 bytes are a descriptor.
const _: () = assert!(size_of::<BlockDescriptor>() == 112);

impl BlockDescriptor {
    /// Copies a descriptor out of the first bytes of `bytes` (any bit pattern is a descriptor;
    /// validate it with [`array`](Self::array)), or `None` if `bytes` is too short.
    pub fn read_from(bytes: &[u8]) -> Option<BlockDescriptor> {
        if bytes.len() < size_of::<BlockDescriptor>() {
            return None;
        }
        // SAFETY: `bytes` has at least `size_of::<BlockDescriptor>()` readable bytes (checked
        // above); the struct is `repr(C)` integers without padding, so every bit pattern is a
        // valid value; the read is unaligned. The bytes are copied once, then only the copy is
        // validated and used (a peer writing them concurrently cannot change what was checked).
        Some(unsafe { bytes.as_ptr().cast::<BlockDescriptor>().read_unaligned() })
    }

    /// Writes the descriptor into the first bytes of `bytes`; `false` (and nothing written) if
    /// `bytes` is too short.
    pub fn write_to(&self, bytes: &mut [u8]) -> bool {
        if bytes.len() < size_of::<BlockDescriptor>() {
            return false;
        }
        // SAFETY: `bytes` has room for the struct (checked above) and is exclusively borrowed;
        // the write is unaligned.
        unsafe {
            bytes
                .as_mut_ptr()
                .cast::<BlockDescriptor>()
                .write_unaligned(*self)
        };
        true
    }
}
