//! The one error type of the crate, carrying Node's error codes.

use std::fmt;

/// An error reported by the async-hooks runtime.
///
/// Every error carries the code Node.js uses for the same mistake (see [`Error::code`]) and a
/// message that says what to do instead.
///
/// ```
/// use async_hooks::AsyncResource;
///
/// let resource = AsyncResource::new("Job");
/// resource.emit_destroy().unwrap();
/// let err = resource.emit_destroy().unwrap_err();
/// assert_eq!(err.code(), "ERR_INVALID_STATE");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// What went wrong, one variant per Node error code.
///
/// ```
/// use async_hooks::{AsyncResource, ErrorKind};
///
/// let r = AsyncResource::new("Job");
/// r.emit_destroy().unwrap();
/// match r.emit_destroy() {
///     Err(e) if e.kind() == ErrorKind::InvalidState => {} // destroyed twice: a bug to fix
///     other => panic!("unexpected: {other:?}"),
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `ERR_ASYNC_TYPE`: a resource type name is invalid (empty while an `init` hook is enabled).
    AsyncType,
    /// `ERR_INVALID_ASYNC_ID`: an async id that was never allocated was passed as a trigger id.
    InvalidAsyncId,
    /// `ERR_INVALID_STATE`: an operation was attempted in a state that does not allow it
    /// (e.g. `emit_destroy` called a second time).
    InvalidState,
}

impl ErrorKind {
    /// Node's error code for this kind, e.g. `"ERR_ASYNC_TYPE"`.
    ///
    /// ```
    /// # use async_hooks::ErrorKind;
    /// assert_eq!(ErrorKind::AsyncType.code(), "ERR_ASYNC_TYPE");
    /// ```
    pub const fn code(self) -> &'static str {
        match self {
            ErrorKind::AsyncType => "ERR_ASYNC_TYPE",
            ErrorKind::InvalidAsyncId => "ERR_INVALID_ASYNC_ID",
            ErrorKind::InvalidState => "ERR_INVALID_STATE",
        }
    }
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// Node's error code, e.g. `"ERR_ASYNC_TYPE"`.
    ///
    /// ```
    /// use async_hooks::{AsyncId, AsyncResource, AsyncResourceOptions};
    ///
    /// let err = AsyncResource::with_options(
    ///     "Job",
    ///     AsyncResourceOptions { trigger_async_id: Some(AsyncId::from_u64(u64::MAX)), ..Default::default() },
    /// )
    /// .unwrap_err();
    /// assert_eq!(err.code(), "ERR_INVALID_ASYNC_ID");
    /// ```
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    /// The kind of error, for matching.
    ///
    /// ```
    /// use async_hooks::{AsyncResource, ErrorKind};
    ///
    /// let r = AsyncResource::new("Job");
    /// r.emit_destroy().unwrap();
    /// assert_eq!(r.emit_destroy().unwrap_err().kind(), ErrorKind::InvalidState);
    /// ```
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.message, self.kind.code())
    }
}

impl std::error::Error for Error {}
