//! One pool segment: its metadata, generation table and blocks.

#[allow(unused_imports)]
use super::*;

/// One pool segment, mapped.
#[derive(Debug)]
pub struct PoolSegment {
    pub(crate) seg: Segment,
    pub(crate) pool_id: u64,
    pub(crate) index: u32,
    pub(crate) block_count: u32,
    pub(crate) block_size: usize,
    pub(crate) data_offset: usize,
    /// A subscriber's shared lease saying "mapped here".
    pub(crate) _mapper: Option<Lease>,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolMeta {
    pub(crate) pool_id: u64,
    pub(crate) index: u32,
    pub(crate) block_count: u32,
    pub(crate) block_size: u64,
    pub(crate) data_offset: u64,
}

const _: () = assert!(size_of::<PoolMeta>() <= GENERATIONS_OFFSET);

/// Where a pool segment's blocks lie, from its validated [`PoolMeta`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockLayout {
    pub(crate) block_count: u32,
    pub(crate) block_size: usize,
    pub(crate) data_offset: usize,
}

impl PoolMeta {
    /// Checks a copy of a segment's metadata against the pool and index the descriptor names
    /// and against the payload's length `len`: at least one block of whole pages, the
    /// generation table before `data_offset`, every block inside the payload.
    pub(crate) fn validate(
        &self,
        pool_id: u64,
        index: u32,
        len: usize,
    ) -> Result<BlockLayout, String> {
        if len < GENERATIONS_OFFSET {
            return Err(format!("pool segment payload of {len} bytes"));
        }
        if self.pool_id != pool_id || self.index != index {
            return Err(format!(
                "segment says pool {:016x} segment {}, descriptor says {pool_id:016x} {index}",
                self.pool_id, self.index
            ));
        }
        let block_size = usize::try_from(self.block_size).map_err(|_| "block size".to_string())?;
        let fits = data_offset(self.block_count)
            .filter(|&o| o as u64 == self.data_offset)
            .and_then(|o| {
                block_size
                    .checked_mul(self.block_count as usize)?
                    .checked_add(o)
            })
            .is_some_and(|end| end <= len);
        if self.block_count == 0 || block_size == 0 || block_size % PAGE != 0 || !fits {
            return Err(format!(
                "{} blocks of {} bytes at {} do not fit a payload of {len} bytes",
                self.block_count, self.block_size, self.data_offset
            ));
        }
        Ok(BlockLayout {
            block_count: self.block_count,
            block_size,
            data_offset: self.data_offset as usize,
        })
    }
}

pub(crate) fn pool_type() -> TypeInfo {
    TypeInfo::new(POOL_TYPE, 0, PAGE as u64, Codec::Bytes).expect("short name")
}

pub(crate) fn data_offset(block_count: u32) -> Option<usize> {
    (block_count as usize)
        .checked_mul(8)?
        .checked_add(GENERATIONS_OFFSET)?
        .checked_next_multiple_of(PAGE)
}

/// The name of segment `index` of pool `pool_id` of `topic`.
pub fn segment_name(topic: &Name, pool_id: u64, index: u32) -> Result<Name, SegmentError> {
    topic
        .child(&format!("pool.{pool_id:016x}.{index}"))
        .map_err(|e| SegmentError::InvalidSize {
            name: topic.clone(),
            reason: format!("topic name too long for its pool segments: {e}"),
        })
}

impl PoolSegment {
    pub(crate) fn create(
        name: &Name,
        pool_id: u64,
        index: u32,
        block_size: usize,
        block_count: u32,
        mode: u32,
    ) -> Result<PoolSegment, SegmentError> {
        let too_big = || SegmentError::InvalidSize {
            name: name.clone(),
            reason: format!("{block_count} blocks of {block_size} bytes"),
        };
        let data_offset = data_offset(block_count).ok_or_else(too_big)?;
        let payload = block_size
            .checked_mul(block_count as usize)
            .and_then(|d| d.checked_add(data_offset))
            .ok_or_else(too_big)?;
        let mut opts = CreateOptions::new(Kind::Pool, pool_type(), payload);
        opts.mode = mode;
        use crate::wire::pool_param;
        opts.params[pool_param::POOL_ID] = pool_id;
        opts.params[pool_param::INDEX] = u64::from(index);
        opts.params[pool_param::BLOCK_SIZE] = block_size as u64;
        opts.params[pool_param::BLOCK_COUNT] = u64::from(block_count);
        let seg = Segment::create(name, &opts, |p| {
            let meta = PoolMeta {
                pool_id,
                index,
                block_count,
                block_size: block_size as u64,
                data_offset: data_offset as u64,
            };
            // SAFETY: the payload is page-aligned, zero-filled, at least GENERATIONS_OFFSET
            // bytes and ours alone (the segment has no name yet). The generation table is
            // zeroed memory, a valid array of atomics.
            unsafe { p.as_mut_ptr().cast::<PoolMeta>().write(meta) };
        })?;
        Ok(PoolSegment {
            seg,
            pool_id,
            index,
            block_count,
            block_size,
            data_offset,
            _mapper: None,
        })
    }

    /// Opens segment `index` of pool `pool_id` and checks that it says so and that its blocks
    /// fit in it.
    pub(crate) fn open(name: &Name, pool_id: u64, index: u32) -> Result<PoolSegment, String> {
        let expect = Expect {
            read_only: true,
            ..Expect::new(Kind::Pool, pool_type())
        };
        let seg = Segment::open(name, &expect).map_err(|e| e.to_string())?;
        let mapper = Lease::shared(seg.fd(), MAPPER_LEASE).map_err(|e| e.to_string())?;
        let len = seg.payload_len();
        if len < GENERATIONS_OFFSET {
            return Err(format!("pool segment payload of {len} bytes"));
        }
        // SAFETY: the payload is page-aligned and at least GENERATIONS_OFFSET >=
        // size_of::<PoolMeta>() bytes; PoolMeta is plain integers, written before the segment
        // was named, copied out here once (volatile: another process may write it).
        let meta =
            unsafe { std::ptr::read_volatile(seg.payload_ptr().cast::<PoolMeta>().as_ptr()) };
        let blocks = meta.validate(pool_id, index, len)?;
        Ok(PoolSegment {
            seg,
            pool_id,
            index,
            block_count: blocks.block_count,
            block_size: blocks.block_size,
            data_offset: blocks.data_offset,
            _mapper: Some(mapper),
        })
    }

    pub(crate) fn generation(&self, block: u32) -> &AtomicU64 {
        assert!(block < self.block_count, "block index out of range");
        // SAFETY: the table of `block_count` u64 words starts at GENERATIONS_OFFSET (8-aligned)
        // and ends before `data_offset`, inside the payload (checked at open/create); atomics
        // are the only access to it.
        unsafe {
            &*self
                .seg
                .payload_ptr()
                .add(GENERATIONS_OFFSET)
                .cast::<AtomicU64>()
                .as_ptr()
                .add(block as usize)
        }
    }

    pub(crate) fn block_ptr(&self, block: u32) -> NonNull<u8> {
        assert!(block < self.block_count, "block index out of range");
        // SAFETY: `data_offset + block_count * block_size <= payload_len` (checked at open and
        // by construction at create), so the block starts inside the payload.
        unsafe {
            self.seg
                .payload_ptr()
                .add(self.data_offset + block as usize * self.block_size)
        }
    }

    /// Whether another process has the segment mapped (holds a mapper lease on it).
    pub(crate) fn used_by_others(&self) -> bool {
        liveness::is_held(self.seg.fd(), MAPPER_LEASE).unwrap_or(true)
    }

    /// Bytes of each block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }
}
