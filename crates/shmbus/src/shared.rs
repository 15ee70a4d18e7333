//! Named shared state: [`Shared`].

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use shmbus_core::layout::{short_type_name, Codec, TypeInfo};
use shmbus_core::name::Name;
use shmbus_core::shared::RawShared;
pub use shmbus_core::shared::SharedError;

use crate::error::OpenError;
use crate::sync::SyncOptions;

/// Why [`Shared::update`] did not store a new version.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// The shared state failed (lock, too large, ...).
    #[error(transparent)]
    Shared(#[from] SharedError),
    /// The current state could not be decoded, or the new one encoded.
    #[error("the state could not be decoded or encoded: {0}")]
    Codec(String),
}

/// A named, bounded serde state shared by every process that opens it, with a version counter.
///
/// [`update`](Self::update) runs a closure on the current state under a robust lock and stores
/// the result as the next version; [`load`](Self::load) returns a consistent snapshot without
/// taking the lock (a seqlock over two buffers of encoded bytes: a reader copies, then checks
/// the version, and never blocks a writer). A writer killed mid-update leaves the last
/// complete version readable and the lock usable. [`wait_changed`](Self::wait_changed) sleeps
/// until a newer version exists.
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use shmbus::Shared;
/// use std::time::Duration;
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq, Default)]
/// struct Config { workers: u32, paused: bool, tags: Vec<String> }
///
/// let name = format!("doc-shared-{}", std::process::id());
/// let cfg = Shared::open_or_create(&name, 1024, &Config::default())?;
/// let v = cfg.update(|c| { c.workers = 4; c.tags.push("night".into()) })?;
/// let (snapshot, version) = cfg.load()?;
/// assert_eq!((snapshot.workers, version), (4, v));
/// // Someone waiting for a change:
/// assert!(cfg.wait_changed(v, Duration::from_millis(1)).is_err()); // none yet
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Shared<T> {
    raw: RawShared,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").field("raw", &self.raw).finish()
    }
}

fn type_info<T>() -> Result<TypeInfo, OpenError> {
    let n = short_type_name::<T>();
    TypeInfo::new(n, 0, 1, Codec::Postcard).ok_or_else(|| OpenError::UnsupportedType {
        type_name: n.to_owned(),
        reason: format!("type names are limited to {} bytes", TypeInfo::MAX_NAME),
    })
}

impl<T: Serialize + DeserializeOwned> Shared<T> {
    /// Opens the shared state `name`, creating it holding `initial` (encoded states of at most
    /// `capacity` bytes) if it does not exist.
    ///
    /// # Errors
    ///
    /// [`OpenError::Name`], [`OpenError::Segment`] (another type under the name, `initial`
    /// too large, ...), [`OpenError::UnsupportedType`] if `initial` cannot be encoded.
    pub fn open_or_create(
        name: &str,
        capacity: usize,
        initial: &T,
    ) -> Result<Shared<T>, OpenError> {
        Self::open_or_create_with(name, capacity, initial, SyncOptions::default())
    }

    /// As [`open_or_create`](Self::open_or_create), with the file mode and lifetime of `opts`.
    ///
    /// # Errors
    ///
    /// As [`open_or_create`](Self::open_or_create).
    pub fn open_or_create_with(
        name: &str,
        capacity: usize,
        initial: &T,
        opts: SyncOptions,
    ) -> Result<Shared<T>, OpenError> {
        let bytes = postcard::to_stdvec(initial).map_err(|e| OpenError::UnsupportedType {
            type_name: short_type_name::<T>().to_owned(),
            reason: e.to_string(),
        })?;
        let raw = RawShared::open_or_create(
            &Name::new(name)?,
            &type_info::<T>()?,
            capacity,
            &bytes,
            opts.file_mode(),
            opts.lifetime_of(),
        )?;
        Ok(Shared {
            raw,
            _t: PhantomData,
        })
    }

    /// Opens the existing shared state `name`.
    ///
    /// # Errors
    ///
    /// As [`open_or_create`](Self::open_or_create), and not found.
    pub fn open(name: &str) -> Result<Shared<T>, OpenError> {
        let raw = RawShared::open(&Name::new(name)?, &type_info::<T>()?)?;
        Ok(Shared {
            raw,
            _t: PhantomData,
        })
    }

    /// The current version (0: the initial state; every update adds 1).
    pub fn version(&self) -> u64 {
        self.raw.version()
    }

    /// A consistent snapshot of the state and its version, without the lock.
    ///
    /// # Errors
    ///
    /// [`UpdateError::Codec`] if the state does not decode as a `T`, [`UpdateError::Shared`].
    pub fn load(&self) -> Result<(T, u64), UpdateError> {
        let mut bytes = Vec::new();
        let v = self.raw.read(&mut bytes)?;
        let t = postcard::from_bytes(&bytes).map_err(|e| UpdateError::Codec(e.to_string()))?;
        Ok((t, v))
    }

    /// Runs `f` on the current state under the lock and stores the result as the next version;
    /// returns that version.
    ///
    /// # Errors
    ///
    /// [`UpdateError::Shared`] (the lock, or a new state larger than the capacity),
    /// [`UpdateError::Codec`]; nothing changes then.
    pub fn update(&self, f: impl FnOnce(&mut T)) -> Result<u64, UpdateError> {
        let r = self.raw.update(|old| {
            let mut t: T = postcard::from_bytes(old).map_err(|e| e.to_string())?;
            f(&mut t);
            postcard::to_stdvec(&t).map_err(|e| e.to_string())
        })?;
        r.map_err(UpdateError::Codec)
    }

    /// Waits until the version differs from `version`, at most `timeout`; returns the newer
    /// version.
    ///
    /// # Errors
    ///
    /// [`SharedError::Timeout`].
    pub fn wait_changed(&self, version: u64, timeout: Duration) -> Result<u64, SharedError> {
        self.raw.wait_changed(version, Some(timeout))
    }
}
