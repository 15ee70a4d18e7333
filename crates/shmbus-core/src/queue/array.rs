//! Array items: a queue whose slots are the blocks of N-d arrays.
//!
//! An array queue is a plain queue whose every slot is laid out as
//!
//! ```text
//! 0                      DESCRIPTOR_SIZE        data_offset                       slot_size
//! | BlockDescriptor ...  | metadata (meta_size) | array bytes (up to max_bytes) ... |
//! ```
//!
//! The descriptor (the one array topics use, with `block` = the slot and the pool fields 0)
//! gives the dtype, shape and length; the array follows at a 64-byte aligned offset. So the
//! queue is its own pool: a slot's block is the producer's between reserve and commit and the
//! consumer's between take and finish, and goes back with the slot, also when either dies
//! (the queue reclaims the slot). See `docs/decisions.md` for why the blocks are not a
//! producer's pool as in array topics.

use crate::dtype::{byte_len, Dtype};
use crate::pool::{BlockDescriptor, Shape, DESCRIPTOR_MAGIC, DESCRIPTOR_SIZE, MAX_BLOCK_NDIM};
use crate::wire::queue::SLOT_ALIGN;

/// Where the parts of an array item lie in its slot. Computed with checked arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrayItemLayout {
    /// Bytes of metadata after the descriptor.
    pub meta_size: usize,
    /// Offset of the array bytes (a multiple of 64).
    pub data_offset: usize,
    /// Most array bytes an item holds.
    pub max_bytes: usize,
}

impl ArrayItemLayout {
    /// Bytes of the fixed part of a slot (descriptor and metadata): the queue's item size.
    pub fn header_size(meta_size: usize) -> Option<usize> {
        DESCRIPTOR_SIZE.checked_add(meta_size)
    }

    /// The layout for arrays of up to `max_bytes` with `meta_size` bytes of metadata.
    pub fn new(meta_size: usize, max_bytes: usize) -> Option<ArrayItemLayout> {
        let data_offset = Self::header_size(meta_size)?.checked_next_multiple_of(SLOT_ALIGN)?;
        let layout = ArrayItemLayout {
            meta_size,
            data_offset,
            max_bytes: max_bytes.checked_next_multiple_of(SLOT_ALIGN)?,
        };
        u32::try_from(layout.slot_size()?).ok()?;
        Some(layout)
    }

    /// The layout of an existing queue's slots of `slot_size` bytes, or `None` if they cannot
    /// hold the descriptor and metadata.
    pub fn from_slot(meta_size: usize, slot_size: usize) -> Option<ArrayItemLayout> {
        let data_offset = Self::header_size(meta_size)?.checked_next_multiple_of(SLOT_ALIGN)?;
        Some(ArrayItemLayout {
            meta_size,
            data_offset,
            max_bytes: slot_size.checked_sub(data_offset)?,
        })
    }

    /// Bytes per slot.
    pub fn slot_size(&self) -> Option<usize> {
        self.data_offset.checked_add(self.max_bytes)
    }

    /// Writes the descriptor of an array of `dtype` and `shape` into `slot` (the slot index is
    /// `index`) and returns the array's bytes, to be written in place, and the metadata's.
    pub fn prepare<'s>(
        &self,
        slot: &'s mut [u8],
        index: u32,
        dtype: Dtype,
        shape: &[usize],
    ) -> Result<(&'s mut [u8], &'s mut [u8]), ArrayItemError> {
        let len = self.check_shape(dtype, shape)?;
        let mut desc = BlockDescriptor {
            magic: DESCRIPTOR_MAGIC,
            dtype: dtype.code(),
            block: index,
            len: len as u64,
            ndim: shape.len() as u32,
            ..BlockDescriptor::default()
        };
        for (to, &d) in desc.shape.iter_mut().zip(shape) {
            *to = d as u64;
        }
        let end = self.data_offset + len;
        if slot.len() < end || !desc.write_to(slot) {
            return Err(ArrayItemError::Corrupt(format!(
                "a slot of {} bytes cannot hold {end}",
                slot.len()
            )));
        }
        let (head, data) = slot.split_at_mut(self.data_offset);
        let meta = &mut head[DESCRIPTOR_SIZE..DESCRIPTOR_SIZE + self.meta_size];
        Ok((&mut data[..len], meta))
    }

    /// The bytes `dtype` × `shape` needs, if they fit in an item.
    pub fn check_shape(&self, dtype: Dtype, shape: &[usize]) -> Result<usize, ArrayItemError> {
        let bad = |reason: String| ArrayItemError::Shape {
            shape: shape.to_vec(),
            dtype,
            reason,
        };
        if shape.len() > MAX_BLOCK_NDIM {
            return Err(bad(format!("at most {MAX_BLOCK_NDIM} dimensions")));
        }
        let len = byte_len(shape, dtype.itemsize()).ok_or_else(|| bad("too large".into()))?;
        if len > self.max_bytes {
            return Err(ArrayItemError::TooLarge {
                needed: len,
                max_bytes: self.max_bytes,
            });
        }
        Ok(len)
    }

    /// Reads and validates the descriptor of the item in `slot` (slot index `index`): its
    /// dtype, shape and the ranges of its array and metadata bytes in the slot. The descriptor
    /// is copied once; everything returned is derived from the copy.
    pub fn read(&self, slot: &[u8], index: u32) -> Result<ArrayItem, ArrayItemError> {
        let desc = BlockDescriptor::read_from(slot).ok_or_else(|| {
            ArrayItemError::Corrupt(format!("a slot of {} bytes has no descriptor", slot.len()))
        })?;
        let (dtype, shape) = desc.array().map_err(ArrayItemError::Corrupt)?;
        if desc.block != index {
            return Err(ArrayItemError::Corrupt(format!(
                "the descriptor in slot {index} names slot {}",
                desc.block
            )));
        }
        // `array()` checked that `len` is the shape's bytes (so it fits in usize).
        let len = desc.len as usize;
        let fits = self
            .data_offset
            .checked_add(len)
            .is_some_and(|end| len <= self.max_bytes && end <= slot.len());
        if !fits {
            return Err(ArrayItemError::Corrupt(format!(
                "an array of {len} bytes in a slot that holds {}",
                self.max_bytes
            )));
        }
        Ok(ArrayItem {
            dtype,
            shape,
            data: self.data_offset..self.data_offset + len,
            meta: DESCRIPTOR_SIZE..DESCRIPTOR_SIZE + self.meta_size,
        })
    }
}

