//! BuildKit's session: a gRPC connection from the daemon to the build client,
//! tunnelled through the client's own `Control.Session` call, on which the
//! client serves its files, credentials, secrets and SSH agent.
//!
//! The roles are inverted inside the tunnel: the daemon is the HTTP/2 client,
//! the build client the server. [`tunnel`] turns the outer message stream
//! into a byte pipe; [`manager::SessionManager`] is the daemon's side (accept,
//! register by id, wait for, health-check); [`client::ClientSession`] is the
//! build client's side (serve services over the tunnel).

pub mod auth;
pub mod client;
pub mod content;
pub mod filesync;
pub mod manager;
pub mod secrets;
pub mod ssh;
pub mod tunnel;
pub mod upload;

pub use client::{ClientSession, RunningSession};
pub use manager::{Session, SessionError, SessionManager};
