//! Rust errors as the Python exceptions of `shmbus._errors` (the hierarchy lives in Python, so
//! that it can inherit from the built-in exceptions users already catch).

use pyo3::prelude::*;
use shmbus::{ArrayError, NameError, RecvError, SegmentError, UsedAfterFork};
use shmbus_core::pool::PoolLoanError;
use shmbus_core::topic::{LoanError, PublishError, TopicError};

/// An exception of class `class` (a name in `shmbus._errors`) with `args`.
pub(crate) fn raise<'py>(
    py: Python<'py>,
    class: &str,
    args: impl pyo3::call::PyCallArgs<'py>,
) -> PyErr {
    let make = || -> PyResult<PyErr> {
        let cls = py.import("shmbus._errors")?.getattr(class)?;
        Ok(PyErr::from_value(cls.call1(args)?))
    };
    make().unwrap_or_else(|e| e)
}

pub(crate) fn error(py: Python<'_>, class: &str, msg: impl std::fmt::Display) -> PyErr {
    raise(py, class, (msg.to_string(),))
}

pub(crate) fn segment(py: Python<'_>, e: &SegmentError) -> PyErr {
    let class = match e {
        SegmentError::NotFound(_) => "NotFound",
        SegmentError::AlreadyExists(_) => "AlreadyExists",
        SegmentError::OutOfSpace { .. } => "OutOfSpace",
        SegmentError::PermissionDenied(_) => "PermissionDenied",
        SegmentError::WrongKind { .. } | SegmentError::WrongType { .. } => "WrongType",
        SegmentError::Corrupt { .. } | SegmentError::Version { .. } => "Corrupt",
        SegmentError::InvalidSize { .. } => "InvalidArgument",
        SegmentError::Stuck { .. } => "Timeout",
        _ => "Error",
    };
    error(py, class, e)
}

pub(crate) fn name(py: Python<'_>, e: &NameError) -> PyErr {
    error(py, "InvalidName", e)
}

pub(crate) fn array(py: Python<'_>, e: &ArrayError) -> PyErr {
    match e {
        ArrayError::Segment(s) => segment(py, s),
        ArrayError::Name(n) => name(py, n),
        ArrayError::WrongDtype { .. } => error(py, "WrongDtype", e),
        ArrayError::Shape { .. } => error(py, "InvalidArgument", e),
        ArrayError::Corrupt { .. } => error(py, "Corrupt", e),
        ArrayError::ReadOnly(_) => error(py, "PermissionDenied", e),
        _ => error(py, "Error", e),
    }
}

pub(crate) fn topic(py: Python<'_>, e: &TopicError) -> PyErr {
    match e {
        TopicError::Segment(s) => segment(py, s),
        TopicError::Qos { .. } => error(py, "QosMismatch", e),
        TopicError::Config(_) => error(py, "InvalidArgument", e),
        TopicError::Corrupt { .. } => error(py, "Corrupt", e),
        TopicError::TooManySubscribers { .. } | TopicError::TooManyPublishers { .. } => {
            error(py, "OutOfSpace", e)
        }
        _ => error(py, "Error", e),
    }
}

pub(crate) fn fork(py: Python<'_>, e: &UsedAfterFork) -> PyErr {
    error(py, "UsedAfterFork", e)
}

pub(crate) fn loan(py: Python<'_>, e: &LoanError) -> PyErr {
    match e {
        LoanError::UsedAfterFork(f) => fork(py, f),
        LoanError::PoolExhausted(_) => error(py, "OutOfSpace", e),
        _ => error(py, "Error", e),
    }
}

pub(crate) fn publish(py: Python<'_>, e: &PublishError) -> PyErr {
    match e {
        PublishError::Timeout => error(py, "Timeout", e),
        PublishError::UsedAfterFork(f) => fork(py, f),
        _ => error(py, "Error", e),
    }
}

pub(crate) fn pool_loan(py: Python<'_>, e: &PoolLoanError) -> PyErr {
    match e {
        PoolLoanError::Slot(l) => loan(py, l),
        PoolLoanError::Segment(s) => segment(py, s),
        PoolLoanError::Exhausted { .. } => error(py, "OutOfSpace", e),
        PoolLoanError::Shape { .. } => error(py, "InvalidArgument", e),
    }
}

pub(crate) fn recv(py: Python<'_>, e: &RecvError) -> PyErr {
    match e {
        RecvError::Empty => error(py, "Empty", e),
        RecvError::Timeout => error(py, "Timeout", e),
        RecvError::Lagged(n) => raise(py, "Lagged", (*n,)),
        RecvError::Disconnected => error(py, "Disconnected", e),
        RecvError::TooManyHeld(_) => error(py, "TooManyHeld", e),
        RecvError::UsedAfterFork => error(py, "UsedAfterFork", e),
        RecvError::WrongDtype { .. } => error(py, "WrongDtype", e),
        RecvError::Corrupt(_) | RecvError::BadDescriptor { .. } => error(py, "Corrupt", e),
        _ => error(py, "Error", e),
    }
}
