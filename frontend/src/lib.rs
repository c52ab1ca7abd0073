//! Frontends and the LLB bridge they, and client-side builds, talk to.
//!
//! [`bridge::Bridge`] is the state behind the `LLBBridge` gRPC API for one
//! build — lazily solved refs, evaluation, `Return`; [`builtin::run`] runs
//! the built-in `dockerfile.v0` over it; [`dockerfile`] parses and converts
//! Dockerfiles; [`subrequest`] answers `requestid=frontend.lint`. Frontend
//! images (`gateway.v0`) come later.

pub mod bridge;
pub mod builtin;
pub mod dockerfile;
pub mod subrequest;

pub use bridge::{Bridge, Returned};
