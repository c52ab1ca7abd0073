//! Compiles every `.proto` under `proto/` with protox (no system `protoc`),
//! then generates prost messages and tonic clients/servers.

use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("proto");
    let mut files = Vec::new();
    collect(&root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=proto");

    let relative: Vec<PathBuf> = files
        .iter()
        .map(|f| f.strip_prefix(&root).map(Path::to_path_buf))
        .collect::<Result<_, _>>()?;
    let descriptors = protox::compile(&relative, [&root])?;

    // Deterministic bytes: maps encode in key order.
    let mut builder = tonic_prost_build::configure().btree_map(".");
    // Payloads that are only passed along stay as reference-counted buffers.
    for path in [
        ".moby.buildkit.v1.BytesMessage.data",
        ".moby.filesync.v1.BytesMessage.data",
        ".fsutil.types.Packet.data",
    ] {
        builder = builder.bytes(path);
    }
    builder.compile_fds(descriptors)?;
    Ok(())
}
