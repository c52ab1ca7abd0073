//! Prints the LLB of `FROM scratch` + `COPY . /out/` (a `context` local
//! copied into an empty tree), ready for `bkctl build` or `buildctl build`
//! on stdin. Used by `make demo`.

use std::collections::BTreeMap;
use std::io::Write;

use bk_llb::builder::{self, CopyOptions, FileActions};
use prost::Message;

fn main() -> std::io::Result<()> {
    let context =
        builder::local("context", BTreeMap::new()).with_name("[internal] load build context");
    let definition = builder::scratch()
        .file(FileActions::new().copy(&context, "/", "/out/", CopyOptions::default()))
        .with_name("[1/1] COPY . /out/")
        .marshal();
    std::io::stdout().write_all(&definition.encode_to_vec())
}
