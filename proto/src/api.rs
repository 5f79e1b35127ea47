//! The gRPC API, generated from `proto/quartermaster/v1/*.proto` (package `quartermaster.v1`).
//!
//! The `.proto` files are a compatibility boundary: `buf lint` checks them, and fields are only
//! ever added. Handlers live in `qm-engine`'s `api` module; this crate only holds the types.

#[allow(missing_debug_implementations, clippy::all, reason = "generated code")]
pub mod quartermaster {
    pub mod v1 {
        tonic::include_proto!("quartermaster.v1");
    }
}

/// The encoded descriptors of the API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("quartermaster_descriptor");

pub use quartermaster::v1;
