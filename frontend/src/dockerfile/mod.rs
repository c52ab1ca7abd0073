//! The Dockerfile language of BuildKit's `dockerfile.v0` frontend: parsing,
//! typed instructions, variable expansion, and conversion to LLB and an
//! image config.
//!
//! Four steps, each with BuildKit's behaviour and error texts:
//!
//! 1. [`parse`] turns the file into [`Node`]s: directives, comments,
//!    continuation lines, flags, JSON or shell form, heredocs, line numbers
//!    ([`parser`]).
//! 2. [`instructions()`] turns nodes into typed [`Command`]s grouped in
//!    [`Stage`]s, checking flags and arguments ([`instructions`](mod@instructions)).
//! 3. At dispatch time, a [`Lexer`] expands variables in the words each
//!    instruction expands ([`Instruction::expand`], [`shell`]).
//! 4. [`convert()`] does all of the above and turns the stages the target
//!    needs into LLB and an image config ([`convert`](mod@convert)),
//!    running BuildKit's lint rules on the way when asked to
//!    ([`lint`](mod@lint)).
//!
//! Before any of this, the frontend looks for `# syntax=` (to hand the build
//! to a frontend image) and `# check=` with [`detect_syntax`] and
//! [`parse_directive`] ([`directives`]).
//!
//! ```
//! use bk_frontend::dockerfile::{Instruction, Lexer, instructions, parse};
//! use std::collections::HashMap;
//!
//! let parsed = parse(b"FROM alpine AS base\nENV DIR=/app\nWORKDIR ${DIR}/src\n").unwrap();
//! let df = instructions(&parsed).unwrap();
//! let lexer = Lexer::new(parsed.escape);
//! let env = HashMap::from([("DIR".to_owned(), "/app".to_owned())]);
//! let mut workdir = df.stages[0].commands[1].instruction.clone();
//! workdir.expand(&mut |w| lexer.process_word(w, &env)).unwrap();
//! assert_eq!(workdir, Instruction::Workdir("/app/src".to_owned()));
//! ```
//!
//! Input comes from clients and is hostile: nothing here panics, and
//! recursion (nested `${…}`, `ONBUILD ONBUILD …`) is bounded.

pub mod convert;
pub mod directives;
pub mod fuzzing;
pub mod git_ref;
mod golang;
mod graph;
mod image;
pub mod instructions;
mod json;
pub mod lint;
pub mod mounts;
pub mod outline;
pub mod parser;
pub mod shell;

pub use convert::{
    ConvertError, ConvertOptions, Converted, ImageResolver, ResolveMode, SourceMap, convert,
};
pub use directives::{CheckOptions, Directive, FoundDirective, detect_syntax, parse_directive};
pub use image::DEFAULT_PATH_ENV;
pub use instructions::{
    Add, ArgPair, CmdLine, Command, Copy, Dockerfile, FromStage, Healthcheck, Instruction,
    KeyValue, Run, ShellInlineFile, SourceContent, SourcesAndDest, Stage, instructions,
    parse_instruction,
};
pub use lint::{LintSink, LintWarning, Rule, check_options};
pub use mounts::{
    Device, Expander, Mount, MountError, MountType, NetworkMode, SecurityMode, ShareMode,
    parse_device, parse_mount,
};
pub use parser::{Heredoc, LineRange, Node, ParseError, Parsed, Warning, parse};
pub use shell::{Env, ExpandError, Expansion, Lexer, NoEnv};
