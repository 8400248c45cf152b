//! The complete description of a container process (defined in `moat-spec`).

pub use moat_spec::spec::*;
