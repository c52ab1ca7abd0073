//! Any bytes as a Dockerfile: parsing, instructions, expansion and
//! conversion must return errors, never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    runtime.block_on(bk_frontend::dockerfile::fuzzing::exercise(data));
});
