//! LLB, BuildKit's build graph, in Rust.
//!
//! [`Graph::decode`] turns a client's `pb.Definition` into a validated graph
//! of [`Vertex`]es keyed by [`Digest`] (sha256 of each op's bytes exactly as
//! received), refusing malformed input with an error that names the problem.
//! [`name::vertex_name`] gives the display name progress reports use, and
//! [`builder`] writes LLB (deterministically) for frontends and tests.

pub mod builder;
pub mod graph;
pub mod name;

pub use graph::{Digest, Graph, GraphError, Limits, Vertex};
