//! The errors of the `shmbus` command, each printed as one line.

use std::io;

use shmbus_core::array::ArrayError;
use shmbus_core::name::NameError;
use shmbus_core::segment::SegmentError;
use shmbus_core::topic::{ReceiveError, TopicError};

use crate::decode::DecodeError;
use crate::spec::SpecError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// No object has this name.
    #[error("no shmbus object named `{name}`{}", did_you_mean(.suggestions))]
    NotFound {
        /// The name asked for.
        name: String,
        /// Existing names close to it, best first.
        suggestions: Vec<String>,
    },
    /// The name is not a valid shmbus name.
    #[error("`{name}` is not a valid shmbus name: {source}")]
    BadName {
        /// What was typed.
        name: String,
        /// Why it is invalid.
        source: NameError,
    },
    /// The object exists but is not a topic.
    #[error("`{name}` is a {kind}, not a topic")]
    NotATopic {
        /// The object.
        name: String,
        /// What it is.
        kind: String,
    },
    /// `rm` refused an object that processes still use.
    #[error("`{name}` is in use by {users}; removing its name would split it (new openers would create another one). Stop them first, or pass --force")]
    InUse {
        /// The object.
        name: String,
        /// Who uses it, in words.
        users: String,
    },
    /// The `--as` spec does not parse.
    #[error("invalid --as layout: {0}")]
    Spec(#[from] SpecError),
    /// The `--as` spec cannot describe this topic's messages.
    #[error("--as does not fit topic `{name}`: {source}")]
    SpecMismatch {
        /// The topic.
        name: String,
        /// Why.
        source: DecodeError,
    },
    /// An argument is out of range.
    #[error("{0}")]
    Usage(String),
    /// A segment could not be opened or read.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// A topic could not be attached.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// An array could not be attached.
    #[error(transparent)]
    Array(#[from] ArrayError),
    /// Receiving failed.
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    /// The shared-memory directory could not be read.
    #[error("cannot list {dir}: {source}")]
    List {
        /// The directory.
        dir: &'static str,
        /// Why.
        source: io::Error,
    },
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(io::Error),
    /// Standard output was closed by its reader: not an error for the user.
    #[error("standard output was closed")]
    BrokenPipe,
}

impl CliError {
    /// An output error, with a closed pipe told apart.
    pub(crate) fn output(e: io::Error) -> CliError {
        if e.kind() == io::ErrorKind::BrokenPipe {
            CliError::BrokenPipe
        } else {
            CliError::Output(e)
        }
    }

    /// The list error for `dir`.
    pub(crate) fn list(source: io::Error) -> CliError {
        CliError::List {
            dir: shmbus_core::wire::SHM_DIR,
            source,
        }
    }
}

fn did_you_mean(suggestions: &[String]) -> String {
    match suggestions {
        [] => String::new(),
        names => {
            let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            format!("; did you mean {}?", quoted.join(", "))
        }
    }
}
