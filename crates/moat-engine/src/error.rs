//! The engine's error type: every crate's error with its cause, and a kind
//! front ends map to their own codes.

pub use moat_core::ErrorKind;

/// Errors of the engine. Each keeps its cause and has a [`ErrorKind`]
/// that front ends map to their own codes (the API to HTTP statuses).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Image store.
    #[error(transparent)]
    Image(#[from] moat_image::ImageError),
    /// Metadata store.
    #[error(transparent)]
    Store(#[from] moat_store::StoreError),
    /// Runtime.
    #[error(transparent)]
    Runtime(#[from] moat_runtime::RuntimeError),
    /// Utility VMs.
    #[error(transparent)]
    Vm(#[from] moat_vm::VmError),
    /// Switches.
    #[error(transparent)]
    Net(#[from] moat_net::NetError),
    /// A lock file.
    #[error(transparent)]
    Lock(#[from] moat_store::LockError),
    /// The connection to a shim failed.
    #[error("shim connection: {0}")]
    Proto(#[from] moat_proto::ProtoError),
    /// Unknown container.
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    /// Unknown switch.
    #[error("network {0} not found")]
    NoSuchSwitch(String),
    /// A registry refused the credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// A registry failed.
    #[error("{0}")]
    Registry(String),
    /// A path or object that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Unknown volume.
    #[error("get {0}: no such volume")]
    NoSuchVolume(String),
    /// Unknown exec instance.
    #[error("No such exec instance: {0}")]
    NoSuchExec(String),
    /// A name clash or a state that forbids the operation.
    #[error("{0}")]
    Conflict(String),
    /// Invalid request.
    #[error("{0}")]
    Invalid(String),
    /// A build step failed (`Step 3/7 : RUN ...` and why).
    #[error("{step}: {cause}")]
    Build {
        /// `step 3/7 (RUN make)`.
        step: String,
        /// Why (its message is part of this one's).
        cause: Box<EngineError>,
    },
    /// The container is not running.
    #[error("{0}")]
    NotRunning(String),
    /// Something this engine (or this host) cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// The shim refused or reported a failure.
    #[error("{0}")]
    Shim(String),
    /// I/O with context.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The container's process could not be started.
    #[error("{message}")]
    Start {
        /// One-line reason.
        message: String,
        /// Exit code recorded.
        code: i32,
    },
}

impl EngineError {
    /// Maps an io error with context.
    pub fn io(ctx: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
        let ctx = ctx.into();
        move |e| EngineError::Io(ctx, e)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        use moat_image::ImageError as I;
        use moat_store::StoreError as S;
        match self {
            Self::Build { cause, .. } => cause.kind(),
            Self::NoSuchContainer(_)
            | Self::NoSuchSwitch(_)
            | Self::NoSuchExec(_)
            | Self::NoSuchVolume(_)
            | Self::NotFound(_) => ErrorKind::NotFound,
            Self::Image(I::NoSuchImage(_)) | Self::Store(S::NoSuchImage(_)) => ErrorKind::NotFound,
            Self::Image(I::Conflict(_)) | Self::Store(S::NameInUse { .. } | S::InUse { .. }) | Self::Conflict(_) => {
                ErrorKind::Conflict
            }
            Self::Image(I::Store(S::NoSpace(_))) | Self::Image(I::NoSpace { .. }) | Self::Store(S::NoSpace(_)) => {
                ErrorKind::NoSpace
            }
            Self::Image(
                I::Reference(_)
                | I::BadArchive(_)
                | I::BadConfig(_)
                | I::Unpack(_)
                | I::Compress(_)
                | I::DigestMismatch { .. },
            ) => ErrorKind::Invalid,
            Self::Store(S::Ambiguous { .. }) | Self::Image(I::Store(S::Ambiguous { .. })) => ErrorKind::Invalid,
            Self::Runtime(moat_runtime::RuntimeError::Invalid(_)) | Self::Invalid(_) => ErrorKind::Invalid,
            Self::Net(moat_net::NetError::Invalid(_)) => ErrorKind::Invalid,
            Self::Net(moat_net::NetError::Exhausted(_)) => ErrorKind::Conflict,
            Self::NotRunning(_) => ErrorKind::NotRunning,
            Self::Unauthorized(_) => ErrorKind::Unauthorized,
            Self::Unsupported(_) => ErrorKind::Unsupported,
            Self::Vm(moat_vm::VmError::NoKernel(_) | moat_vm::VmError::NoAgent(_) | moat_vm::VmError::Missing(..)) => {
                ErrorKind::Unsupported
            }
            Self::Vm(moat_vm::VmError::NotFound(_)) => ErrorKind::NotFound,
            Self::Io(_, e) if e.raw_os_error() == Some(libc::ENOSPC) => ErrorKind::NoSpace,
            _ => ErrorKind::Internal,
        }
    }

    /// The exit code a front end reports for a failed start.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Start { code, .. } | Self::Runtime(moat_runtime::RuntimeError::Start { code, .. }) => *code,
            _ => 125,
        }
    }
}

impl From<moat_sandbox::SandboxError> for EngineError {
    /// A sandbox's error as the engine's variant of the same meaning.
    fn from(e: moat_sandbox::SandboxError) -> Self {
        use moat_sandbox::SandboxError as S;
        match e {
            S::Runtime(e) => Self::Runtime(e),
            S::Vm(e) => Self::Vm(e),
            S::Net(e) => Self::Net(e),
            S::Invalid(m) => Self::Invalid(m),
            S::Unsupported(m) => Self::Unsupported(m),
            S::Conflict(m) => Self::Conflict(m),
            S::Shim(m) => Self::Shim(m),
            S::Io(c, e) => Self::Io(c, e),
            S::Start { message, code } => Self::Start { message, code },
        }
    }
}
