//! Entry points over plain bytes for the fuzz targets in `fuzz/` (feature `fuzzing`; not an
//! API). Each runs the production validation code on bytes that would otherwise only be
//! reached by mapping a real segment: the header checks of an opener and of `peek`, and the
//! resolution of an array topic's block descriptor against a pool segment's metadata. Nothing
//! here re-implements a check; the callers assert the invariants of what passes.

use std::ptr::NonNull;

use crate::dtype::Dtype;
use crate::name::Name;
use crate::pool::{check_block, read_descriptor, BlockDescriptor, PoolMeta, Shape};
use crate::queue::QueueLayout;
use crate::ring::{Ring, RingHeader, RingLayout};
use crate::segment::{Expect, Header, HeaderSnapshot, SegmentError, SegmentInfo};
use crate::wire::HEADER_SIZE;

/// The name the entry points give the segments they check.
pub const NAME: &str = "fuzz.segment";

fn name() -> Name {
    Name::new(NAME).expect("a valid name")
}

/// One page, aligned like the start of a mapping.
#[repr(C, align(4096))]
struct Page([u8; HEADER_SIZE]);

/// `bytes` (zero-filled, or cut, to [`HEADER_SIZE`]) as a header page, copied out with the
/// opener's own volatile read.
fn header_of(bytes: &[u8]) -> Header {
    let mut page = Box::new(Page([0; HEADER_SIZE]));
    let n = bytes.len().min(HEADER_SIZE);
    page.0[..n].copy_from_slice(&bytes[..n]);
    let ptr = NonNull::from(&mut page.0).cast::<u8>();
    // SAFETY: `ptr` points to HEADER_SIZE readable bytes, page-aligned, alive for the call.
    unsafe { Header::read(ptr) }
}

/// What an opener of a file of `file_len` bytes decides from the header `bytes`: the checks of
/// the first copy (magic, version, lifetime), the validation of the ready copy, then the
/// comparison with `expect` (its `timeout` and `read_only` are not used).
pub fn open_header(
    bytes: &[u8],
    file_len: usize,
    expect: &Expect,
) -> Result<HeaderSnapshot, SegmentError> {
    let name = name();
    let h = header_of(bytes);
    let lifetime = h.opening_lifetime(&name)?;
    let snapshot = h.validate(&name, Some(file_len))?;
    snapshot.check_expected(&name, lifetime, expect)?;
    Ok(snapshot)
}

/// What `segment::peek` (the tools' `ls` and `inspect`) reports of the header `bytes`.
pub fn peek_header(bytes: &[u8], in_use: bool) -> Result<SegmentInfo, SegmentError> {
    crate::segment::info_from(&name(), &header_of(bytes), in_use)
}

/// The ring layout a topic opener derives from the ring header `ring` (zero-filled to its
/// size) at the start of a ring part of `ring_len` bytes (`Ring::read_layout`, as
/// `RawTopic::open` calls it).
pub fn ring_layout(ring: &[u8], ring_len: usize) -> Result<RingLayout, String> {
    // 128-aligned, as the ring part of a payload is.
    #[repr(C, align(128))]
    #[derive(Clone, Copy)]
    struct Line([u8; 128]);
    let len = ring_len.max(size_of::<RingHeader>());
    let mut buf = vec![Line([0; 128]); len.div_ceil(128)];
    // SAFETY: `buf` holds `len.div_ceil(128) * 128 >= len` initialised bytes; viewing them as
    // bytes is sound (`Line` is a byte array).
    let bytes = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), len) };
    let n = ring.len().min(size_of::<RingHeader>());
    bytes[..n].copy_from_slice(&ring[..n]);
    let base = NonNull::from(&mut bytes[0]);
    // SAFETY: `base` points to `len >= ring_len` readable bytes, 128-aligned, alive for the
    // call.
    unsafe { Ring::read_layout(base, ring_len) }.map_err(|e| e.0)
}

