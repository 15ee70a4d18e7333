//! Array-queue items: what a consumer decides of a slot of an `ArrayQueue`
//! (`ArrayItemLayout::from_slot`, `ArrayItemLayout::read`).
//!
//! Input: the metadata size (2 bytes, little-endian), the slot index (4 bytes), then the slot.
//!
//! Checks: nothing panics; an item that reads has its array and metadata inside the slot, in
//! their places, not overlapping the descriptor or each other; its array's length is its dtype
//! and shape's; and the producer's own writer (`prepare`) lays out the same dtype and shape in
//! a fresh slot of the same size as an item that reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmbus_core::pool::DESCRIPTOR_SIZE;
use shmbus_core::queue::array::ArrayItemLayout;

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let meta_size = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let index = u32::from_le_bytes(data[2..6].try_into().unwrap());
    let slot = &data[6..];
    let Some(layout) = ArrayItemLayout::from_slot(meta_size, slot.len()) else {
        assert!((DESCRIPTOR_SIZE + meta_size).next_multiple_of(64) > slot.len());
        return;
    };
    assert!(layout.data_offset % 64 == 0 && layout.data_offset >= DESCRIPTOR_SIZE + meta_size);
    assert_eq!(layout.slot_size(), Some(slot.len()));
    let item = match layout.read(slot, index) {
        Ok(item) => item,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert!(item.data.start <= item.data.end && item.data.end <= slot.len());
    assert!(item.meta.start == DESCRIPTOR_SIZE && item.meta.end <= item.data.start);
    assert_eq!(item.meta.len(), meta_size);
    let elems = item
        .shape
        .as_slice()
        .iter()
        .try_fold(1usize, |a, &x| a.checked_mul(x))
        .unwrap();
    assert_eq!(elems * item.dtype.itemsize(), item.data.len());

    let mut fresh = vec![0u8; slot.len()];
    let (array, meta) = layout
        .prepare(&mut fresh, index, item.dtype, item.shape.as_slice())
        .expect("the writer refuses an item the reader accepts");
    assert_eq!((array.len(), meta.len()), (item.data.len(), meta_size));
    let again = layout.read(&fresh, index).expect("a written item reads");
    assert_eq!((again.dtype, again.shape), (item.dtype, item.shape));
    assert_eq!((again.data, again.meta), (item.data, item.meta));
});
