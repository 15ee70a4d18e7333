//! The publishing side: loaning blocks, growing, retiring, publishing descriptors, lingering.

#[allow(unused_imports)]
use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockRef {
    pub(crate) segment: u32,
    pub(crate) block: u32,
}

/// What an attempt to grow the pool came to.
#[derive(Debug)]
pub(crate) enum Growth {
    /// A segment was added.
    Grew,
    /// `max_bytes` or `max_segments` allows no more.
    AtLimit,
    /// The shared-memory directory cannot hold another segment
    /// ([`SegmentError::OutOfSpace`]).
    NoSpace(SegmentError),
}

#[derive(Debug)]
pub(crate) struct InFlight {
    pub(crate) seq: u64,
    pub(crate) slot: u32,
    pub(crate) block: BlockRef,
}

/// The messages whose blocks may still be referenced, in publish order, and which slots they
/// name (at most one message per slot), so that finding a slot's message costs nothing when
/// there is none.
#[derive(Default)]
pub(crate) struct InFlightList {
    list: VecDeque<InFlight>,
    named: Vec<bool>,
}

impl InFlightList {
    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &InFlight> {
        self.list.iter()
    }

    pub(crate) fn front(&self) -> Option<&InFlight> {
        self.list.front()
    }

    pub(crate) fn get(&self, i: usize) -> Option<&InFlight> {
        self.list.get(i)
    }

    pub(crate) fn push(&mut self, m: InFlight) {
        let i = m.slot as usize;
        if self.named.len() <= i {
            self.named.resize(i + 1, false);
        }
        debug_assert!(!self.named[i], "two messages in flight in slot {i}");
        self.named[i] = true;
        self.list.push_back(m);
    }

    fn unname(&mut self, m: &InFlight) {
        if let Some(n) = self.named.get_mut(m.slot as usize) {
            *n = false;
        }
    }

    pub(crate) fn pop_front(&mut self) -> Option<InFlight> {
        let m = self.list.pop_front()?;
        self.unname(&m);
        Some(m)
    }

    pub(crate) fn remove(&mut self, i: usize) -> Option<InFlight> {
        let m = self.list.remove(i)?;
        self.unname(&m);
        Some(m)
    }

    /// Keeps the messages for which `keep` holds.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&InFlight) -> bool) {
        let named = &mut self.named;
        self.list.retain(|m| {
            let k = keep(m);
            if !k {
                if let Some(n) = named.get_mut(m.slot as usize) {
                    *n = false;
                }
            }
            k
        });
    }

    /// Removes and returns the message in `slot`, if one is in flight there.
    pub(crate) fn take_slot(&mut self, slot: u32) -> Option<InFlight> {
        if !self.named.get(slot as usize).copied().unwrap_or(false) {
            return None;
        }
        // Usually the oldest: the ring reuses slots in order.
        let i = self.list.iter().position(|m| m.slot == slot)?;
        self.remove(i)
    }
}

/// A block and a slot on loan to a [`PoolPublisher`]: fill them, then publish or cancel.
#[derive(Debug)]
#[must_use = "a block loan is only given back by publish or cancel"]
pub struct BlockLoan {
    pub(crate) loan: Loan,
    pub(crate) block: BlockRef,
    pub(crate) generation: u64,
    pub(crate) dtype: Dtype,
    pub(crate) shape: Shape,
    pub(crate) len: usize,
    pub(crate) owner: u64,
}

impl BlockLoan {
    /// The array's dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        self.shape.as_slice()
    }
    /// The array's bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the array has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A publisher of arrays: a topic publisher plus the pool of blocks it owns.
///
/// Dropping it waits up to [`PoolOptions::linger`] until every segment that messages still in
/// the ring refer to is mapped by some subscriber (so a subscriber that has not read them yet
/// can still resolve them once the publisher is gone), then leaves.
pub struct PoolPublisher {
    pub(crate) publisher: RawPublisher,
    pub(crate) pool_id: u64,
    pub(crate) opts: PoolOptions,
    pub(crate) segments: Vec<PoolSegment>,
    pub(crate) free: Vec<BlockRef>,
    pub(crate) in_flight: InFlightList,
    pub(crate) bytes: u64,
    pub(crate) loaned: bool,
    pub(crate) last_reclaim: Instant,
    pub(crate) stats: PoolStats,
    pub(crate) id: u64,
    /// Whether any segment has blocks of at least [`EAGER_RETURN_BYTES`].
    pub(crate) large_blocks: bool,
}

