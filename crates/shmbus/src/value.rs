//! Named shared values ([`Value`]) and barriers ([`Barrier`]).

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use bytemuck::Pod;
use shmbus_core::layout::{short_type_name, TypeInfo};
use shmbus_core::name::Name;
use shmbus_core::sync::LockError;
use shmbus_core::value::{BarrierError, BarrierOpenError, RawBarrier, RawValue};

use crate::error::OpenError;
use crate::sync::SyncOptions;

/// Integer types whose [`Value`]s support [`Value::fetch_add`].
pub trait ValueInt: Pod + sealed::Sealed {
    #[doc(hidden)]
    fn to_u64(self) -> u64;
    #[doc(hidden)]
    fn from_u64(v: u64) -> Self;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! value_int {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl ValueInt for $t {
            fn to_u64(self) -> u64 { self as u64 }
            fn from_u64(v: u64) -> Self { v as $t }
        }
    )*};
}
value_int!(u8, u16, u32, u64, i8, i16, i32, i64);

/// A named plain-old-data value shared by every process that opens it.
///
/// Values of 1, 2, 4 or 8 bytes are a single atomic word: [`load`](Self::load),
/// [`store`](Self::store), [`update`](Self::update) (a compare-and-swap loop) and, for
/// integers, [`fetch_add`](Self::fetch_add) never wait, and a process killed at any instruction
/// leaves a whole value. Larger values live under a robust lock in two copies: an update fills
/// the spare copy, then makes it current in one store, so a writer killed mid-update leaves the
/// last complete value and blocks nobody.
///
/// # Examples
///
/// ```
/// use shmbus::Value;
///
/// let name = format!("doc-value-{}", std::process::id());
/// let hits = Value::open_or_create(&name, 0u64)?; // in every process
/// hits.fetch_add(1);
/// assert_eq!(hits.update(|h| h * 10)?, 10);
/// assert_eq!(hits.load()?, 10);
///
/// #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
/// #[repr(C)]
/// struct Limits { lo: f64, hi: f64 }
/// let lim = Value::open_or_create(&format!("{name}-limits"), Limits { lo: 0.0, hi: 1.0 })?;
/// lim.store(Limits { lo: -1.0, hi: 2.0 })?; // 16 bytes: under the lock, never torn
/// assert_eq!(lim.load()?.hi, 2.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Value<T: Pod> {
    raw: RawValue,
    _t: PhantomData<fn(T) -> T>,
}

impl<T: Pod> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value").field("raw", &self.raw).finish()
    }
}

impl<T: Pod> Value<T> {
    fn type_info() -> Result<TypeInfo, OpenError> {
        if size_of::<T>() == 0 || align_of::<T>() > 64 {
            return Err(OpenError::UnsupportedType {
                type_name: short_type_name::<T>().to_owned(),
                reason: "a shared value needs a non-zero size and an alignment of at most 64"
                    .into(),
            });
        }
        Ok(TypeInfo::pod::<T>())
    }

    /// Opens the value `name`, creating it holding `initial` if it does not exist.
    ///
    /// # Errors
    ///
    /// [`OpenError::Name`], [`OpenError::UnsupportedType`], [`OpenError::Segment`] (another
    /// type under the name among them).
    pub fn open_or_create(name: &str, initial: T) -> Result<Value<T>, OpenError> {
        Self::open_or_create_with(name, initial, SyncOptions::default())
    }

    /// As [`open_or_create`](Self::open_or_create), with the file mode and lifetime of `opts`.
    ///
    /// # Errors
    ///
    /// As [`open_or_create`](Self::open_or_create).
    pub fn open_or_create_with(
        name: &str,
        initial: T,
        opts: SyncOptions,
    ) -> Result<Value<T>, OpenError> {
        let raw = RawValue::open_or_create(
            &Name::new(name)?,
            &Self::type_info()?,
            bytemuck::bytes_of(&initial),
            opts.file_mode(),
            opts.lifetime_of(),
        )?;
        Ok(Value {
            raw,
            _t: PhantomData,
        })
    }

    /// Opens the existing value `name`.
    ///
    /// # Errors
    ///
    /// As [`open_or_create`](Self::open_or_create), and not found.
    pub fn open(name: &str) -> Result<Value<T>, OpenError> {
        let raw = RawValue::open(&Name::new(name)?, &Self::type_info()?)?;
        Ok(Value {
            raw,
            _t: PhantomData,
        })
    }

    /// Whether the value is one atomic word (sizes 1, 2, 4 and 8).
    pub fn is_atomic(&self) -> bool {
        self.raw.is_atomic()
    }

