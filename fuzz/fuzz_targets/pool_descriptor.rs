//! Array-topic block descriptors: what a subscriber decides of a slot before it forms a pointer
//! into a publisher's pool segment (`PoolSubscriber::resolve`, `PoolSegment::open`).
//!
//! Input: the slot (`DESCRIPTOR_SIZE` bytes, or all of the input when shorter), then the pool
//! segment's metadata (zero-filled), its payload length (8 bytes, little-endian; 0 when
//! missing) and its generation table (8 bytes a block).
//!
//! Checks: nothing panics; a resolved descriptor names a segment under the topic's own pool
//! names, a block inside the segment whose bytes lie inside the payload after the generation
//! table, a length inside the block that is the bytes of its dtype and shape, and the block's
//! current generation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmbus_core::fuzzing::{self, GENERATIONS_OFFSET, POOL_META_SIZE};
use shmbus_core::pool::{DESCRIPTOR_SIZE, MAX_BLOCK_NDIM, MAX_POOL_SEGMENTS};

fuzz_target!(|data: &[u8]| {
    let (slot, rest) = data.split_at(data.len().min(DESCRIPTOR_SIZE));
    let (meta, rest) = rest.split_at(rest.len().min(POOL_META_SIZE));
    let (len, rest) = rest.split_at(rest.len().min(8));
    let mut len_bytes = [0u8; 8];
    len_bytes[..len.len()].copy_from_slice(len);
    let Ok(payload_len) = usize::try_from(u64::from_le_bytes(len_bytes)) else {
        return;
    };
    let generations: Vec<u64> = rest
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();

    let r = match fuzzing::resolve_descriptor(slot, meta, payload_len, &generations) {
        Ok(r) => r,
        Err(reason) => {
            assert!(!reason.is_empty());
            return;
        }
    };
    let d = &r.desc;
    // The segment: named from the descriptor's numbers, under the topic's pool.
    assert!(d.segment < MAX_POOL_SEGMENTS);
    let expected = format!("{}.pool.{:016x}.{}", fuzzing::TOPIC, d.pool_id, d.segment);
    assert_eq!(r.segment_name.as_str(), expected);
    // The block: in range, whole pages, after the generation table, inside the payload.
    assert!(r.block_count > 0 && d.block < r.block_count);
    assert!(r.block_size > 0 && r.block_size % 4096 == 0);
    let table_end = GENERATIONS_OFFSET + 8 * r.block_count as usize;
    assert!(table_end <= r.data_offset && r.data_offset % 4096 == 0);
    let start = (d.block as usize)
        .checked_mul(r.block_size)
        .and_then(|o| o.checked_add(r.data_offset))
        .expect("block offset overflows");
    let end = start
        .checked_add(r.block_size)
        .expect("block end overflows");
    assert!(end <= payload_len, "block past the payload");
    // The array: its length is its dtype and shape's, inside the block.
    let len = usize::try_from(d.len).unwrap();
    assert!(len <= r.block_size);
    let shape = r.shape.as_slice();
    assert!(shape.len() <= MAX_BLOCK_NDIM && shape.len() == d.ndim as usize);
    let elems = shape
        .iter()
        .try_fold(1usize, |a, &x| a.checked_mul(x))
        .unwrap();
    assert_eq!(elems.checked_mul(r.dtype.itemsize()), Some(len));
    // The generation: the block's current one.
    assert_eq!(
        generations.get(d.block as usize).copied().unwrap_or(0),
        d.generation
    );
    assert!(slot.len() >= size_of::<shmbus_core::pool::BlockDescriptor>());
});
