//! Solver benchmark against any BuildKit daemon: a 200-vertex graph of small
//! file ops (10 chains of 20 `mkfile` steps, merged), solved cold, then fully
//! cached; then 50 concurrent builds whose graphs share 9 of their 10 chains.
//! Prints wall-clock figures (and ratios with `--compare`).
//!
//! ```sh
//! cargo run --release --example bench_solve -- --addr unix:///run/a.sock [--compare unix:///run/b.sock]
//! ```

mod common;

use std::time::{Duration, Instant};

use bk_client::solve_opts::BuildFlags;
use bk_llb::builder::{self, FileActions, State};

const CHAINS: usize = 10;
const STEPS: usize = 20;

/// `CHAINS` chains of `STEPS` mkfile ops, merged; chain 0 is unique to
/// `variant`, the others depend only on `salt`.
fn graph(salt: &str, variant: &str) -> bk_proto::pb::Definition {
    let chains: Vec<State> = (0..CHAINS)
        .map(|c| {
            let tag = if c == 0 {
                format!("{salt}-{variant}")
            } else {
                salt.to_string()
            };
            let mut s = builder::scratch();
            for step in 0..STEPS {
                s = s.file(FileActions::new().mkfile(
                    &format!("/c{c}-s{step}"),
                    0o644,
                    tag.as_bytes(),
                ));
            }
            s
        })
        .collect();
    builder::merge(&chains).marshal()
}

async fn solve(addr: &str, def: bk_proto::pb::Definition, id: &str) -> Result<Duration, String> {
    common::timed_build(addr, BuildFlags::default(), def, id).await
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let mut addrs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--addr" | "--compare" => addrs.push(args.next().ok_or("missing address")?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if addrs.is_empty() {
        return Err("--addr is required".into());
    }
    let salt = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_nanos()
    );
    let vertices = CHAINS * STEPS + 1;
    let mut rows = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let salt = format!("{salt}-{i}");
        let cold = solve(addr, graph(&salt, "main"), &format!("cold{i}")).await?;
        let cached = solve(addr, graph(&salt, "main"), &format!("cached{i}")).await?;
        let started = Instant::now();
        let jobs = (0..50).map(|j| {
            let addr = addr.clone();
            let def = graph(&salt, &format!("job{j}"));
            async move { solve(&addr, def, &format!("conc{i}x{j}")).await }
        });
        for r in futures::future::join_all(jobs).await {
            r?;
        }
        let concurrent = started.elapsed();
        println!(
            "{addr}: {vertices} vertices: cold {:.2}s, cached {:.3}s ({:.2} ms/vertex), 50 concurrent overlapping builds {:.2}s",
            cold.as_secs_f64(),
            cached.as_secs_f64(),
            cached.as_secs_f64() * 1000.0 / vertices as f64,
            concurrent.as_secs_f64()
        );
        rows.push((cold, cached, concurrent));
    }
    if rows.len() == 2 {
        let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        println!(
            "ratio (first / second): cold {:.2}, cached {:.2}, concurrent {:.2}",
            r(rows[0].0, rows[1].0),
            r(rows[0].1, rows[1].1),
            r(rows[0].2, rows[1].2)
        );
    }
    Ok(())
}