impl fmt::Debug for PoolPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolPublisher")
            .field("topic", self.publisher.topic().name())
            .field("pool_id", &format_args!("{:016x}", self.pool_id))
            .field("segments", &self.segments.len())
            .field("free", &self.free.len())
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

impl PoolPublisher {
    /// Joins `topic` as its publisher of arrays. The topic must allow one publisher only and
    /// have slots of at least [`DESCRIPTOR_SIZE`] bytes.
    pub fn new(topic: Arc<RawTopic>, opts: PoolOptions) -> Result<PoolPublisher, TopicError> {
        let c = topic.config();
        if c.max_publishers != 1 {
            return Err(TopicError::Config(format!(
                "an array topic has one publisher; {:?} allows {}",
                topic.name(),
                c.max_publishers
            )));
        }
        check_slots(&topic)?;
        if opts.blocks_per_segment == 0 || !(1..=MAX_POOL_SEGMENTS).contains(&opts.max_segments) {
            return Err(TopicError::Config(format!(
                "blocks_per_segment must be at least 1 and max_segments 1..={MAX_POOL_SEGMENTS}"
            )));
        }
        let swept = sweep_stale(topic.name());
        if swept > 0 {
            tracing::info!(topic = %topic.name(), swept, "removed stale pool segments");
        }
        let mut publisher = RawPublisher::new(topic)?;
        // The pool learns that a block is back from its message's slot being free, at every
        // loan: evictions in chunks would keep blocks from it, and a fence per array is nothing.
        publisher.keep_fence();
        Ok(PoolPublisher {
            publisher,
            pool_id: random_u64(),
            opts,
            segments: Vec::new(),
            free: Vec::new(),
            in_flight: InFlightList::default(),
            bytes: 0,
            loaned: false,
            last_reclaim: Instant::now(),
            stats: PoolStats::default(),
            id: random_u64(),
            large_blocks: false,
        })
    }

    /// The topic publisher.
    pub fn publisher(&self) -> &RawPublisher {
        &self.publisher
    }

    /// The pool's id (part of its segments' names).
    pub fn pool_id(&self) -> u64 {
        self.pool_id
    }

