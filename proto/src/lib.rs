//! BuildKit's wire API for buildkit-rs.
//!
//! The `.proto` files under `proto/` are our own, written to be wire-identical
//! to BuildKit's (package, service, method and message names, field numbers
//! and types). `build.rs` compiles them with protox and generates prost types
//! and tonic clients and servers; protobuf maps are `BTreeMap` so encodings are
//! deterministic.
//!
//! Modules mirror protobuf packages, so `moby.buildkit.v1.Control` is
//! [`moby::buildkit::v1::control_server`] and LLB's `pb.Op` is [`pb::Op`].
//! Start from [`moby::buildkit::v1`] (the Control API) and [`pb`] (LLB).

#![allow(clippy::all, missing_docs, rustdoc::all)]

/// The largest gRPC message BuildKit sends or accepts, in either direction.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// HTTP/2 flow-control windows for connections that carry build contexts
/// and sessions. Large windows keep transfers fast, and they raise the h2
/// crate's allowance for small DATA frames waiting to be read (half the
/// connection window): fsutil sends one small frame per file, and a burst
/// of tens of thousands must not look like a flood.
pub const STREAM_WINDOW: u32 = 16 << 20;
/// See [`STREAM_WINDOW`].
pub const CONNECTION_WINDOW: u32 = 64 << 20;

pub mod moby {
    pub mod buildkit {
        pub mod v1 {
            tonic::include_proto!("moby.buildkit.v1");
            pub mod types {
                tonic::include_proto!("moby.buildkit.v1.types");
            }
            pub mod frontend {
                tonic::include_proto!("moby.buildkit.v1.frontend");
            }
            pub mod apicaps {
                tonic::include_proto!("moby.buildkit.v1.apicaps");
            }
            pub mod sourcepolicy {
                tonic::include_proto!("moby.buildkit.v1.sourcepolicy");
                pub mod policysession {
                    tonic::include_proto!("moby.buildkit.v1.sourcepolicy.policysession");
                }
            }
        }
        pub mod secrets {
            pub mod v1 {
                tonic::include_proto!("moby.buildkit.secrets.v1");
            }
        }
    }
    pub mod filesync {
        pub mod v1 {
            tonic::include_proto!("moby.filesync.v1");
        }
    }
    pub mod sshforward {
        pub mod v1 {
            tonic::include_proto!("moby.sshforward.v1");
        }
    }
    pub mod upload {
        pub mod v1 {
            tonic::include_proto!("moby.upload.v1");
        }
    }
    pub mod exporter {
        pub mod v1 {
            tonic::include_proto!("moby.exporter.v1");
        }
    }
}

/// LLB: the build graph's ops (`solver/pb/ops.proto` upstream).
pub mod pb {
    tonic::include_proto!("pb");
}

/// Typed error details, carried as JSON inside `google.protobuf.Any`.
pub mod errdefs {
    tonic::include_proto!("errdefs");
}

/// Stack-trace error detail (JSON-encoded on the wire).
pub mod stack {
    tonic::include_proto!("stack");
}

pub mod fsutil {
    /// fsutil's `Stat` and `Packet`, the filesync wire format.
    pub mod types {
        tonic::include_proto!("fsutil.types");
    }
}

pub mod containerd {
    pub mod services {
        pub mod content {
            /// containerd's content store API (history blobs, client OCI stores).
            pub mod v1 {
                tonic::include_proto!("containerd.services.content.v1");
            }
        }
    }
}

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}
