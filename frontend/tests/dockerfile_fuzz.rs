//! The fuzz target's body on stable: every corpus Dockerfile, and many
//! deterministic mutations of each (bytes flipped, cut, repeated, and
//! Dockerfile tokens spliced in), through the whole frontend. Passing
//! means no input panicked; errors are expected.

use std::path::Path;

use bk_frontend::dockerfile::fuzzing::exercise;

/// Splice material: what makes Dockerfiles interesting to a parser.
const TOKENS: &[&str] = &[
    "\\\n",
    "\n",
    "\r\n",
    "<<EOF\n",
    "<<-'EOF' <<\"X\"\n",
    "EOF\n",
    "${A:-",
    "${A:+x}",
    "${A#*}",
    "${A%%/*}",
    "${A/x/y}",
    "}",
    "$",
    "\"",
    "'",
    "[\"",
    "\"]",
    "--mount=type=cache,target=/c,id=",
    "--mount=type=secret,id=s,env=E",
    "--from=",
    "--platform=$BUILDPLATFORM ",
    "--chmod=u+x ",
    "--chown=1:1 ",
    "FROM ",
    " AS ",
    "RUN ",
    "ONBUILD ",
    "ARG ",
    "ENV ",
    "COPY ",
    "ADD ",
    "HEALTHCHECK --interval=1s CMD ",
    "# syntax=",
    "# escape=`\n",
    "# check=error=true\n",
    "`",
    "\0",
    "\u{feff}",
    "\u{1F600}",
    "scratch",
    "missing",
    "../..",
    "/",
    "*",
];

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let end = (at + rng.below(32)).min(out.len());
                out.drain(at..end);
            }
            2 => {
                let end = (at + rng.below(64)).min(out.len());
                let piece = out[at..end].to_vec();
                for _ in 0..=rng.below(3) {
                    out.splice(at..at, piece.iter().copied());
                }
            }
            3 => out.truncate(at),
            _ => {
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                out.splice(at..at, token.iter().copied());
            }
        }
    }
    out
}

fn corpus() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dockerfiles");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "Dockerfile"))
        .collect();
    files.sort();
    let mut out: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    out.push(
        b"# check=skip=all\nARG BASE=busybox\nFROM ${BASE} AS base\nARG A\nENV B=${A:-d} C=\"$A\"\nRUN --mount=type=cache,target=/c <<EOF\necho $B\nEOF\nFROM base\nCOPY --from=base --chmod=755 /a* /b/\nONBUILD RUN x\nHEALTHCHECK CMD [\"true\"]\n"
            .to_vec(),
    );
    out
}

#[tokio::test]
async fn no_input_panics_the_frontend() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut runs = 0;
    for seed in corpus() {
        exercise(&seed).await;
        runs += 1;
        for _ in 0..100 {
            let input = mutate(&seed, &mut rng);
            exercise(&input).await;
            runs += 1;
        }
    }
    // Pure noise, too.
    for len in [0, 1, 7, 64, 600] {
        let noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        exercise(&noise).await;
        runs += 1;
    }
    assert!(runs > 1000, "{runs} inputs");
}

/// Deep nesting must be refused, not recursed into.
#[tokio::test]
async fn deep_nesting_is_bounded() {
    let mut deep = String::from("FROM scratch\nENV A=");
    for _ in 0..20_000 {
        deep.push_str("${A:-");
    }
    deep.push('\n');
    exercise(deep.as_bytes()).await;
    let onbuild = format!("FROM scratch\n{}RUN x\n", "ONBUILD ".repeat(5_000));
    exercise(onbuild.as_bytes()).await;
    let continuation = format!("FROM scratch\nRUN a{}\n", " \\\n".repeat(50_000));
    exercise(continuation.as_bytes()).await;
}

/// Random instructions from a small grammar: keyword, optional flags, and
/// plain words (no quotes, escapes or `$`, so the expected parse is known).
fn random_instruction(rng: &mut Rng) -> (String, Vec<String>, Vec<String>) {
    const KEYWORDS: &[&str] = &[
        "RUN",
        "CMD",
        "ENTRYPOINT",
        "WORKDIR",
        "USER",
        "EXPOSE",
        "VOLUME",
    ];
    const WORDS: &[&str] = &["a", "b1", "/x/y", "c.d", "e_f", "8080", "tcp", "z-z"];
    let keyword = KEYWORDS[rng.below(KEYWORDS.len())].to_string();
    let flags = if keyword == "RUN" && rng.below(2) == 0 {
        vec!["--network=none".to_string()]
    } else {
        Vec::new()
    };
    let words: Vec<String> = (0..=rng.below(4))
        .map(|_| WORDS[rng.below(WORDS.len())].to_string())
        .collect();
    (keyword, flags, words)
}

/// Properties of the parser over generated files: every instruction is
/// found on its line with its words; splitting an instruction over
/// continuation lines (either escape character) changes nothing but the
/// line numbers.
#[test]
fn parser_properties_over_generated_files() {
    use bk_frontend::dockerfile::parse;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..300 {
        let count = 1 + rng.below(8);
        let instructions: Vec<_> = (0..count).map(|_| random_instruction(&mut rng)).collect();
        let line = |(k, f, w): &(String, Vec<String>, Vec<String>)| {
            let mut parts = vec![k.clone()];
            parts.extend(f.iter().cloned());
            parts.extend(w.iter().cloned());
            parts
        };
        let plain: String = instructions
            .iter()
            .map(|i| format!("{}\n", line(i).join(" ")))
            .collect();
        let parsed = parse(plain.as_bytes()).unwrap();
        assert_eq!(parsed.nodes.len(), count, "{plain}");
        for (i, (node, (keyword, flags, words))) in
            parsed.nodes.iter().zip(&instructions).enumerate()
        {
            assert_eq!(node.value, *keyword);
            assert_eq!(node.flags, *flags, "{plain}");
            assert_eq!((node.start_line, node.end_line), (i + 1, i + 1));
            let joined = node.args.join(" ");
            assert_eq!(joined, words.join(" "), "{plain}");
        }

        for escape in ['\\', '`'] {
            let directive = if escape == '`' { "# escape=`\n" } else { "" };
            let mut split = String::from(directive);
            for i in &instructions {
                let parts = line(i);
                let mut text = parts[0].clone();
                for p in &parts[1..] {
                    if rng.below(2) == 0 {
                        text.push_str(&format!(" {escape}\n  {p}"));
                    } else {
                        text.push_str(&format!(" {p}"));
                    }
                }
                split.push_str(&text);
                split.push('\n');
            }
            let again = parse(split.as_bytes()).unwrap();
            assert_eq!(again.escape, escape);
            assert_eq!(again.nodes.len(), count, "{split}");
            for (a, b) in again.nodes.iter().zip(&parsed.nodes) {
                assert_eq!(a.value, b.value);
                assert_eq!(a.flags, b.flags, "{split}");
                // Raw-string arguments keep the continuation's whitespace,
                // as BuildKit's do; the words are the same.
                let words = |n: &bk_frontend::dockerfile::Node| {
                    n.args
                        .iter()
                        .flat_map(|a| a.split_whitespace().map(str::to_string))
                        .collect::<Vec<_>>()
                };
                assert_eq!(words(a), words(b), "{split}");
                assert!(a.start_line <= a.end_line);
            }
        }
    }
}