    /// Counters.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            segments: self.segments.len() as u32,
            blocks: self.segments.iter().map(|s| s.block_count).sum(),
            bytes: self.bytes,
            free: self.free.len() as u32,
            in_flight: self.in_flight.len() as u32,
            ..self.stats
        }
    }

    /// Moves blocks whose slot is free to the free list (most recently freed on top).
    /// Frees the blocks of in-flight messages whose slots are free again (or are the
    /// publisher's spare, loaned while free). `in_flight` is in publish order and messages
    /// leave the ring oldest first, so the free ones are usually a run at its front: this pops
    /// that run, in time proportional to what it frees, and looks at every message only when
    /// `all` (a subscriber holding an old message leaves newer free ones behind it).
    pub(crate) fn collect(&mut self, all: bool) {
        let publisher = &self.publisher;
        let spare = publisher.spare_slot();
        let is_free = |m: &InFlight| publisher.slot_is_free(m.slot) || Some(m.slot) == spare;
        while let Some(m) = self.in_flight.front() {
            if !is_free(m) {
                break;
            }
            self.free.push(m.block);
            self.in_flight.pop_front();
        }
        if all {
            let free = &mut self.free;
            self.in_flight.retain(|m| {
                if is_free(m) {
                    free.push(m.block);
                    false
                } else {
                    true
                }
            });
        }
    }

    pub(crate) fn size_of_block(&self, b: BlockRef) -> usize {
        self.segments[b.segment as usize].block_size
    }

    /// Takes the most recently freed block that fits `len`, preferring one not more than four
    /// times too large (so a small array does not pin a huge block) unless `any`.
    pub(crate) fn take_free(&mut self, len: usize, any: bool) -> Option<BlockRef> {
        let limit = len.saturating_mul(4).max(PAGE);
        let i = self.free.iter().rposition(|&b| {
            let size = self.size_of_block(b);
            size >= len && (any || size <= limit)
        })?;
        Some(self.free.remove(i))
    }

    /// Adds a segment of blocks of `len` bytes (rounded to pages), if the limits and the
    /// shared-memory directory allow.
    pub(crate) fn grow(&mut self, len: usize) -> Result<Growth, PoolLoanError> {
        let block_size = len
            .max(1)
            .checked_next_multiple_of(PAGE)
            .unwrap_or(usize::MAX);
        let room = self.opts.max_bytes.saturating_sub(self.bytes) / block_size as u64;
        let count = room.min(u64::from(self.opts.blocks_per_segment)) as u32;
        if count == 0 || self.segments.len() as u32 >= self.opts.max_segments {
            return Ok(Growth::AtLimit);
        }
        let index = self.segments.len() as u32;
        let name = segment_name(self.publisher.topic().name(), self.pool_id, index)?;
        let seg = match PoolSegment::create(
            &name,
            self.pool_id,
            index,
            block_size,
            count,
            self.opts.mode,
        ) {
            Ok(s) => s,
            // A full /dev/shm is exhaustion: the overflow policy may still free a block. If it
            // frees none, this is the error the caller gets.
            Err(e @ SegmentError::OutOfSpace { .. }) => return Ok(Growth::NoSpace(e)),
            Err(e) => return Err(e.into()),
        };
        tracing::debug!(topic = %self.publisher.topic().name(), index, block_size, count, "array pool grew");
        self.bytes += block_size as u64 * u64::from(count);
        self.large_blocks |= block_size >= EAGER_RETURN_BYTES;
        self.segments.push(seg);
        // Block 0 on top.
        self.free.extend((0..count).rev().map(|block| BlockRef {
            segment: index,
            block,
        }));
        Ok(Growth::Grew)
    }

    /// Collects freed blocks, reclaiming dead participants first if that was last done more
    /// than `max_age` ago.
    pub(crate) fn refresh(&mut self, max_age: Duration) {
        if self.last_reclaim.elapsed() > max_age {
            self.reclaim_dead_now();
        } else {
            self.collect(false);
        }
    }

    pub(crate) fn reclaim_dead_now(&mut self) {
        self.publisher.topic().reclaim_dead();
        self.last_reclaim = Instant::now();
        self.collect(true);
    }

    /// Withdraws the in-flight messages in blocks of at least [`EAGER_RETURN_BYTES`] that
    /// every subscriber has read and nobody holds, but for the newest
    /// [`PoolOptions::history`], and frees their blocks (the one read last on top). Without a
    /// subscriber, every such message but those newest ones goes.
    ///
    /// Smaller blocks keep going round the ring's whole history (decision 46): handing a
    /// small block straight back makes the publisher write lines the reader still has in its
    /// own cache, which measured up to 2x slower than a rotation; a large block does not fit
    /// there, and the fewer distinct large blocks the stream touches, the fewer leave the
    /// shared cache.
    pub(crate) fn retire_read(&mut self) {
        let keep = self.opts.history as usize;
        let candidates = self.in_flight.len().saturating_sub(keep);
        // A pool of small blocks only (the usual case for a deep ring) pays nothing here.
        if candidates == 0 || !self.large_blocks {
            return;
        }
        let read_before = self
            .publisher
            .topic()
            .ring()
            .min_cursor()
            .unwrap_or(u64::MAX);
        let mut i = 0;
        for _ in 0..candidates {
            let Some(m) = self.in_flight.get(i) else {
                break;
            };
            // Messages are read in publish order: none after an unread one has been read.
            if m.seq >= read_before {
                break;
            }
            if self.size_of_block(m.block) >= EAGER_RETURN_BYTES
                && self.publisher.retire(m.seq, m.slot)
            {
                let m = self.in_flight.remove(i).expect("an index below len");
                self.free.push(m.block);
            } else {
                // Small, or held by a subscriber: it stays until its slot is free.
                i += 1;
            }
        }
    }

    /// Withdraws the oldest in-flight message whose block fits `len` and that nobody holds
    /// (with `read_only`: that every subscriber has read, or any if there is no subscriber);
    /// returns its block.
    pub(crate) fn retire_oldest(&mut self, len: usize, read_only: bool) -> Option<BlockRef> {
        let read_before = if read_only {
            self.publisher
                .topic()
                .ring()
                .min_cursor()
                .unwrap_or(u64::MAX)
        } else {
            u64::MAX
        };
        let i = (0..self.in_flight.len()).find(|&i| {
            let m = self.in_flight.get(i).expect("an index below len");
            m.seq < read_before
                && self.size_of_block(m.block) >= len
                && self.publisher.retire(m.seq, m.slot)
        })?;
        self.stats.retired += 1;
        self.in_flight.remove(i).map(|m| m.block)
    }

    /// Finds a block of at least `len` bytes, applying the overflow policy when the pool is
    /// exhausted.
    pub(crate) fn find_block(
        &mut self,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<BlockRef, PoolLoanError> {
        // Blocks held by subscribers that died come back once their rows are reclaimed.
        self.refresh(Duration::from_millis(100));
        self.retire_read();
        if let Some(b) = self.take_free(len, false) {
            return Ok(b);
        }
        // Free messages behind one that a subscriber still holds: look at all before growing.
        self.collect(true);
        if let Some(b) = self.take_free(len, false) {
            return Ok(b);
        }
        let no_space = match self.grow(len)? {
            Growth::Grew => return Ok(self.take_free(len, true).expect("a fresh segment fits")),
            Growth::AtLimit => None,
            Growth::NoSpace(e) => Some(e),
        };
        // Messages every subscriber has read stay in the ring only as history for late
        // joiners: their blocks are the first to take back, under either policy. (A pool at its
        // limit takes this path on every loan, so it must stay cheap: no syscall.)
        if let Some(b) = self.retire_oldest(len, true) {
            return Ok(b);
        }
        // Dead subscribers' holds, at most every 10 ms (a few `fcntl`s per participant).
        self.refresh(Duration::from_millis(10));
        if let Some(b) = self.take_free(len, true) {
            return Ok(b);
        }
        match self.publisher.topic().config().overflow {
            Overflow::Overwrite => {
                // Withdraw the oldest message nobody holds, read or not.
                if let Some(b) = self.retire_oldest(len, false) {
                    return Ok(b);
                }
                self.collect(true);
                if let Some(b) = self.take_free(len, true) {
                    return Ok(b);
                }
            }
            Overflow::BackPressure => {
                self.stats.waits += 1;
                let deadline = Deadline::after(timeout);
                let mut nap = Duration::from_micros(20);
                while !deadline.expired() {
                    std::thread::sleep(match deadline.remaining() {
                        Some(r) => nap.min(r),
                        None => nap,
                    });
                    nap = (nap * 2).min(Duration::from_millis(1));
                    self.refresh(Duration::from_millis(50));
                    if let Some(b) = self.take_free(len, true) {
                        return Ok(b);
                    }
                    if let Some(b) = self.retire_oldest(len, true) {
                        return Ok(b);
                    }
                }
            }
        }
        // The pool stopped short of its limits because `/dev/shm` is full: say so, rather than
        // blame limits that were not reached.
        Err(match no_space {
            Some(e) => PoolLoanError::Segment(e),
            None => PoolLoanError::Exhausted {
                topic: self.publisher.topic().name().clone(),
                needed: len,
                pool_bytes: self.bytes,
                max_bytes: self.opts.max_bytes,
            },
        })
    }

    /// Loans a block for an array of `dtype` and `shape`, and a slot for its descriptor.
    /// Under back-pressure, waits up to `timeout` for a block when the pool is exhausted.
    pub fn loan(
        &mut self,
        dtype: Dtype,
        shape: &[usize],
        timeout: Option<Duration>,
    ) -> Result<BlockLoan, PoolLoanError> {
        self.publisher.check_fork().map_err(LoanError::from)?;
        if self.loaned {
            return Err(LoanError::AlreadyLoaned.into());
        }
        let shape_err = |reason: &str| PoolLoanError::Shape {
            shape: shape.to_vec(),
            dtype,
            reason: reason.to_owned(),
        };
        let Some(inline) = Shape::new(shape) else {
            return Err(shape_err(&format!("more than {MAX_BLOCK_NDIM} dimensions")));
        };
        let len = byte_len(shape, dtype.itemsize()).ok_or_else(|| shape_err("too many bytes"))?;
        let block = self.find_block(len, timeout)?;
        let loan = match self.publisher.loan() {
            Ok(l) => l,
            Err(e) => {
                self.free.push(block);
                return Err(e.into());
            }
        };
        // The slot was free, so whatever an older message in it referenced is free too.
        let slot = loan.slot();
        if let Some(m) = self.in_flight.take_slot(slot) {
            self.free.push(m.block);
        }
        let seg = &self.segments[block.segment as usize];
        // Release: pairs with a subscriber's Acquire load after it took the slot (the publish
        // orders it anyway); a new generation makes any older descriptor of this block stale.
        let generation = seg
            .generation(block.block)
            .fetch_add(1, Ordering::Release)
            .wrapping_add(1); // shared memory: another process may have written u64::MAX
        self.loaned = true;
        Ok(BlockLoan {
            loan,
            block,
            generation,
            dtype,
            shape: inline,
            len,
            owner: self.id,
        })
    }

    pub(crate) fn check_owner(&self, loan: &BlockLoan) {
        assert_eq!(
            loan.owner, self.id,
            "a block loan used with a publisher that did not make it"
        );
    }

    /// The loaned block (exactly the array's bytes, page-aligned) and the slot's metadata bytes
    /// after the descriptor, both writable.
    ///
    /// # Panics
    ///
    /// If `loan` came from another publisher.
    pub fn parts_mut(&mut self, loan: &BlockLoan) -> (&mut [u8], &mut [u8]) {
        self.check_owner(loan);
        let block = self.segments[loan.block.segment as usize].block_ptr(loan.block.block);
        let ring = self.publisher.topic().ring();
        let slot = ring.slot_ptr(loan.loan.slot());
        let slot_size = ring.config().slot_size as usize;
        // SAFETY: the block was free (its last message's slot was free, or it was never used)
        // when loaned, and it and the slot are on loan to this publisher alone until publish or
        // cancel consume the `BlockLoan`, which cannot be forged or copied; subscribers read
        // them only after the publish. `len <= block_size` and `DESCRIPTOR_SIZE <= slot_size`
        // (checked when joining); the two ranges lie in different mappings, both alive as long
        // as `self`, whose `&mut` borrow the slices carry.
        unsafe {
            (
                std::slice::from_raw_parts_mut(block.as_ptr(), loan.len),
                std::slice::from_raw_parts_mut(
                    slot.as_ptr().add(DESCRIPTOR_SIZE),
                    slot_size - DESCRIPTOR_SIZE,
                ),
            )
        }
    }

    /// Writes `desc` at the start of the slot on `loan`.
    pub(crate) fn write_descriptor(&mut self, loan: &Loan, desc: &BlockDescriptor) {
        let p = self.publisher.topic().ring().slot_ptr(loan.slot());
        // SAFETY: the slot is on loan to this publisher (checked by the callers, who hold the
        // `Loan`), at least DESCRIPTOR_SIZE bytes (checked when joining) and 64-aligned
        // (BlockDescriptor needs 8); nobody else reads or writes it before the publish.
        unsafe { p.cast::<BlockDescriptor>().as_ptr().write(*desc) };
    }

    /// Publishes the loaned array; on error (back-pressure timeout) the loan is handed back.
    // The error hands the loan back by value; it is rare (a timeout) and boxing it would cost
    // an allocation on that path for no gain on the hot one.
    #[allow(clippy::result_large_err)]
    pub fn publish(
        &mut self,
        loan: BlockLoan,
        timeout: Option<Duration>,
    ) -> Result<u64, (PublishError, BlockLoan)> {
        self.check_owner(&loan);
        let mut desc = BlockDescriptor {
            magic: DESCRIPTOR_MAGIC,
            dtype: loan.dtype.code(),
            pool_id: self.pool_id,
            segment: loan.block.segment,
            block: loan.block.block,
            generation: loan.generation,
            len: loan.len as u64,
            ndim: loan.shape.ndim as u32,
            reserved: 0,
            shape: [0; MAX_BLOCK_NDIM],
        };
        for (d, &s) in desc.shape.iter_mut().zip(loan.shape.as_slice()) {
            *d = s as u64;
        }
        self.write_descriptor(&loan.loan, &desc);
        let BlockLoan {
            loan: slot_loan,
            block,
            generation,
            dtype,
            shape,
            len,
            owner,
        } = loan;
        let slot = slot_loan.slot();
        match self.publisher.publish(slot_loan, timeout) {
            Ok(seq) => {
                self.loaned = false;
                self.in_flight.push(InFlight { seq, slot, block });
                Ok(seq)
            }
            Err((e, slot_loan)) => Err((
                e,
                BlockLoan {
                    loan: slot_loan,
                    block,
                    generation,
                    dtype,
                    shape,
                    len,
                    owner,
                },
            )),
        }
    }

    /// Publishes `desc` as it is, with no block behind it: what a buggy or hostile process
    /// with the topic mapped could write. For tests of descriptor validation and for tools.
    #[doc(hidden)]
    pub fn publish_raw(
        &mut self,
        desc: &BlockDescriptor,
        timeout: Option<Duration>,
    ) -> Result<u64, PoolLoanError> {
        let loan = self.publisher.loan()?;
        self.write_descriptor(&loan, desc);
        self.publisher.publish(loan, timeout).map_err(|(_, loan)| {
            self.publisher.cancel(loan);
            PoolLoanError::Exhausted {
                topic: self.publisher.topic().name().clone(),
                needed: 0,
                pool_bytes: self.bytes,
                max_bytes: self.opts.max_bytes,
            }
        })
    }

    /// Gives an unpublished loan back.
    pub fn cancel(&mut self, loan: BlockLoan) {
        self.check_owner(&loan);
        self.publisher.cancel(loan.loan);
        self.free.push(loan.block);
        self.loaned = false;
    }

    /// Waits (up to `linger`) until every segment named by a message still in flight is mapped
    /// by some other process, or no subscriber is left to read it.
    pub(crate) fn linger(&mut self) {
        let deadline = Instant::now() + self.opts.linger;
        loop {
            self.collect(true);
            let ring = self.publisher.topic().ring();
            let subscribers = (0..ring.config().max_subscribers).any(|k| ring.subscriber_active(k));
            let unmapped = self
                .in_flight
                .iter()
                .any(|m| !self.segments[m.block.segment as usize].used_by_others());
            if !subscribers || !unmapped || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for PoolPublisher {
    fn drop(&mut self) {
        // A forked child's copy has nothing of its own in flight: the frames are the parent's.
        if !self.in_flight.is_empty()
            && !std::thread::panicking()
            && self.publisher.check_fork().is_ok()
        {
            self.linger();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, slot: u32) -> InFlight {
        InFlight {
            seq,
            slot,
            block: BlockRef {
                segment: 0,
                block: seq as u32,
            },
        }
    }

    #[test]
    fn in_flight_list_finds_a_slots_message_whatever_removed_the_others() {
        let mut l = InFlightList::default();
        for (seq, slot) in [(0, 3), (1, 0), (2, 7), (3, 1)] {
            l.push(msg(seq, slot));
        }
        assert!(l.take_slot(5).is_none(), "no message there");
        assert_eq!(l.take_slot(7).map(|m| m.seq), Some(2), "from the middle");
        assert!(l.take_slot(7).is_none(), "taken once");
        assert_eq!(l.pop_front().map(|m| m.slot), Some(3));
        assert!(l.take_slot(3).is_none(), "popped");
        l.retain(|m| m.slot != 0);
        assert!(l.take_slot(0).is_none(), "retained away");
        assert_eq!(l.remove(0).map(|m| m.slot), Some(1));
        assert!(l.is_empty() && l.take_slot(1).is_none());
        // A slot freed is named again by its next message.
        l.push(msg(9, 7));
        assert_eq!(l.take_slot(7).map(|m| m.seq), Some(9));
    }
}
