//! Context-transfer benchmark against any BuildKit daemon.
//!
//! Builds `FROM scratch` + `COPY . /out/` from a generated context (20,000
//! small files, about 100 MB) with a `local` output: cold, then again with
//! one file changed. Prints wall-clock figures per daemon, and ratios when
//! a second daemon is given. Daemons are alternated run by run.
//!
//! ```sh
//! cargo run --release --example bench_context -- --addr unix:///run/a.sock \
//!     [--compare unix:///run/b.sock] [--files 20000] [--size 5000] [--runs 3]
//! ```
//! For a cold figure, point it at daemons with fresh roots.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bk_client::solve_opts::BuildFlags;
use bk_llb::builder::{self, CopyOptions, FileActions};

struct Args {
    addrs: Vec<String>,
    files: usize,
    size: usize,
    runs: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addrs: Vec::new(),
        files: 20_000,
        size: 5_000,
        runs: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" | "--compare" => args.addrs.push(value()?),
            "--files" => args.files = value()?.parse().map_err(|e| format!("--files: {e}"))?,
            "--size" => args.size = value()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--runs" => args.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.addrs.is_empty() {
        return Err("--addr is required".into());
    }
    Ok(args)
}

fn make_context(dir: &Path, files: usize, size: usize) -> std::io::Result<()> {
    for i in 0..files {
        let sub = dir.join(format!("d{:03}", i % 200));
        std::fs::create_dir_all(&sub)?;
        let mut data = vec![0u8; size];
        for (j, b) in data.iter_mut().enumerate() {
            *b = ((i * 31 + j * 7) % 251) as u8;
        }
        std::fs::write(sub.join(format!("f{i:05}.bin")), data)?;
    }
    Ok(())
}

fn definition() -> bk_proto::pb::Definition {
    let context = builder::local("context", BTreeMap::new());
    builder::scratch()
        .file(FileActions::new().copy(&context, "/", "/out/", CopyOptions::default()))
        .marshal()
}

async fn build(addr: &str, context: &Path, out: &Path, run: usize) -> Result<Duration, String> {
    let flags = BuildFlags {
        local: vec![format!("context={}", context.display())],
        output: vec![format!("type=local,dest={}", out.display())],
        ..Default::default()
    };
    common::timed_build(
        addr,
        flags,
        definition(),
        &format!("bench{}x{run}", std::process::id()),
    )
    .await
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = parse_args()?;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let context = tmp.path().join("context");
    make_context(&context, args.files, args.size).map_err(|e| e.to_string())?;
    println!(
        "context: {} files of {} bytes ({} MB)",
        args.files,
        args.size,
        args.files * args.size / 1_000_000
    );
    let mut cold: Vec<Duration> = Vec::new();
    let mut changed: Vec<Vec<Duration>> = vec![Vec::new(); args.addrs.len()];
    for (i, addr) in args.addrs.iter().enumerate() {
        let out = tmp.path().join(format!("cold{i}"));
        let t = build(addr, &context, &out, 0).await?;
        println!("{addr}: cold {:.2}s", t.as_secs_f64());
        cold.push(t);
    }
    for run in 1..=args.runs {
        std::fs::write(context.join("d000/f00000.bin"), format!("change {run}"))
            .map_err(|e| e.to_string())?;
        for (i, addr) in args.addrs.iter().enumerate() {
            let out = tmp.path().join(format!("run{run}-{i}"));
            let t = build(addr, &context, &out, run).await?;
            changed[i].push(t);
        }
    }
    let medians: Vec<Duration> = changed.into_iter().map(median).collect();
    for (i, addr) in args.addrs.iter().enumerate() {
        println!(
            "{addr}: one file changed, median of {} runs {:.2}s",
            args.runs,
            medians[i].as_secs_f64()
        );
    }
    if args.addrs.len() == 2 {
        println!(
            "ratio (first / second): cold {:.2}, one file changed {:.2}",
            cold[0].as_secs_f64() / cold[1].as_secs_f64(),
            medians[0].as_secs_f64() / medians[1].as_secs_f64()
        );
    }
    Ok(())
}
