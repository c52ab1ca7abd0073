//! The Dockerfile parser, instructions and expansion, checked against
//! BuildKit's behaviour and messages.
//!
//! `tests/dockerfiles/NAME.Dockerfile` files are parsed and rendered
//! (directives, warnings, nodes as BuildKit's dump, heredocs, stages) and
//! compared with `NAME.expected`; `BLESS=1 cargo test -p bk-frontend --test
//! dockerfile_parser` rewrites the expectations (review the diff!). The
//! other tests pin single behaviours.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use bk_frontend::dockerfile::{
    CheckOptions, Env, Instruction, Lexer, LineRange, MountType, NetworkMode, NoEnv, SecurityMode,
    ShareMode, detect_syntax, instructions, parse, parse_device, parse_directive, parse_mount,
};

fn loc(r: Option<LineRange>) -> String {
    match r {
        Some(r) => format!(" @{}-{}", r.start, r.end),
        None => String::new(),
    }
}

fn render(text: &[u8]) -> String {
    let mut out = String::new();
    let parsed = match parse(text) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(out, "parse error{}: {}", loc(e.location()), e.message());
            return out;
        }
    };
    for d in &parsed.directives {
        let _ = writeln!(out, "directive {}={:?} @{}", d.name, d.value, d.line);
    }
    if parsed.escape != '\\' {
        let _ = writeln!(out, "escape {}", parsed.escape);
    }
    for w in &parsed.warnings {
        let _ = writeln!(out, "warning @{}: {}", w.line, w.short);
    }
    for n in &parsed.nodes {
        let _ = writeln!(out, "{}-{} ({})", n.start_line, n.end_line, n.dump());
        if !n.comments.is_empty() {
            let _ = writeln!(out, "  comments {:?}", n.comments);
        }
        for h in &n.heredocs {
            let _ = writeln!(
                out,
                "  heredoc {:?} fd={} expand={} chomp={} {:?}",
                h.name, h.file_descriptor, h.expand, h.chomp, h.content
            );
        }
    }
    match instructions(&parsed) {
        Err(e) => {
            let _ = writeln!(
                out,
                "instructions error{}: {}",
                loc(e.location()),
                e.message()
            );
        }
        Ok(df) => {
            for a in &df.meta_args {
                let _ = writeln!(out, "meta {:?}", a.instruction);
            }
            for (i, s) in df.stages.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "stage {i} name={:?} base={:?} platform={:?} doc={:?}",
                    s.name, s.base_name, s.platform, s.doc_comment
                );
                for c in &s.commands {
                    let _ = writeln!(out, "  {}: {:?}", c.name, c.instruction);
                }
            }
        }
    }
    out
}

#[test]
fn corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dockerfiles");
    let bless = std::env::var_os("BLESS").is_some();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "Dockerfile").then_some(p)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 30, "corpus went missing");
    let mut failures = Vec::new();
    for path in names {
        let got = render(&std::fs::read(&path).unwrap());
        let expected_path = path.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "{}:\n--- got\n{got}--- want\n{want}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn parse_err(text: &str) -> (String, Option<LineRange>) {
    let e = parse(text.as_bytes()).unwrap_err();
    (e.message().to_owned(), e.location())
}

fn instr_err(text: &str) -> (String, Option<LineRange>) {
    let parsed = parse(text.as_bytes()).unwrap();
    let e = instructions(&parsed).unwrap_err();
    (e.message().to_owned(), e.location())
}

fn lines(start: usize, end: usize) -> Option<LineRange> {
    Some(LineRange { start, end })
}

fn only_command(text: &str) -> Instruction {
    let parsed = parse(format!("FROM scratch\n{text}").as_bytes()).unwrap();
    let mut df = instructions(&parsed).unwrap();
    assert_eq!(df.stages.len(), 1);
    df.stages.remove(0).commands.remove(0).instruction
}

#[test]
fn empty_and_blank_files() {
    assert_eq!(
        parse_err(""),
        ("the Dockerfile cannot be empty".to_owned(), None)
    );
    assert_eq!(
        parse_err("\n\n  \n"),
        ("file with no instructions".to_owned(), lines(3, 3))
    );
    assert_eq!(
        parse_err("# c\n#\n"),
        ("file with no instructions".to_owned(), lines(2, 2))
    );
    // A lone continuation makes an empty instruction, which is unknown.
    let (msg, at) = instr_err("\\\n");
    assert_eq!(
        msg,
        "dockerfile parse error on line 1: unknown instruction: "
    );
    assert_eq!(at, lines(1, 1));
}

#[test]
fn line_length_limit() {
    let ok = format!("FROM scratch\nLABEL a={}\n", "x".repeat(65535 - 8));
    assert!(parse(ok.as_bytes()).is_ok());
    let long = format!("FROM scratch\nLABEL a={}\nRUN x\n", "x".repeat(65536 - 8));
    assert_eq!(
        parse_err(&long),
        (
            "dockerfile line greater than max allowed size of 65535".to_owned(),
            lines(1, 1)
        )
    );
    // Nothing before the long line: BuildKit reports the missing instructions.
    let only = format!("# {}\n", "x".repeat(70000));
    assert_eq!(parse_err(&only).0, "file with no instructions");
}