    /// The value now.
    ///
    /// # Errors
    ///
    /// Never for atomic values; the lock's errors otherwise.
    pub fn load(&self) -> Result<T, LockError> {
        let mut v = T::zeroed();
        self.raw.load(bytemuck::bytes_of_mut(&mut v))?;
        Ok(v)
    }

    /// Replaces the value.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub fn store(&self, value: T) -> Result<(), LockError> {
        self.raw.store(bytemuck::bytes_of(&value))
    }

    /// Replaces the value by `f(value)`, atomically with respect to every other operation, and
    /// returns the new value. For an atomic value `f` may run more than once (keep it pure).
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub fn update(&self, mut f: impl FnMut(T) -> T) -> Result<T, LockError> {
        let mut out = T::zeroed();
        self.raw.update(|old, new| {
            let v = f(bytemuck::pod_read_unaligned(old));
            new.copy_from_slice(bytemuck::bytes_of(&v));
            out = v;
        })?;
        Ok(out)
    }
}

impl<T: ValueInt> Value<T> {
    /// Adds `delta` (wrapping) and returns the previous value; one atomic instruction loop,
    /// never waiting.
    pub fn fetch_add(&self, delta: T) -> T {
        T::from_u64(self.raw.fetch_add(delta.to_u64()).unwrap_or(0))
    }
}

/// A named barrier for a fixed number of processes, reusable generation after generation.
///
/// Each handle is one party. [`wait`](Self::wait) returns once every party has arrived; a party
/// whose process dies before it arrives breaks the generation: the others get
/// [`BarrierError::PartyDied`] within about 50 ms instead of hanging, and the next generation
/// starts afresh (a new process may take the dead party's place). A party that *leaves*
/// (drops its handle) is not dead: the others wait for a party to take its place, up to their
/// timeout.
///
/// # Examples
///
/// ```
/// use shmbus::Barrier;
/// use std::time::Duration;
///
/// let name = format!("doc-barrier-{}", std::process::id());
/// std::thread::scope(|s| {
///     for _ in 0..2 {
///         s.spawn(|| {
///             let b = Barrier::open(&name, 3).unwrap(); // in each process, usually
///             b.wait_timeout(Duration::from_secs(5)).unwrap();
///         });
///     }
///     let b = Barrier::open(&name, 3).unwrap();
///     b.wait_timeout(Duration::from_secs(5)).unwrap();
/// });
/// ```
pub struct Barrier {
    raw: RawBarrier,
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier").field("raw", &self.raw).finish()
    }
}

impl Barrier {
    /// Joins the barrier `name` for `parties` processes, creating it if needed.
    ///
    /// # Errors
    ///
    /// [`OpenError::Name`], [`OpenError::Segment`] (a barrier for another number of parties,
    /// ...), [`OpenError::Barrier`] when every party row is held by a live party.
    pub fn open(name: &str, parties: u32) -> Result<Barrier, OpenError> {
        Self::open_with(name, parties, SyncOptions::default())
    }

    /// As [`open`](Self::open), with the file mode and lifetime of `opts`.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_with(name: &str, parties: u32, opts: SyncOptions) -> Result<Barrier, OpenError> {
        let raw = RawBarrier::open_or_create(
            &Name::new(name)?,
            parties,
            opts.file_mode(),
            opts.lifetime_of(),
        )
        .map_err(|e| match e {
            BarrierOpenError::Segment(s) => OpenError::Segment(s),
            e => OpenError::Barrier(e),
        })?;
        Ok(Barrier { raw })
    }

    /// Parties per generation.
    pub fn parties(&self) -> u32 {
        self.raw.parties()
    }

    /// Parties that have arrived in the current generation (a snapshot).
    pub fn arrived(&self) -> u32 {
        self.raw.arrived()
    }

    /// Generations completed or broken so far.
    pub fn generation(&self) -> u32 {
        self.raw.generation()
    }

    /// Arrives and waits for every party; `Ok(true)` for the last to arrive (one per
    /// generation).
    ///
    /// # Errors
    ///
    /// [`BarrierError::PartyDied`], [`BarrierError::Lock`], [`BarrierError::UsedAfterFork`].
    pub fn wait(&self) -> Result<bool, BarrierError> {
        self.raw.wait(None)
    }

    /// As [`wait`](Self::wait), for at most `timeout` ([`BarrierError::Timeout`]; the arrival
    /// is withdrawn).
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, BarrierError> {
        self.raw.wait(Some(timeout))
    }
}