/// A validated array item: where its parts lie in its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayItem {
    /// The element type.
    pub dtype: Dtype,
    /// The shape.
    pub shape: Shape,
    /// The array's bytes in the slot.
    pub data: std::ops::Range<usize>,
    /// The metadata's bytes in the slot.
    pub meta: std::ops::Range<usize>,
}

/// Why an array item could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArrayItemError {
    /// The shape is not valid.
    #[error("invalid array shape {shape:?} of {dtype}: {reason}")]
    Shape {
        /// The shape.
        shape: Vec<usize>,
        /// The dtype.
        dtype: Dtype,
        /// What is wrong.
        reason: String,
    },
    /// The array is larger than the queue's items.
    #[error("an array of {needed} bytes does not fit in this queue's items of {max_bytes} bytes")]
    TooLarge {
        /// Bytes of the array.
        needed: usize,
        /// Most bytes an item holds.
        max_bytes: usize,
    },
    /// The item's descriptor is damaged (a peer wrote into the slot).
    #[error("corrupt array item: {0}")]
    Corrupt(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_round_trips_through_its_slot() {
        let l = ArrayItemLayout::new(16, 1000).unwrap();
        assert_eq!((l.data_offset, l.max_bytes), (192, 1024));
        let mut slot = vec![0u8; l.slot_size().unwrap()];
        let (data, meta) = l.prepare(&mut slot, 5, Dtype::U16, &[10, 50]).unwrap();
        assert_eq!((data.len(), meta.len()), (1000, 16));
        data.fill(3);
        meta.fill(9);
        let item = l.read(&slot, 5).unwrap();
        assert_eq!(
            (item.dtype, item.shape.as_slice()),
            (Dtype::U16, &[10, 50][..])
        );
        assert_eq!(item.data, 192..1192);
        assert!(slot[item.data].iter().all(|&b| b == 3));
        assert!(slot[item.meta].iter().all(|&b| b == 9));
        let opened = ArrayItemLayout::from_slot(16, slot.len()).unwrap();
        assert_eq!(opened, l);
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let l = ArrayItemLayout::new(0, 64).unwrap();
        let mut slot = vec![0u8; l.slot_size().unwrap()];
        assert!(matches!(
            l.prepare(&mut slot, 0, Dtype::F64, &[9]),
            Err(ArrayItemError::TooLarge { needed: 72, .. })
        ));
        assert!(matches!(
            l.prepare(&mut slot, 0, Dtype::U8, &[1; 9]),
            Err(ArrayItemError::Shape { .. })
        ));
        assert!(matches!(
            l.prepare(&mut slot, 0, Dtype::U8, &[usize::MAX, 2]),
            Err(ArrayItemError::Shape { .. })
        ));
        assert!(ArrayItemLayout::new(0, usize::MAX).is_none());
        assert!(ArrayItemLayout::from_slot(64, 128).is_none());
    }

    #[test]
    fn forged_descriptors_are_refused() {
        let l = ArrayItemLayout::new(0, 256).unwrap();
        let mut slot = vec![0u8; l.slot_size().unwrap()];
        l.prepare(&mut slot, 2, Dtype::U8, &[256]).unwrap();
        assert!(l.read(&slot, 3).is_err(), "another slot's descriptor");
        let mut d = BlockDescriptor::read_from(&slot).unwrap();
        for forge in [
            |d: &mut BlockDescriptor| d.magic ^= 1,
            |d: &mut BlockDescriptor| d.dtype = 999,
            |d: &mut BlockDescriptor| d.ndim = 40,
            |d: &mut BlockDescriptor| d.len += 1,
            |d: &mut BlockDescriptor| {
                d.shape[0] = 1 << 40;
                d.len = 1 << 40;
            },
        ] {
            let mut bad = d;
            forge(&mut bad);
            bad.write_to(&mut slot);
            assert!(
                matches!(l.read(&slot, 2), Err(ArrayItemError::Corrupt(_))),
                "{bad:?}"
            );
        }
        d.len = 256;
        d.write_to(&mut slot);
        assert!(l.read(&slot[..100], 2).is_err(), "a short slot");
        assert!(l.read(&slot, 2).is_ok());
    }
}
