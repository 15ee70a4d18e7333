//! The subscribing side: validating descriptors, mapping segments, holding blocks.

#[allow(unused_imports)]
use super::*;

/// A block held by a [`PoolSubscriber`]: read it in place; dropping it releases it.
pub struct HeldBlock<'a> {
    pub(crate) subscriber: &'a PoolSubscriber,
    pub(crate) held: Option<Held>,
    pub(crate) segment: Arc<PoolSegment>,
    pub(crate) desc: BlockDescriptor,
    pub(crate) dtype: Dtype,
    pub(crate) shape: Shape,
}

impl fmt::Debug for HeldBlock<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldBlock")
            .field("seq", &self.seq())
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .finish()
    }
}

impl HeldBlock<'_> {
    /// The message's sequence number.
    pub fn seq(&self) -> u64 {
        self.held.as_ref().map_or(0, Held::seq)
    }
    /// The descriptor, as validated.
    pub fn descriptor(&self) -> &BlockDescriptor {
        &self.desc
    }
    /// The array's dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        self.shape.as_slice()
    }
    /// The array's bytes, in place (page-aligned).
    pub fn bytes(&self) -> &[u8] {
        let p = self.segment.block_ptr(self.desc.block);
        // SAFETY: the descriptor was validated against the segment (block index in range,
        // `len <= block_size`, current generation); this subscriber holds the slot that names
        // the block, and the publisher reuses a block only once that slot is free, so nobody
        // writes it while `self` (which keeps the hold and, through `Arc`, the mapping) lives.
        unsafe { std::slice::from_raw_parts(p.as_ptr(), self.desc.len as usize) }
    }
    /// The publisher's metadata bytes after the descriptor in the slot.
    pub fn meta(&self) -> &[u8] {
        let held = self.held.as_ref().expect("held until drop");
        &self.subscriber.subscriber.slot(held)[DESCRIPTOR_SIZE..]
    }
}

/// A [`HeldBlock`] that no longer borrows its subscriber ([`HeldBlock::detach`]), for owners
/// that cannot express the borrow (language bindings keeping a sample in a heap object).
///
/// It keeps the pool segment mapped and the slot held; give it back with
/// [`PoolSubscriber::release_detached`] on the subscriber that received it. Until then the
/// block is never reused, provided that subscriber lives: a subscriber dropped first releases
/// its holds, and the block may then be rewritten (still mapped: a stale read, never a fault).
pub struct DetachedBlock {
    held: Held,
    segment: Arc<PoolSegment>,
    desc: BlockDescriptor,
    dtype: Dtype,
    shape: Shape,
}

impl fmt::Debug for DetachedBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetachedBlock")
            .field("seq", &self.held.seq())
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .finish()
    }
}

impl DetachedBlock {
    /// The message's sequence number.
    pub fn seq(&self) -> u64 {
        self.held.seq()
    }
    /// The array's dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        self.shape.as_slice()
    }
    /// Bytes of the array.
    pub fn len(&self) -> usize {
        self.desc.len as usize
    }
    /// Whether the array has no bytes.
    pub fn is_empty(&self) -> bool {
        self.desc.len == 0
    }
    /// The first byte of the array (page-aligned), mapped for `len()` bytes as long as `self`
    /// lives; nobody writes it while the receiving subscriber lives and `self` is not released.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.segment.block_ptr(self.desc.block)
    }
}

impl HeldBlock<'_> {
    /// Gives up the borrow of the subscriber, keeping the hold (see [`DetachedBlock`]). Also
    /// returns a copy of the publisher's metadata bytes.
    pub fn detach(mut self) -> (DetachedBlock, Vec<u8>) {
        let meta = self.meta().to_vec();
        let held = self.held.take().expect("held until drop");
        let block = DetachedBlock {
            held,
            segment: self.segment.clone(),
            desc: self.desc,
            dtype: self.dtype,
            shape: self.shape,
        };
        (block, meta)
    }
}

impl Drop for HeldBlock<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.held.take() {
            self.subscriber.subscriber.release(h);
        }
    }
}

/// What a [`PoolSubscriber`] receive found.
// Returned by value once per message: boxing the large variant would add the allocation per
// message that the inline `Shape` exists to avoid.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum BlockReceived<'a> {
    /// An array.
    Block(HeldBlock<'a>),
    /// Nothing new (or the timeout passed).
    Empty,
    /// `n` messages were missed.
    Lagged(u64),
    /// The publisher is gone and everything was read.
    Disconnected,
}

/// Why a [`PoolSubscriber`] receive failed.
#[derive(Debug, thiserror::Error)]
pub enum BlockReceiveError {
    /// The topic failed.
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    /// The message's descriptor was refused; the message was dropped and the next receive goes
    /// on with the one after it.
    #[error("message {seq} has an invalid block descriptor: {reason}")]
    BadDescriptor {
        /// The message.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
}

/// A subscriber of arrays: resolves descriptors to blocks of the publisher's pool segments,
/// which it maps on first use and keeps mapped while it may need them.
pub struct PoolSubscriber {
    pub(crate) subscriber: RawSubscriber,
    pub(crate) cache: RefCell<Vec<Arc<PoolSegment>>>,
}

impl fmt::Debug for PoolSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolSubscriber")
            .field("topic", self.subscriber.topic().name())
            .field("mapped_segments", &self.cache.borrow().len())
            .finish()
    }
}

impl PoolSubscriber {
    /// Joins `topic` as a subscriber of arrays.
    pub fn new(topic: Arc<RawTopic>, history: u32) -> Result<PoolSubscriber, TopicError> {
        check_slots(&topic)?;
        Ok(PoolSubscriber {
            subscriber: RawSubscriber::new(topic, history)?,
            cache: RefCell::new(Vec::new()),
        })
    }

