//! Validated names of shmbus objects.
//!
//! A name is what users pass (`"camera.front"`); on disk it becomes the file
//! `/dev/shm/shmbus.camera.front`. Names are 1 to [`Name::MAX_LEN`] bytes of ASCII letters,
//! digits, `_`, `-` and `.`, and do not start with `.` or `-`.
#![deny(unsafe_code)]

use std::fmt;

pub use crate::wire::FILE_PREFIX;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("a shmbus name must not be empty")]
    Empty,
    /// The name is longer than [`Name::MAX_LEN`] bytes.
    #[error("the name is {len} bytes long; the most is {max}")]
    TooLong {
        /// The length given.
        len: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// The name holds a character outside `[A-Za-z0-9_.-]`.
    #[error("the name holds {ch:?} at byte {index}; allowed are ASCII letters, digits, '_', '-' and '.'")]
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        index: usize,
    },
    /// The name starts with `.` or `-`.
    #[error("a name must not start with {0:?}")]
    BadStart(char),
}

/// A validated object name.
///
/// # Examples
///
/// ```
/// use shmbus_core::name::{Name, NameError};
///
/// let n = Name::new("camera.front").unwrap();
/// assert_eq!(n.as_str(), "camera.front");
/// assert_eq!(n.file_name(), "shmbus.camera.front");
/// assert!(matches!(Name::new("a/b"), Err(NameError::InvalidChar { ch: '/', .. })));
/// assert_eq!(Name::new(""), Err(NameError::Empty));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// The longest name accepted, in bytes (the file name adds [`FILE_PREFIX`] and must stay
    /// under the kernel's 255-byte limit).
    pub const MAX_LEN: usize = 200;

    /// The longest name of an object shmbus derives from another (a topic's array pool
    /// segments): the file name stays within the kernel's 255 bytes.
    pub const MAX_DERIVED_LEN: usize = 255 - FILE_PREFIX.len();

    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, NameError> {
        Self::validate(name, Self::MAX_LEN)
    }

    /// The name `self` + `.` + `suffix`, for objects derived from this one (such as the
    /// segments of a topic's array pool). It may exceed [`Name::MAX_LEN`] up to
    /// [`Name::MAX_DERIVED_LEN`].
    ///
    /// ```
    /// use shmbus_core::name::Name;
    /// let topic = Name::new("camera").unwrap();
    /// assert_eq!(topic.child("pool.1f.0").unwrap().as_str(), "camera.pool.1f.0");
    /// ```
    pub fn child(&self, suffix: &str) -> Result<Name, NameError> {
        Self::validate(&format!("{}.{suffix}", self.0), Self::MAX_DERIVED_LEN)
    }

    /// A label naming a file outside the shared-memory directory (`file:PATH`), used only to
    /// name such a segment in errors and logs; it is not a valid name and names no shm file.
    pub(crate) fn label_for_path(path: &std::path::Path) -> Name {
        Name(format!("file:{}", path.display()))
    }

    fn validate(name: &str, max: usize) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > max {
            return Err(NameError::TooLong {
                len: name.len(),
                max,
            });
        }
        for (index, ch) in name.char_indices() {
            if !(ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.')) {
                return Err(NameError::InvalidChar { ch, index });
            }
        }
        match name.as_bytes()[0] {
            b @ (b'.' | b'-') => Err(NameError::BadStart(b as char)),
            _ => Ok(Name(name.to_owned())),
        }
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file name in the shared-memory directory.
    pub fn file_name(&self) -> String {
        format!("{FILE_PREFIX}{}", self.0)
    }

    /// The name behind a file name of the shared-memory directory, if it is a shmbus one.
    pub fn from_file_name(file: &str) -> Option<Name> {
        file.strip_prefix(FILE_PREFIX)
            .and_then(|n| Name::validate(n, Self::MAX_DERIVED_LEN).ok())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        assert!(Name::new("a").is_ok());
        assert!(Name::new("A-b_c.9").is_ok());
        assert_eq!(Name::new(".x"), Err(NameError::BadStart('.')));
        assert_eq!(Name::new("-x"), Err(NameError::BadStart('-')));
        assert_eq!(
            Name::new("é"),
            Err(NameError::InvalidChar { ch: 'é', index: 0 })
        );
        let long = "x".repeat(Name::MAX_LEN + 1);
        assert_eq!(
            Name::new(&long),
            Err(NameError::TooLong { len: 201, max: 200 })
        );
        assert!(Name::new(&long[1..]).is_ok());
        assert_eq!(Name::from_file_name("shmbus.abc").unwrap().as_str(), "abc");
        assert!(Name::from_file_name("other.abc").is_none());
    }
}