#[test]
fn directives_reported_and_applied() {
    let parsed = parse(
        b"# syntax=docker/dockerfile:1\n# ESCAPE=`\n# check=skip=all\nFROM a\nRUN x `\n  y\n",
    )
    .unwrap();
    let names: Vec<_> = parsed
        .directives
        .iter()
        .map(|d| (d.name.as_str(), d.value.as_str(), d.line))
        .collect();
    assert_eq!(
        names,
        vec![
            ("syntax", "docker/dockerfile:1", 1),
            ("escape", "`", 2),
            ("check", "skip=all", 3)
        ]
    );
    assert_eq!(parsed.escape, '`');
    assert_eq!(parsed.nodes[1].args, vec!["x   y"]);
    // Directive comments are not instruction comments.
    assert!(parsed.nodes[0].comments.is_empty());

    // Errors carry BuildKit's 0-based count of lines read before them.
    assert_eq!(
        parse_err("# escape=`\n# escape=\\\nFROM a\n"),
        (
            "only one escape parser directive can be used".to_owned(),
            lines(1, 1)
        )
    );
    assert_eq!(
        parse_err("# escape=a\nFROM a"),
        (
            "invalid escape token 'a' does not match ` or \\".to_owned(),
            lines(0, 0)
        )
    );
    // A shebang ends the directives for the parser (not for detection).
    let p = parse(b"#!/usr/bin/env buildctl\n# escape=`\nFROM a\n").unwrap();
    assert!(p.directives.is_empty());
    assert_eq!(p.escape, '\\');
}

#[test]
fn syntax_and_check_detection() {
    let d = detect_syntax(b"#!/bin/sh\n# syntax = example.com/front:v1 --opt\nFROM a\n").unwrap();
    assert_eq!(
        (d.name.as_str(), d.cmdline.as_str(), d.line),
        ("example.com/front:v1", "example.com/front:v1 --opt", 2)
    );
    assert_eq!(
        detect_syntax(b"// syntax=js/front\nx").unwrap().name,
        "js/front"
    );
    assert_eq!(
        detect_syntax(b"{\"syntax\": \"json/front\"}").unwrap().name,
        "json/front"
    );
    assert!(detect_syntax(b"FROM a\n# syntax=late\n").is_none());
    assert!(detect_syntax(b"  # syntax=indented\n").is_none());

    let check = parse_directive(
        "check",
        b"# check=skip=StageNameCasing,FromAsCasing;error=true\nFROM a",
    )
    .unwrap();
    let opts = CheckOptions::parse(&check.name).unwrap();
    assert_eq!(opts.skip_rules, vec!["StageNameCasing", "FromAsCasing"]);
    assert!(opts.error && !opts.skip_all);
    let opts = CheckOptions::parse("skip=all;experimental=all").unwrap();
    assert!(opts.skip_all && opts.experimental_all);
    assert_eq!(CheckOptions::parse("").unwrap(), CheckOptions::default());
}

#[test]
fn line_ranges_on_nodes_and_errors() {
    let text = "FROM a\n\n# c\nRUN one \\\n  two \\\n  three\nCOPY <<EOF /x\nbody\nEOF\nENV a=b\n";
    let parsed = parse(text.as_bytes()).unwrap();
    let ranges: Vec<_> = parsed
        .nodes
        .iter()
        .map(|n| (n.start_line, n.end_line))
        .collect();
    assert_eq!(ranges, vec![(1, 1), (4, 6), (7, 9), (10, 10)]);
    assert_eq!(parsed.nodes[1].comments, vec!["c"]);

    assert_eq!(
        parse_err("FROM a\nRUN <<EOF\nline\n"),
        ("unterminated heredoc".to_owned(), lines(2, 3))
    );
    assert_eq!(
        parse_err("FROM a\nENV \\\n  ONLYKEY\n"),
        ("ENV must have two arguments".to_owned(), lines(2, 3))
    );
    assert_eq!(
        instr_err("FROM a\nRUN ok\nCOPY --chown \\\n  a b\n"),
        (
            "dockerfile parse error on line 3: missing a value on flag: --chown".to_owned(),
            lines(3, 4)
        )
    );
}

