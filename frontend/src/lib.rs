//! Frontends and the LLB bridge they, and client-side builds, talk to.
//!
//! Today this is the bridge ([`bridge::Bridge`]): the state behind the
//! `LLBBridge` gRPC API for one build — lazily solved refs, evaluation,
//! `Return`. The Dockerfile frontend and frontend images arrive here next.

pub mod bridge;
pub mod dockerfile;

pub use bridge::{Bridge, Returned};
