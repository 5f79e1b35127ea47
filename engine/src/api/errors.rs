//! The one place where error kinds become gRPC codes (the design's facade section; see
//! README.md): invalid input → INVALID_ARGUMENT naming the field; rule violated →
//! FAILED_PRECONDITION; not an admin → PERMISSION_DENIED; unknown thing → NOT_FOUND; duplicate →
//! ALREADY_EXISTS; concurrency exhausted → ABORTED; log unreachable, or views behind the asked
//! position → UNAVAILABLE; a broken hash chain → DATA_LOSS.

use tonic::Status;

use crate::handler::ExecuteError;
use crate::org::{DecideError, ErrorKind};
use crate::read_side::ReadSideError;

/// A request field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidField {
    pub field: String,
    pub reason: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, reason: impl std::fmt::Display) -> InvalidField {
        InvalidField { field: field.into(), reason: reason.to_string() }
    }
}

impl From<InvalidField> for Status {
    fn from(e: InvalidField) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

impl From<DecideError> for Status {
    fn from(e: DecideError) -> Status {
        let message = e.to_string();
        match e.kind() {
            ErrorKind::InvalidArgument => Status::invalid_argument(message),
            ErrorKind::PermissionDenied => Status::permission_denied(message),
            ErrorKind::NotFound => Status::not_found(message),
            ErrorKind::AlreadyExists => Status::already_exists(message),
            ErrorKind::FailedPrecondition => Status::failed_precondition(message),
        }
    }
}

impl From<ExecuteError> for Status {
    fn from(e: ExecuteError) -> Status {
        match e {
            ExecuteError::Rejected(e) => e.into(),
            ExecuteError::Exhausted { .. } => Status::aborted(e.to_string()),
            ExecuteError::CommandIdReused { .. } => Status::already_exists(e.to_string()),
            ExecuteError::Append(_) | ExecuteError::Read(_) | ExecuteError::Seal(_) => {
                tracing::warn!(error = %e, "command failed on storage");
                Status::unavailable(e.to_string())
            }
            ExecuteError::Chain(_) => {
                tracing::error!(error = %e, "the event log's hash chain is broken");
                Status::data_loss(e.to_string())
            }
        }
    }
}

impl From<ReadSideError> for Status {
    fn from(e: ReadSideError) -> Status {
        match e {
            ReadSideError::NotYetApplied(_) => Status::unavailable(e.to_string()),
            ReadSideError::RebuildRunning => Status::failed_precondition(e.to_string()),
            _ => Status::unavailable(e.to_string()),
        }
    }
}

/// The status of a failed read of the views.
pub fn query(e: qm_projections::QueryError) -> Status {
    {
        match e {
            qm_projections::QueryError::BadPageToken => {
                Status::invalid_argument("invalid page_token")
            }
            qm_projections::QueryError::Storage(_) => Status::unavailable(e.to_string()),
        }
    }
}
