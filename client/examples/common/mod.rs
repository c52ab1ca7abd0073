//! What the benchmark examples share: one timed build against a daemon.

use std::time::{Duration, Instant};

use bk_client::Client;
use bk_client::solve_opts::BuildFlags;

/// Connects to `addr` and runs one build of `definition` with `flags`
/// (ref and session ids derived from `id`); returns its wall-clock time.
pub async fn timed_build(
    addr: &str,
    flags: BuildFlags,
    definition: bk_proto::pb::Definition,
    id: &str,
) -> Result<Duration, String> {
    let client = Client::connect(addr, None, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    let prepared = flags
        .to_request(Some(definition), &format!("{id}r"), &format!("{id}s"))
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    client
        .build(prepared, |_| {})
        .await
        .map_err(|e| e.to_string())?;
    Ok(started.elapsed())
}
