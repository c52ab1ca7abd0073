//! The solver: turns a validated LLB graph into results.
//!
//! Start with [`Solver::solve`]: it announces the graph's vertices to the
//! job's [`Progress`], computes each vertex's cache key from its op and its
//! inputs' keys, takes results from the [`ResultCache`] where it can, and
//! runs the [`Op`]s the [`Worker`] provides for the rest — concurrently, and
//! once per cache key even when several jobs need it. The solver knows
//! nothing of gRPC, snapshots or containers: results are whatever the worker
//! returns.

pub mod progress;
pub mod solver;

pub use progress::{Progress, VertexProgress};
pub use solver::{
    Job, MemoryCache, Op, OpContext, OpError, ResultCache, ResultRef, SolveError, Solver, Worker,
    combine_key,
};