/// Bytes of a topic's ring header.
pub const RING_HEADER_SIZE: usize = size_of::<RingHeader>();

/// The queue layout a queue opener derives from a header's `params` and its payload length.
pub fn queue_layout(params: &[u64; 8], payload_len: usize) -> Result<QueueLayout, String> {
    QueueLayout::from_header(params, payload_len)
}

/// The topic whose pool segments [`resolve_descriptor`] names.
pub const TOPIC: &str = "fuzz.topic";

/// A descriptor that resolved to a block, and the segment layout it was checked against.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The descriptor, as copied out of the slot.
    pub desc: BlockDescriptor,
    /// Its dtype.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Shape,
    /// The pool segment's name, derived from the descriptor's numbers.
    pub segment_name: Name,
    /// Blocks in the segment.
    pub block_count: u32,
    /// Bytes per block.
    pub block_size: usize,
    /// Payload offset of the first block.
    pub data_offset: usize,
}

/// What a subscriber of an array topic decides of the slot `slot` when the pool segment it
/// names has a payload of `payload_len` bytes that starts with the metadata `meta` (zero-filled
/// to its size) and whose block `b` is at generation `generations[b]` (0 past the end): the
/// descriptor's own checks, the segment's name, the metadata's checks, then the block's.
pub fn resolve_descriptor(
    slot: &[u8],
    meta: &[u8],
    payload_len: usize,
    generations: &[u64],
) -> Result<Resolved, String> {
    let (desc, dtype, shape) = read_descriptor(slot)?;
    let topic = Name::new(TOPIC).expect("a valid name");
    let segment_name =
        crate::pool::segment_name(&topic, desc.pool_id, desc.segment).map_err(|e| e.to_string())?;
    let mut raw = [0u8; size_of::<PoolMeta>()];
    let n = meta.len().min(raw.len());
    raw[..n].copy_from_slice(&meta[..n]);
    // SAFETY: `raw` holds size_of::<PoolMeta>() bytes; PoolMeta is `repr(C)` integers, so any
    // bytes are a value; the read is unaligned.
    let meta = unsafe { raw.as_ptr().cast::<PoolMeta>().read_unaligned() };
    let blocks = meta.validate(desc.pool_id, desc.segment, payload_len)?;
    check_block(&desc, blocks.block_count, blocks.block_size, |b| {
        generations.get(b as usize).copied().unwrap_or(0)
    })?;
    Ok(Resolved {
        desc,
        dtype,
        shape,
        segment_name,
        block_count: blocks.block_count,
        block_size: blocks.block_size,
        data_offset: blocks.data_offset,
    })
}

// PoolMeta is integers without padding: any bytes of its size are a value.
const _: () = assert!(size_of::<PoolMeta>() == 32);

/// Bytes of a pool segment's metadata at the start of its payload.
pub const POOL_META_SIZE: usize = size_of::<PoolMeta>();

/// Offset of a pool segment's generation table in its payload.
pub const GENERATIONS_OFFSET: usize = crate::pool::GENERATIONS_OFFSET;

/// The metadata bytes a publisher writes for a segment of `block_count` blocks of
/// `block_size` bytes (for seeds), and the payload length it creates; `None` if that does not
/// fit this machine.
pub fn pool_meta(
    pool_id: u64,
    index: u32,
    block_count: u32,
    block_size: usize,
) -> Option<(Vec<u8>, usize)> {
    let data_offset = crate::pool::data_offset(block_count)?;
    let payload = block_size
        .checked_mul(block_count as usize)?
        .checked_add(data_offset)?;
    let meta = PoolMeta {
        pool_id,
        index,
        block_count,
        block_size: block_size as u64,
        data_offset: data_offset as u64,
    };
    let mut out = vec![0u8; POOL_META_SIZE];
    // SAFETY: `out` holds size_of::<PoolMeta>() bytes; the write is unaligned.
    unsafe { out.as_mut_ptr().cast::<PoolMeta>().write_unaligned(meta) };
    Some((out, payload))
}