#[test]
fn instruction_errors() {
    let cases: &[(&str, &str)] = &[
        ("FROM", "FROM requires either one or three arguments"),
        ("FROM a AS", "FROM requires either one or three arguments"),
        (
            "FROM a FROM b",
            "FROM requires either one or three arguments",
        ),
        (
            "FROM a AS b_ad!",
            "invalid name for build stage: \"b_ad!\", name can't start with a number or contain symbols",
        ),
        ("FROM --platform a", "missing a value on flag: --platform"),
        (
            "FROM --plaform=x a",
            "unknown flag: --plaform (did you mean platform?)",
        ),
        (
            "FROM a\nMAINTAINER",
            "MAINTAINER requires exactly one argument",
        ),
        ("FROM a\nWORKDIR", "WORKDIR requires exactly one argument"),
        ("FROM a\nUSER", "USER requires exactly one argument"),
        (
            "FROM a\nSTOPSIGNAL",
            "STOPSIGNAL requires exactly one argument",
        ),
        ("FROM a\nENV", "ENV requires at least one argument"),
        ("FROM a\nLABEL", "LABEL requires at least one argument"),
        ("FROM a\nONBUILD", "ONBUILD requires at least one argument"),
        (
            "FROM a\nHEALTHCHECK",
            "HEALTHCHECK requires at least one argument",
        ),
        ("FROM a\nEXPOSE", "EXPOSE requires at least one argument"),
        ("FROM a\nVOLUME", "VOLUME requires at least one argument"),
        ("FROM a\nVOLUME []", "VOLUME requires at least one argument"),
        (
            "FROM a\nVOLUME [\"\"]",
            "VOLUME specified can not be an empty string",
        ),
        ("FROM a\nARG", "ARG requires at least one argument"),
        ("FROM a\nARG =x", "ARG names can not be blank"),
        ("FROM a\nENV =x", "ENV names can not be blank"),
        ("FROM a\nSHELL", "SHELL requires at least one argument"),
        ("FROM a\nSHELL []", "SHELL requires at least one argument"),
        (
            "FROM a\nSHELL sh -c",
            "SHELL requires the arguments to be in JSON form",
        ),
        (
            "FROM a\nADD a",
            "ADD requires at least two arguments, but only one was provided. Destination could not be determined",
        ),
        (
            "FROM a\nCOPY a",
            "COPY requires at least two arguments, but only one was provided. Destination could not be determined",
        ),
        (
            "FROM a\nCOPY a <<EOF\nEOF",
            "COPY cannot accept a heredoc as a destination",
        ),
        (
            "FROM a\nADD a <<-X\nX",
            "ADD cannot accept a heredoc as a destination",
        ),
        (
            "FROM a\nONBUILD ONBUILD RUN x",
            "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
        ),
        (
            "FROM a\nONBUILD FROM b",
            "FROM isn't allowed as an ONBUILD trigger",
        ),
        (
            "FROM a\nonbuild maintainer me",
            "MAINTAINER isn't allowed as an ONBUILD trigger",
        ),
        ("FROM a\nMAINTAINER --boo joe", "unknown flag: --boo"),
        (
            "FROM a\nCOPY --from=a --from=b x y",
            "duplicate flag specified: --from",
        ),
        (
            "FROM a\nCOPY --link=maybe x y",
            "expecting boolean value for flag --link, not: maybe",
        ),
        (
            "FROM a\nCOPY --link= x y",
            "missing a value on flag: --link",
        ),
        (
            "FROM a\nCOPY --chown x y",
            "missing a value on flag: --chown",
        ),
        (
            "FROM a\nCOPY --exclude x y",
            "missing a value on flag: --exclude",
        ),
        ("FROM a\nCOPY --checksum=x a b", "unknown flag: --checksum"),
        ("FROM a\nADD --from=x a b", "unknown flag: --from"),
        (
            "FROM a\nCOPY --chmown=1 a b",
            "unknown flag: --chmown (did you mean chown?)",
        ),
        (
            "FROM a\nRUN --mont=type=cache x",
            "unknown flag: --mont (did you mean mount?)",
        ),
        (
            "FROM a\nRUN --network=bridge x",
            "invalid network mode \"bridge\"",
        ),
        (
            "FROM a\nRUN --security=privileged x",
            "security \"privileged\" is not valid",
        ),
        (
            "FROM a\nRUN --mount=type=cache,\\\"bad x",
            "failed to parse csv mounts: parse error on line 1, column 13: extraneous or missing \" in quoted-field",
        ),
        ("FROM a\nRUN --mount= x", "failed to parse csv mounts: EOF"),
        (
            "FROM a\nRUN --mount=from=${X} x",
            "'from' doesn't support variable expansion, define alias stage instead",
        ),
        (
            "FROM a\nRUN --device=a,b x",
            "invalid field 'b' must be a key=value pair",
        ),
        (
            "FROM a\nRUN --device=name=a,name=b x",
            "device name already set to a",
        ),
        (
            "FROM a\nRUN --device=a,requird=1 x",
            "unexpected key 'requird' in 'requird=1' (did you mean required?)",
        ),
        (
            "FROM a\nHEALTHCHECK NONE x",
            "HEALTHCHECK NONE takes no arguments",
        ),
        (
            "FROM a\nHEALTHCHECK CMD",
            "Missing command after HEALTHCHECK CMD",
        ),
        (
            "FROM a\nHEALTHCHECK CONNECT tcp",
            "Unknown type \"CONNECT\" in HEALTHCHECK (try CMD)",
        ),
        (
            "FROM a\nHEALTHCHECK --timeout=1us CMD x",
            "Interval \"timeout\" cannot be less than 1ms",
        ),
        (
            "FROM a\nHEALTHCHECK --start-period=-1s CMD x",
            "Interval \"start-period\" cannot be less than 1ms",
        ),
        (
            "FROM a\nHEALTHCHECK --interval=5 CMD x",
            "time: missing unit in duration \"5\"",
        ),
        (
            "FROM a\nHEALTHCHECK --interval=5parsecs CMD x",
            "time: unknown unit \"parsecs\" in duration \"5parsecs\"",
        ),
        (
            "FROM a\nHEALTHCHECK --retries=-1 CMD x",
            "--retries cannot be negative (-1)",
        ),
        (
            "FROM a\nHEALTHCHECK --retries=many CMD x",
            "strconv.ParseInt: parsing \"many\": invalid syntax",
        ),
        (
            "FROM a\nHEALTHCHECK --retries=3000000000 CMD x",
            "strconv.ParseInt: parsing \"3000000000\": value out of range",
        ),
        (
            "FROM a\nHEALTHCHECK --retris=1 CMD x",
            "unknown flag: --retris (did you mean retries?)",
        ),
        (
            "FROM a\nHEALTHCHECK --retry=1 CMD x",
            "unknown flag: --retry",
        ),
        ("FROM a\nENV --x=1 a=b", "unknown flag: --x"),
        (
            "FROM a\nFORM b",
            "unknown instruction: FORM (did you mean FROM?)",
        ),
        (
            "FROM a\ncopyy a b",
            "unknown instruction: copyy (did you mean copy?)",
        ),
        (
            "FROM a\nRunn x",
            "unknown instruction: Runn (did you mean run?)",
        ),
        (
            "FROM a\nWORKDIRS /x",
            "unknown instruction: WORKDIRS (did you mean WORKDIR?)",
        ),
        ("FROM a\nFETCH x", "unknown instruction: FETCH"),
    ];
    for (text, want) in cases {
        let parsed = parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let err = instructions(&parsed).expect_err(text);
        let line = parsed.nodes.last().map_or(1, |n| n.start_line);
        assert_eq!(
            err.message(),
            format!("dockerfile parse error on line {line}: {want}"),
            "{text:?}"
        );
        assert_eq!(err.location().map(|l| l.start), Some(line), "{text:?}");
    }
}

