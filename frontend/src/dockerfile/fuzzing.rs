//! One input through every stage a client's Dockerfile reaches: directive
//! detection, parsing, typed instructions, word expansion and conversion
//! to LLB (with an offline image resolver). The fuzz target
//! (`frontend/fuzz`) and the randomised tests call [`exercise`]; any panic
//! is the bug. Errors are fine: hostile input must give errors.

use std::collections::HashMap;

use async_trait::async_trait;
use bk_proto::pb;

use super::convert::{ConvertOptions, ImageResolver, convert};
use super::directives::{detect_syntax, parse_directive};
use super::instructions::instructions;
use super::lint::LintSink;
use super::parser::parse;
use super::shell::Lexer;

/// Answers every image with a small config, never a network call.
struct OfflineImages;

#[async_trait]
impl ImageResolver for OfflineImages {
    async fn resolve(
        &self,
        reference: &str,
        platform: &pb::Platform,
        _mode: &str,
    ) -> Result<(String, Vec<u8>), String> {
        if reference.contains("missing") {
            return Err(format!("{reference}: not found"));
        }
        let config = format!(
            r#"{{"architecture":"{}","os":"{}","config":{{"Env":["PATH=/bin","A=1"],"WorkingDir":"/w","OnBuild":["RUN echo on-build"]}},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#,
            platform.architecture, platform.os
        );
        Ok((format!("sha256:{}", "a".repeat(64)), config.into_bytes()))
    }
}

fn platform(os: &str, arch: &str) -> pb::Platform {
    pb::Platform {
        os: os.to_string(),
        architecture: arch.to_string(),
        ..Default::default()
    }
}

/// Runs `data` through the frontend. Never panics on any input — that is
/// what callers check.
pub async fn exercise(data: &[u8]) {
    let _ = detect_syntax(data);
    let _ = parse_directive("check", data);
    let Ok(parsed) = parse(data) else {
        return;
    };
    if let Ok(df) = instructions(&parsed) {
        let lexer = Lexer::new(parsed.escape);
        let env: HashMap<String, String> = HashMap::from([("A".to_string(), "x y".to_string())]);
        for stage in &df.stages {
            for command in &stage.commands {
                let mut instruction = command.instruction.clone();
                let _ = instruction.expand(&mut |w| lexer.process_word(w, &env));
            }
        }
    }
    let mut opts = ConvertOptions::new(platform("linux", "amd64"), "fuzz");
    opts.lint = Some(LintSink::default());
    opts.build_args
        .insert("A".to_string(), "from-a-build-arg".to_string());
    let _ = convert(data, &opts, &OfflineImages).await;
    opts.target_platform = Some(platform("linux", "arm64"));
    opts.multi_platform = true;
    opts.target = Some("base".to_string());
    let _ = convert(data, &opts, &OfflineImages).await;
}