    /// The topic subscriber.
    pub fn subscriber(&self) -> &RawSubscriber {
        &self.subscriber
    }

    /// Releases a block detached from a [`HeldBlock`] this subscriber received.
    ///
    /// # Panics
    ///
    /// If `block` came from another subscriber.
    pub fn release_detached(&self, block: DetachedBlock) {
        self.subscriber.release(block.held);
    }

    /// Pool segments mapped right now.
    pub fn mapped_segments(&self) -> usize {
        self.cache.borrow().len()
    }

    /// Takes the next array without waiting.
    pub fn try_receive(&self) -> Result<BlockReceived<'_>, BlockReceiveError> {
        let r = self.subscriber.try_receive()?;
        self.resolve_received(r)
    }

    /// Takes the next array without waiting, and when there is none tells whether one can
    /// still come, as [`RawSubscriber::poll_receive`] does.
    pub fn poll_receive(&self) -> Result<BlockReceived<'_>, BlockReceiveError> {
        let r = self.subscriber.poll_receive()?;
        self.resolve_received(r)
    }

    /// Takes the next array, waiting up to `timeout` (`None`: no limit).
    pub fn receive(
        &self,
        timeout: Option<Duration>,
    ) -> Result<BlockReceived<'_>, BlockReceiveError> {
        let r = self.subscriber.receive(timeout)?;
        self.resolve_received(r)
    }

    /// Turns what the topic subscriber ([`subscriber`](Self::subscriber)) received into an
    /// array: a message's descriptor is checked and its block mapped; a bad descriptor is
    /// refused (the message is released).
    pub fn resolve_received(&self, r: Received) -> Result<BlockReceived<'_>, BlockReceiveError> {
        match r {
            Received::Message(held) => {
                let seq = held.seq();
                match self.resolve(&held) {
                    Ok((segment, desc, dtype, shape)) => Ok(BlockReceived::Block(HeldBlock {
                        subscriber: self,
                        held: Some(held),
                        segment,
                        desc,
                        dtype,
                        shape,
                    })),
                    Err(reason) => {
                        self.subscriber.release(held);
                        tracing::warn!(topic = %self.subscriber.topic().name(), seq, %reason, "refused a block descriptor");
                        Err(BlockReceiveError::BadDescriptor { seq, reason })
                    }
                }
            }
            Received::Empty => Ok(BlockReceived::Empty),
            Received::Lagged(n) => Ok(BlockReceived::Lagged(n)),
            Received::Disconnected => Ok(BlockReceived::Disconnected),
        }
    }

    #[allow(clippy::type_complexity)]
    pub(crate) fn resolve(
        &self,
        held: &Held,
    ) -> Result<(Arc<PoolSegment>, BlockDescriptor, Dtype, Shape), String> {
        let (desc, dtype, shape) = read_descriptor(self.subscriber.slot(held))?;
        let segment = self.segment(desc.pool_id, desc.segment)?;
        check_block(&desc, segment.block_count, segment.block_size, |b| {
            segment.generation(b).load(Ordering::Acquire)
        })?;
        Ok((segment, desc, dtype, shape))
    }

    pub(crate) fn segment(&self, pool_id: u64, index: u32) -> Result<Arc<PoolSegment>, String> {
        let mut cache = self.cache.borrow_mut();
        if let Some(s) = cache
            .iter()
            .find(|s| s.pool_id == pool_id && s.index == index)
        {
            return Ok(s.clone());
        }
        let name = segment_name(self.subscriber.topic().name(), pool_id, index)
            .map_err(|e| e.to_string())?;
        let seg = Arc::new(
            PoolSegment::open(&name, pool_id, index)
                .map_err(|e| format!("pool segment {name} unknown: {e}"))?,
        );
        // Segments of an earlier publisher (another pool) that nothing here holds any more
        // are unmapped, so a departed publisher's memory is freed.
        cache.retain(|s| s.pool_id == pool_id || Arc::strong_count(s) > 1);
        cache.push(seg.clone());
        Ok(seg)
    }
}

/// Copies the descriptor out of the first bytes of a slot and checks what it says on its own:
/// magic, dtype, shape and length ([`BlockDescriptor::array`]) and a segment index a pool may
/// have. The segment it names is opened, by a name derived from its numbers, only after this.
pub(crate) fn read_descriptor(slot: &[u8]) -> Result<(BlockDescriptor, Dtype, Shape), String> {
    let desc = BlockDescriptor::read_from(slot)
        .ok_or_else(|| format!("a slot of {} bytes cannot hold a descriptor", slot.len()))?;
    let (dtype, shape) = desc.array()?;
    if desc.segment >= MAX_POOL_SEGMENTS {
        return Err(format!("segment index {} out of range", desc.segment));
    }
    Ok((desc, dtype, shape))
}

/// Checks `desc` against the pool segment it names, a segment of `block_count` blocks of
/// `block_size` bytes: a block index inside it, a length inside the block, and the block's
/// current generation (`generation(block)`, read only once the index is known to be in range).
pub(crate) fn check_block(
    desc: &BlockDescriptor,
    block_count: u32,
    block_size: usize,
    generation: impl FnOnce(u32) -> u64,
) -> Result<(), String> {
    if desc.block >= block_count {
        return Err(format!(
            "block {} of a segment of {block_count}",
            desc.block
        ));
    }
    if desc.len > block_size as u64 {
        return Err(format!(
            "{} bytes overrun a block of {block_size}",
            desc.len
        ));
    }
    let current = generation(desc.block);
    if current != desc.generation {
        return Err(format!(
            "stale generation {} (the block is at {current})",
            desc.generation
        ));
    }
    Ok(())
}