#[test]
fn parse_level_errors() {
    assert_eq!(
        parse_err("FROM a\nRUN [\"a\", {\"b\": 1}]").0,
        "when using JSON array syntax, arrays must be comprised of strings only"
    );
    assert_eq!(
        parse_err("FROM a\nLABEL a=b c").0,
        "Syntax error - can't find = in \"c\". Must be of the form: name=value"
    );
    assert_eq!(
        parse_err("FROM a\nLABEL onlykey").0,
        "LABEL must have two arguments"
    );
    // A line that does not lex has no heredocs: the body lines are
    // instructions of their own.
    let parsed = parse(b"FROM a\nRUN <<EOF 'open\nEOF\n").unwrap();
    assert!(parsed.nodes[1].heredocs.is_empty());
    assert_eq!(parsed.nodes[2].value, "EOF");
}

#[test]
fn flags_and_flag_quirks() {
    // Flags take quotes and escapes; STOPSIGNAL and ARG ignore flags, as in
    // BuildKit; HEALTHCHECK NONE too.
    let parsed = parse(b"FROM a\nCOPY --chown=\"a b\" --chmod=7\\55 x y\nSTOPSIGNAL --whatever 9\nARG --nope X\nHEALTHCHECK --bogus NONE\n").unwrap();
    assert_eq!(parsed.nodes[1].flags, vec!["--chown=a b", "--chmod=755"]);
    let df = instructions(&parsed).unwrap();
    let cmds = &df.stages[0].commands;
    match &cmds[0].instruction {
        Instruction::Copy(c) => assert_eq!((c.chown.as_str(), c.chmod.as_str()), ("a b", "755")),
        other => panic!("{other:?}"),
    }
    assert_eq!(cmds[1].instruction, Instruction::StopSignal("9".into()));
    match &cmds[2].instruction {
        Instruction::Arg(a) => assert_eq!(a[0].key, "X"),
        other => panic!("{other:?}"),
    }
    match &cmds[3].instruction {
        Instruction::Healthcheck(h) => assert_eq!(h.test, vec!["NONE"]),
        other => panic!("{other:?}"),
    }
    // Repeated string-list flags accumulate; `--flag` alone means true.
    match only_command("COPY --exclude=a --exclude=b --link --parents=FALSE x y") {
        Instruction::Copy(c) => {
            assert_eq!(c.exclude_patterns, vec!["a", "b"]);
            assert!(c.link && !c.parents);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn run_instruction() {
    match only_command(
        "RUN --mount=type=cache,target=/c --network=host --mount=type=tmpfs,target=/t,size=64m echo hi",
    ) {
        Instruction::Run(r) => {
            assert_eq!(r.cmd.cmd_line, vec!["echo hi"]);
            assert!(r.cmd.prepend_shell);
            assert_eq!(r.network, NetworkMode::Host);
            assert_eq!(r.security, SecurityMode::Sandbox);
            assert_eq!(r.flags_used, vec!["mount", "network"]);
            let mut id = |w: &str| Ok(w.to_owned());
            let mounts = r.mounts(Some(&mut id)).unwrap();
            assert_eq!(mounts[0].mount_type, MountType::Cache);
            assert!(!mounts[0].read_only);
            assert_eq!(mounts[1].size_limit, 64 << 20);
        }
        other => panic!("{other:?}"),
    }
    match only_command("RUN [\"a\", \"b c\"]") {
        Instruction::Run(r) => {
            assert_eq!(r.cmd.cmd_line, vec!["a", "b c"]);
            assert!(!r.cmd.prepend_shell);
        }
        other => panic!("{other:?}"),
    }
    match only_command("RUN <<A <<-B\none\nA\n\ttwo\n\tB") {
        Instruction::Run(r) => {
            assert_eq!(r.cmd.cmd_line, vec!["<<A <<-B"]);
            let files: Vec<_> = r
                .cmd
                .files
                .iter()
                .map(|f| (f.name.as_str(), f.data.as_str(), f.chomp, f.expand))
                .collect();
            assert_eq!(
                files,
                vec![("A", "one\n", false, true), ("B", "\ttwo\n", true, true)]
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn mounts_fully_parsed() {
    let mut id = |w: &str| Ok(w.to_owned());
    let m = parse_mount(
        "type=secret,id=tok,target=/run/t,required,mode=0400,uid=1000,gid=2000,env=TOKEN",
        Some(&mut id),
    )
    .unwrap();
    assert_eq!(m.mount_type, MountType::Secret);
    assert_eq!((m.cache_id.as_str(), m.target.as_str()), ("tok", "/run/t"));
    assert!(m.required && m.read_only);
    assert_eq!(
        (m.mode, m.uid, m.gid),
        (Some(0o400), Some(1000), Some(2000))
    );
    assert_eq!(m.env.as_deref(), Some("TOKEN"));

    let m = parse_mount(
        "type=cache,id=go,dst=/go,sharing=locked,from=base,src=/cache,ro",
        Some(&mut id),
    )
    .unwrap();
    assert_eq!(m.cache_sharing, Some(ShareMode::Locked));
    assert_eq!(
        (m.from.as_str(), m.source.as_str(), m.target.as_str()),
        ("base", "/cache", "/go")
    );
    assert!(m.read_only);
    let m = parse_mount("target=/src,destination=/dst,readwrite=true", Some(&mut id)).unwrap();
    assert_eq!(
        (m.mount_type, m.target.as_str(), m.read_only),
        (MountType::Bind, "/dst", false)
    );
    let m = parse_mount("type=ssh,required=false,readonly=false", Some(&mut id)).unwrap();
    assert!(!m.required && !m.read_only);
    let m = parse_mount("TYPE=Tmpfs,Target=/t", Some(&mut id)).unwrap();
    assert_eq!(m.mount_type, MountType::Tmpfs);

    // Values are expanded before they are checked.
    let env = HashMap::from([("DIR".to_owned(), "/cache".to_owned())]);
    let lexer = Lexer::new('\\');
    let mut expand = |w: &str| lexer.process_word(w, &env);
    let m = parse_mount("type=cache,target=${DIR}/go", Some(&mut expand)).unwrap();
    assert_eq!(m.target, "/cache/go");
    let err = parse_mount("type=cache,target=${NOPE:?unset}", Some(&mut expand)).unwrap_err();
    assert_eq!(err.0, "failed to process \"${NOPE:?unset}\": NOPE: unset");

    let errors: &[(&str, &str)] = &[
        (
            "type=bnd",
            "unsupported mount type \"bnd\" (did you mean bind?)",
        ),
        (
            "type=cache,sharing=shred",
            "unsupported sharing value \"shred\" (did you mean shared?)",
        ),
        (
            "type=cache,trget=/x",
            "unexpected key 'trget' in 'trget=/x' (did you mean target?)",
        ),
        (
            "type=cache,colour=red",
            "unexpected key 'colour' in 'colour=red'",
        ),
        (
            "type=bind,required",
            "unexpected key 'required' for mount type 'bind'",
        ),
        (
            "type=cache,required=true",
            "unexpected key 'required' for mount type 'cache'",
        ),
        (
            "type=cache,size=1m",
            "unexpected key 'size' for mount type 'cache'",
        ),
        ("type=tmpfs,size=lots", "invalid value for size: lots"),
        ("ro=maybe", "invalid value for ro: maybe"),
        ("type=cache,mode=999", "invalid value 999 for mode"),
        ("type=cache,uid=-1", "invalid value -1 for uid"),
        ("type=cache,gid=x", "invalid value x for gid"),
        (
            "type=bind,mode=0644",
            "mode not allowed for \"bind\" type mounts",
        ),
        (
            "type=tmpfs,uid=1",
            "uid not allowed for \"tmpfs\" type mounts",
        ),
        (
            "type=bind,gid=1",
            "gid not allowed for \"bind\" type mounts",
        ),
        (
            "type=secret,id=a,from=b",
            "secret mount should not have a from",
        ),
        (
            "type=secret,id=a,sharing=shared",
            "secret mount should not define sharing",
        ),
        (
            "type=secret",
            "invalid secret mount. one of source, target required",
        ),
        (
            "type=secret,source=a,id=b",
            "both source and id can't be set",
        ),
        (
            "type=bind,sharing=private",
            "invalid cache sharing set for bind mount",
        ),
        (
            "type=cache,nonsense",
            "invalid field 'nonsense' must be a key=value pair",
        ),
    ];
    for (spec, want) in errors {
        let err = parse_mount(spec, Some(&mut id)).unwrap_err();
        assert_eq!(err.0, *want, "{spec}");
    }
    // Without an expander (parse time) only syntax and `from` are checked.
    let m = parse_mount("type=bnd,mode=x", None).unwrap();
    assert_eq!((m.mount_type, m.read_only), (MountType::Bind, true));
    assert!(parse_mount("from=stage$", None).is_ok());
}

#[test]
fn devices() {
    let d = parse_device("vendor.com/gpu=all,required").unwrap();
    assert_eq!((d.name.as_str(), d.required), ("vendor.com/gpu=all", true));
    let d = parse_device("name=x,required=false").unwrap();
    assert_eq!((d.name.as_str(), d.required), ("x", false));
    assert_eq!(
        parse_device("x,required=perhaps").unwrap_err().0,
        "invalid value for required: perhaps"
    );
    assert_eq!(
        parse_device("").unwrap_err().0,
        "failed to parse csv devices: EOF"
    );
}

#[test]
fn healthcheck_and_cmds() {
    match only_command(
        "HEALTHCHECK --interval=1m30s --timeout=0s --start-period=1.5s --retries=0 CMD [\"x\"]",
    ) {
        Instruction::Healthcheck(h) => {
            assert_eq!(h.test, vec!["CMD", "x"]);
            assert_eq!(h.interval, Duration::from_secs(90));
            assert_eq!(h.timeout, Duration::ZERO);
            assert_eq!(h.start_period, Duration::from_millis(1500));
            assert_eq!(h.retries, 0);
        }
        other => panic!("{other:?}"),
    }
    match only_command("HEALTHCHECK cmd   curl  x") {
        Instruction::Healthcheck(h) => assert_eq!(h.test, vec!["CMD-SHELL", "curl  x"]),
        other => panic!("{other:?}"),
    }
    match only_command("ENTRYPOINT []") {
        Instruction::Entrypoint(c) => assert!(c.cmd_line.is_empty() && !c.prepend_shell),
        other => panic!("{other:?}"),
    }
    match only_command("CMD echo  two  spaces") {
        Instruction::Cmd(c) => assert_eq!(c.cmd_line, vec!["echo  two  spaces"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        only_command("EXPOSE 80 443/tcp 1000"),
        Instruction::Expose(vec!["1000".into(), "443/tcp".into(), "80".into()])
    );
    assert_eq!(
        only_command("ONBUILD  run echo hi"),
        Instruction::Onbuild("run echo hi".into())
    );
    assert_eq!(
        only_command("ONBUILD RUN <<EOF\nx\nEOF"),
        Instruction::Onbuild("RUN <<EOF\nx\nEOF".into())
    );
}

#[test]
fn stages_and_meta_args() {
    let text = "# v picks the version\nARG v=1\nARG other\n# app is the final stage\nFROM --platform=$BUILDPLATFORM img:${v} AS App\nARG v\nRUN x\nFROM app\n";
    let df = instructions(&parse(text.as_bytes()).unwrap()).unwrap();
    assert_eq!(df.meta_args.len(), 2);
    match &df.meta_args[0].instruction {
        Instruction::Arg(a) => {
            assert_eq!((a[0].key.as_str(), a[0].value.as_deref()), ("v", Some("1")));
            assert_eq!(a[0].doc_comment, "picks the version");
        }
        other => panic!("{other:?}"),
    }
    let s = &df.stages[0];
    assert_eq!(s.name.as_deref(), Some("app"));
    assert_eq!(
        (s.base_name.as_str(), s.platform.as_str()),
        ("img:${v}", "$BUILDPLATFORM")
    );
    assert_eq!(s.doc_comment, "is the final stage");
    assert_eq!(s.orig_cmd, "FROM");
    assert_eq!(s.location, LineRange { start: 5, end: 5 });
    assert_eq!(s.commands.len(), 2);
    assert_eq!(df.stages[1].name, None);
    assert_eq!(df.stages[1].base_name, "app");
}

/// The words each instruction expands, and how.
#[test]
fn instruction_expansion() {
    let text = "FROM a\nENV A=\"x y\" B=$HOME/b\nLABEL \"k$N\"=v\nADD --chown=$U --checksum=$C $SRC ${DEST:-/d}\nCOPY --from=$STAGE --chmod=$M <<F $DEST\n$HOME\nF\nWORKDIR $HOME\nUSER ${U}:g\nVOLUME $HOME /v\nSTOPSIGNAL $SIG\nCMD echo $HOME\nEXPOSE $P\n";
    let df = instructions(&parse(text.as_bytes()).unwrap()).unwrap();
    let env: HashMap<String, String> = [
        ("HOME", "/root"),
        ("N", "1"),
        ("U", "u"),
        ("C", "sha256:x"),
        ("SRC", "s"),
        ("DEST", "/dst"),
        ("M", "644"),
        ("SIG", "9"),
        ("P", "80 443"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let lexer = Lexer::new('\\');
    let raw_lexer = Lexer {
        skip_process_quotes: true,
        ..Lexer::new('\\')
    };
    let mut got = Vec::new();
    for c in &df.stages[0].commands {
        let mut i = c.instruction.clone();
        i.expand(&mut |w| lexer.process_word(w, &env)).unwrap();
        i.expand_raw(&mut |w| raw_lexer.process_word(w, &env))
            .unwrap();
        got.push((c.instruction.expands(), i));
    }
    let kv = |k: &str, v: &str| bk_frontend::dockerfile::KeyValue {
        key: k.into(),
        value: v.into(),
        no_delim: false,
    };
    assert_eq!(
        got[0],
        (
            true,
            Instruction::Env(vec![kv("A", "x y"), kv("B", "/root/b")])
        )
    );
    assert_eq!(got[1], (true, Instruction::Label(vec![kv("k1", "v")])));
    match &got[2].1 {
        Instruction::Add(a) => {
            assert_eq!((a.chown.as_str(), a.checksum.as_str()), ("u", "sha256:x"));
            assert_eq!(
                (a.sources.source_paths.clone(), a.sources.dest_path.as_str()),
                (vec!["s".to_owned()], "/dst")
            );
        }
        other => panic!("{other:?}"),
    }
    match &got[3].1 {
        Instruction::Copy(c) => {
            // COPY --from is not expanded this way (BuildKit resolves it
            // against stages and build args).
            assert_eq!((c.from.as_str(), c.chmod.as_str()), ("$STAGE", "644"));
            assert_eq!(c.sources.dest_path, "/dst");
            assert_eq!(c.sources.source_contents[0].data, "/root\n");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(got[4].1, Instruction::Workdir("/root".into()));
    assert_eq!(got[5].1, Instruction::User("u:g".into()));
    assert_eq!(
        got[6].1,
        Instruction::Volume(vec!["/root".into(), "/v".into()])
    );
    assert_eq!(got[7].1, Instruction::StopSignal("9".into()));
    // CMD is left for the shell; EXPOSE is split with process_words.
    assert!(!got[8].0);
    match &got[8].1 {
        Instruction::Cmd(c) => assert_eq!(c.cmd_line, vec!["echo $HOME"]),
        other => panic!("{other:?}"),
    }
    match &got[9].1 {
        Instruction::Expose(p) => {
            assert_eq!(lexer.process_words(&p[0], &env).unwrap(), vec!["80", "443"]);
        }
        other => panic!("{other:?}"),
    }
}

fn expand(word: &str, env: &[(&str, &str)]) -> Result<String, String> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Lexer::new('\\')
        .process_word(word, &env)
        .map_err(|e| e.to_string())
}

#[test]
fn expansion_operators() {
    let env = [
        ("SET", "value"),
        ("EMPTY", ""),
        ("PATHV", "/usr/local/lib/libx.so.1"),
        ("SP", "a  b"),
    ];
    let ok: &[(&str, &str)] = &[
        ("$SET", "value"),
        ("${SET}", "value"),
        ("$UNSET", ""),
        ("x$SET.y", "xvalue.y"),
        ("$", "$"),
        ("$.x", "$.x"),
        ("$1x", "x"),
        ("${UNSET:-dflt}", "dflt"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        ("${SET:-dflt}", "value"),
        ("${UNSET:+alt}", ""),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${SET:+alt-$SET}", "alt-value"),
        ("${EMPTY?msg}", ""),
        ("${SET:?msg}", "value"),
        ("${PATHV#*/}", "usr/local/lib/libx.so.1"),
        ("${PATHV##*/}", "libx.so.1"),
        ("${PATHV%.*}", "/usr/local/lib/libx.so"),
        ("${PATHV%%.*}", "/usr/local/lib/libx"),
        ("${PATHV#/usr}", "/local/lib/libx.so.1"),
        ("${PATHV%nomatch}", "/usr/local/lib/libx.so.1"),
        ("${PATHV/l/L}", "/usr/Local/lib/libx.so.1"),
        ("${PATHV//l/L}", "/usr/LocaL/Lib/Libx.so.1"),
        ("${PATHV//\\//:}", ":usr:local:lib:libx.so.1"),
        ("${PATHV/#/x}", "/usr/local/lib/libx.so.1"),
        ("${UNSET:-${SET:-no}}", "value"),
        ("'$SET'", "$SET"),
        ("\"$SET\"", "value"),
        ("\"a\\\"b\\$c\\d\"", "a\"b$c\\d"),
        ("\\$SET", "$SET"),
        ("a\\ b", "a b"),
        ("trailing\\", "trailing"),
        ("${SP}", "a  b"),
        ("${SET/a*/[$0]}", "v[]"),
        ("${SET//a*/[\\$0]}", "v[\\alue]"),
    ];
    for (word, want) in ok {
        assert_eq!(expand(word, &env).as_deref(), Ok(*want), "{word}");
    }
    let err: &[(&str, &str)] = &[
        (
            "${UNSET:?}",
            "failed to process \"${UNSET:?}\": UNSET: is not allowed to be unset",
        ),
        (
            "${EMPTY:?}",
            "failed to process \"${EMPTY:?}\": EMPTY: is not allowed to be empty",
        ),
        (
            "${UNSET?custom $SET}",
            "failed to process \"${UNSET?custom $SET}\": UNSET: custom value",
        ),
        (
            "${SET",
            "failed to process \"${SET\": unsupported modifier (\u{fffd}) in substitution",
        ),
        (
            "${SET:-x",
            "failed to process \"${SET:-x\": syntax error: missing '}'",
        ),
        (
            "${}",
            "failed to process \"${}\": syntax error: bad substitution",
        ),
        (
            "${:-x}",
            "failed to process \"${:-x}\": syntax error: bad substitution",
        ),
        ("${", "failed to process \"${\": syntax error: missing '}'"),
        (
            "${SET:=x}",
            "failed to process \"${SET:=x}\": unsupported modifier (:=) in substitution",
        ),
        (
            "${SET:#x}",
            "failed to process \"${SET:#x}\": unsupported modifier (:#) in substitution",
        ),
        (
            "${SET^^}",
            "failed to process \"${SET^^}\": unsupported modifier (^) in substitution",
        ),
        (
            "${SET/x}",
            "failed to process \"${SET/x}\": syntax error: missing '/' in ${}",
        ),
        (
            "${SET#\\x}",
            "failed to process \"${SET#\\\\x}\": invalid pattern (\\x) in substitution: invalid escape '\\x'",
        ),
        (
            "'open",
            "failed to process \"'open\": unexpected end of statement while looking for matching single-quote",
        ),
        (
            "\"open",
            "failed to process \"\\\"open\": unexpected end of statement while looking for matching double-quote",
        ),
    ];
    for (word, want) in err {
        assert_eq!(expand(word, &env).unwrap_err(), *want, "{word}");
    }
}

#[test]
fn expansion_nesting_is_bounded() {
    let deep = format!("{}x{}", "${A:-".repeat(5000), "}".repeat(5000));
    let e = expand(&deep, &[]).unwrap_err();
    assert!(e.ends_with("variable expansions nested too deeply"), "{e}");
    let fine = format!("{}x{}", "${A:-".repeat(50), "}".repeat(50));
    assert_eq!(expand(&fine, &[]).as_deref(), Ok("x"));
}

#[test]
fn backtick_escape_and_modes() {
    let env = vec![("X".to_owned(), "1".to_owned())];
    let win = Lexer::new('`');
    assert_eq!(
        win.process_word("C:\\path\\$X", &env).unwrap(),
        "C:\\path\\1"
    );
    assert_eq!(win.process_word("`$X `\"q`\"", &env).unwrap(), "$X \"q\"");
    assert_eq!(win.process_word("\"a`\"b\"", &env).unwrap(), "a\"b");

    // Unset variables left alone, quotes kept (how BuildKit names RUN steps).
    let raw = Lexer {
        raw_quotes: true,
        skip_unset_env: true,
        ..Lexer::new('\\')
    };
    assert_eq!(
        raw.process_word("'$X' \"$NO\" ${NO:-d} ${NO//a/b} $X", &env)
            .unwrap(),
        "'$X' \"$NO\" ${NO:-d} ${NO/a/b} 1"
    );
    // Heredoc bodies: quotes are text.
    let body = Lexer {
        skip_process_quotes: true,
        ..Lexer::new('\\')
    };
    assert_eq!(
        body.process_word("echo '$X' \"$X\"\n", &env).unwrap(),
        "echo '1' \"1\"\n"
    );
}

#[test]
fn word_splitting() {
    let env = vec![("SP".to_owned(), " a  b ".to_owned())];
    let lex = Lexer::new('\\');
    let cases: &[(&str, &[&str])] = &[
        ("one two  three", &["one", "two", "three"]),
        ("x${SP}y", &["x", "a", "b", "y"]),
        ("\"${SP}\"", &[" a  b "]),
        ("a\\ b 'c d'", &["a b", "c d"]),
        ("'' \"\" z", &["z"]),
        // BuildKit loses the start of a word before a `${VAR<op>…}`.
        ("80${NO:-/tcp} 443", &["/tcp", "443"]),
    ];
    for (input, want) in cases {
        assert_eq!(lex.process_words(input, &env).unwrap(), *want, "{input}");
    }
}

#[test]
fn matched_and_unmatched_variables() {
    let env: HashMap<String, String> = HashMap::from([
        ("A".to_owned(), "1".to_owned()),
        ("E".to_owned(), String::new()),
    ]);
    let r = Lexer::new('\\')
        .process_word_with_matches("$A ${E:-x} ${U} ${V:+y} '$W'", &env)
        .unwrap();
    assert_eq!(r.result, "1 x   $W");
    assert_eq!(r.matched.into_iter().collect::<Vec<_>>(), vec!["A", "E"]);
    assert_eq!(r.unmatched.into_iter().collect::<Vec<_>>(), vec!["U", "V"]);
    assert_eq!(Env::get(&NoEnv, "A"), None);
}

/// A tiny deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const FRAGMENTS: &[&str] = &[
    "\\\n",
    "`\n",
    "\n",
    " ",
    "<<EOF\n",
    "<<-'X'\n",
    "EOF\n",
    "X\n",
    "${",
    "}",
    "$",
    ":-",
    "#",
    "%%",
    "//",
    "'",
    "\"",
    "[\"",
    "\"]",
    "[",
    "]",
    "{",
    "--mount=",
    "--from=",
    "type=cache,",
    "=",
    ",",
    "ONBUILD ",
    "RUN ",
    "COPY ",
    "FROM ",
    "ENV ",
    "ARG ",
    "HEALTHCHECK ",
    "# escape=`\n",
    "\t",
    "\r\n",
    "\u{feff}",
    "é",
    "\u{a0}",
    "\0",
    "*",
    "?",
    "\\",
    "3<<",
    "AS ",
    "--",
    "\\u0000",
];

/// Hostile input must never panic: mutated corpus files and random bytes go
/// through every entry point.
#[test]
fn never_panics_on_mutated_input() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dockerfiles");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "Dockerfile").then(|| std::fs::read(p).unwrap())
        })
        .collect();
    seeds.sort();
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let mut rng = Rng(seed | 1);
    let env: HashMap<String, String> = HashMap::from([
        ("A".to_owned(), "a*b/c".to_owned()),
        ("E".to_owned(), String::new()),
    ]);
    let lexers = [
        Lexer::new('\\'),
        Lexer::new('`'),
        Lexer {
            raw_quotes: true,
            raw_escapes: true,
            skip_unset_env: true,
            ..Lexer::new('\\')
        },
        Lexer {
            skip_process_quotes: true,
            ..Lexer::new('\\')
        },
    ];
    // FUZZ_ROUNDS=200000 FUZZ_SEED=7 for a longer or different run.
    let rounds: usize = std::env::var("FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    for round in 0..rounds {
        let mut input = if round % 10 == 9 {
            (0..rng.below(200)).map(|_| rng.next() as u8).collect()
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        for _ in 0..=rng.below(8) {
            let at = rng.below(input.len() + 1);
            match rng.below(4) {
                0 if !input.is_empty() => {
                    let end = (at + rng.below(6)).min(input.len());
                    input.drain(at.min(end)..end);
                }
                1 if at < input.len() => input[at] = rng.next() as u8,
                _ => {
                    let f = FRAGMENTS[rng.below(FRAGMENTS.len())].as_bytes();
                    input.splice(at..at, f.iter().copied());
                }
            }
        }
        let _ = detect_syntax(&input);
        let _ = parse_directive("check", &input);
        let Ok(parsed) = parse(&input) else { continue };
        let _ = parsed.dump();
        for n in &parsed.nodes {
            for w in n.args.iter().chain(&n.flags) {
                for lex in &lexers {
                    let _ = lex.process_word_with_matches(w, &env);
                    let _ = lex.process_words(w, &env);
                }
            }
        }
        let Ok(df) = instructions(&parsed) else {
            continue;
        };
        for stage in &df.stages {
            for c in &stage.commands {
                let mut i = c.instruction.clone();
                let _ = i.expand(&mut |w| lexers[0].process_word(w, &env));
                let _ = i.expand_raw(&mut |w| lexers[3].process_word(w, &env));
                if let Instruction::Run(r) = &c.instruction {
                    let _ = r.mounts(Some(&mut |w: &str| lexers[0].process_word(w, &env)));
                }
            }
        }
    }
    // Random words straight into the lexer and the mount parser.
    for _ in 0..rounds {
        let word: String = (0..rng.below(40))
            .map(|_| FRAGMENTS[rng.below(FRAGMENTS.len())])
            .collect();
        for lex in &lexers {
            let _ = lex.process_word(&word, &env);
            let _ = lex.process_words(&word, &env);
        }
        let mut id = |w: &str| Ok(w.to_owned());
        let _ = parse_mount(&word, Some(&mut id));
        let _ = parse_mount(&word, None);
        let _ = parse_device(&word);
        let _ = CheckOptions::parse(&word);
    }
}

#[test]
fn deep_onbuild_nesting_is_bounded() {
    let text = format!("FROM a\n{}RUN x\n", "ONBUILD ".repeat(5000));
    let parsed = parse(text.as_bytes()).unwrap();
    assert!(
        parsed.nodes[1]
            .dump()
            .starts_with("onbuild (onbuild (onbuild")
    );
    let (msg, _) = instr_err(&text);
    assert_eq!(
        msg,
        "dockerfile parse error on line 2: Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"
    );
}
