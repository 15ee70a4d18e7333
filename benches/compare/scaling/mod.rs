//! The "how cost grows" scenarios: fan-out to more subscribers, bigger in-slot messages, more
//! publishers on one topic. Each family's floor, shmbus and iceoryx2 sides are in the modules
//! below; the array hand-off family (`bulk_*`) is the harness's `bulk` code at three sizes.

pub(crate) mod floor;
pub(crate) mod ice;
pub(crate) mod shm;

/// Ring entries of the fan-out and several-publisher streams (as `throughput_64B`).
pub(crate) const STREAM_SLOTS: usize = 256;

/// Ring entries of `msg_throughput_SIZE`, for every system: 256 (as `throughput_64B`), or
/// fewer for big messages so that a ring holds at most 4 MiB (64 for 64 KiB).
pub(crate) fn msg_slots(bytes: usize) -> usize {
    ((4 << 20) / bytes.max(1)).clamp(4, 256)
}

/// How many of the run's `total` messages publisher `index` (1-based) of `publishers` sends.
pub(crate) fn share(total: u64, publishers: usize, index: usize) -> u64 {
    let p = publishers as u64;
    total / p + u64::from(((index - 1) as u64) < total % p)
}

/// The 64-byte message of the several-publisher stream: who sent it, its number among that
/// publisher's messages, and a body derived from both (written in full, read in full).
pub(crate) fn tagged(publisher: u64, seq: u64) -> [u64; 8] {
    std::array::from_fn(|k| match k {
        0 => publisher,
        1 => seq,
        _ => seq ^ (publisher << 32) ^ k as u64,
    })
}

/// The subscriber's check of a several-publisher message: from a known publisher, the next
/// one of that publisher (each publisher's messages arrive in order, none lost), intact.
pub(crate) fn check_tagged(item: &[u64; 8], next: &mut [u64]) -> crate::Res<()> {
    let (p, seq) = (item[0], item[1]);
    let want = next
        .get_mut(p as usize)
        .ok_or("a message from an unknown publisher")?;
    std::hint::black_box(item.iter().fold(0u64, |a, &b| a.wrapping_add(b)));
    if seq != *want || *item != tagged(p, seq) {
        return Err(
            format!("publisher {p}: expected message {want}, got {seq} (or damaged)").into(),
        );
    }
    *want += 1;
    Ok(())
}
