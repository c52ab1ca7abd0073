//! The Dockerfile lint rules: each rule's trigger and non-trigger with
//! BuildKit's exact texts and lines (cases mostly from BuildKit's own lint
//! tests), the order warnings come in, `# check=` and
//! `BUILDKIT_DOCKERFILE_CHECK`, and warnings that outlive a failed
//! conversion.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use bk_frontend::dockerfile::lint::{self, LintSink, LintWarning};
use bk_frontend::dockerfile::{ConvertError, ConvertOptions, ImageResolver, LineRange, convert};
use bk_proto::pb;

const BUSYBOX_CONFIG: &str = r#"{"architecture":"amd64","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/home"},"created":"2024-09-26T21:31:42Z","history":[{"created_by":"BusyBox"}],"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:e78a5d6cc6c2b3b1f3a2e4bb1d1cd1e69e2c1e8f9d5d5b0c0e2f7c1b3a4d5e6f"]}}"#;

/// Busybox for amd64 whatever is asked; `armonly` is an arm64 image.
struct Registry;

#[async_trait]
impl ImageResolver for Registry {
    async fn resolve(
        &self,
        reference: &str,
        _platform: &pb::Platform,
        _mode: &str,
    ) -> Result<(String, Vec<u8>), String> {
        match reference {
            "docker.io/library/busybox:latest"
            | "docker.io/library/busybox:stable-musl"
            | "docker.io/library/alpine:latest" => Ok((String::new(), BUSYBOX_CONFIG.into())),
            "docker.io/library/armonly:latest" => Ok((
                String::new(),
                BUSYBOX_CONFIG
                    .replace("\"amd64\"", "\"arm64\"")
                    .into_bytes(),
            )),
            other => Err(format!("{other}: not found")),
        }
    }
}

fn amd64() -> pb::Platform {
    pb::Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        ..Default::default()
    }
}

fn options() -> ConvertOptions {
    let mut o = ConvertOptions::new(amd64(), "sess");
    o.lint = Some(LintSink::default());
    o
}

/// Converts and returns the outcome with the warnings, in order.
async fn lint_with(
    df: &str,
    opts: &ConvertOptions,
) -> (Result<(), ConvertError>, Vec<LintWarning>) {
    let res = convert(df.as_bytes(), opts, &Registry).await.map(|_| ());
    let warnings = opts.lint.as_ref().map(LintSink::take).unwrap_or_default();
    (res, warnings)
}

/// The `short` forms of a conversion that must succeed.
async fn shorts(df: &str) -> Vec<String> {
    shorts_with(df, &options()).await
}

async fn shorts_with(df: &str, opts: &ConvertOptions) -> Vec<String> {
    let (res, warnings) = lint_with(df, opts).await;
    if let Err(e) = res {
        panic!("conversion failed: {e}");
    }
    warnings.iter().map(LintWarning::short).collect()
}

/// The shorts and the error of a conversion that must fail.
async fn shorts_and_error(df: &str, opts: &ConvertOptions) -> (Vec<String>, ConvertError) {
    let (res, warnings) = lint_with(df, opts).await;
    let Err(e) = res else {
        panic!("conversion succeeded")
    };
    (warnings.iter().map(LintWarning::short).collect(), e)
}

fn with_build_args(args: &[(&str, &str)]) -> ConvertOptions {
    let mut o = options();
    for (k, v) in args {
        o.build_args.insert((*k).to_owned(), (*v).to_owned());
    }
    o
}

#[tokio::test]
async fn stage_name_and_as_casing() {
    let df = "\n# warning: stage name should be lowercase\n#\nFROM scratch AS BadStageName\n\n# warning: 'as' should match 'FROM' cmd casing.\n#\nFROM scratch as base2\n\nFROM scratch AS base3\n";
    assert_eq!(
        shorts(df).await,
        [
            "StageNameCasing: Stage name 'BadStageName' should be lowercase (line 4)",
            "FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 8)",
        ]
    );
    let df = "\nfrom scratch AS base\n\nfrom scratch as base2\n";
    assert_eq!(
        shorts(df).await,
        ["FromAsCasing: 'AS' and 'from' keywords' casing do not match (line 2)"]
    );
    // A mixed-case FROM is left to ConsistentInstructionCasing.
    let df = "From scratch as base\nFROM scratch AS base2\n";
    assert_eq!(
        shorts(df).await,
        [
            "ConsistentInstructionCasing: Command 'From' should match the case of the command majority (uppercase) (line 1)"
        ]
    );
    assert!(shorts("FROM scratch AS ok\nFROM ok\n").await.is_empty());
}

#[tokio::test]
async fn descriptions_and_urls_are_buildkits() {
    let (_, w) = lint_with("FROM scratch as base\n", &options()).await;
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].rule_name, "FromAsCasing");
    assert_eq!(
        w[0].description,
        "The 'as' keyword should match the case of the 'from' keyword"
    );
    assert_eq!(
        w[0].url,
        "https://docs.docker.com/go/dockerfile/rule/from-as-casing/"
    );
    assert_eq!(
        w[0].message,
        "'as' and 'FROM' keywords' casing do not match"
    );
    assert_eq!(w[0].location, [LineRange::new(1, 1)]);
    assert_eq!(lint::RULES.len(), 22);
    let experimental: Vec<&str> = lint::RULES
        .iter()
        .filter(|r| r.experimental)
        .map(|r| r.name)
        .collect();
    assert_eq!(
        experimental,
        ["CopyIgnoredFile", "InvalidDefinitionDescription"]
    );
    for r in lint::RULES {
        if r.name == "InvalidBaseImagePlatform" {
            assert_eq!(r.url, "");
        } else {
            assert!(
                r.url
                    .starts_with("https://docs.docker.com/go/dockerfile/rule/"),
                "{}",
                r.name
            );
        }
    }
}

#[tokio::test]
async fn empty_continuation_reports_the_last_line() {
    let df = "\nFROM scratch\n# warning: empty continuation line\nCOPY Dockerfile \\\n\n.\nCOPY Dockerfile \\\n.\n";
    let (res, w) = lint_with(df, &options()).await;
    res.unwrap();
    assert_eq!(
        w.iter().map(LintWarning::short).collect::<Vec<_>>(),
        ["NoEmptyContinuation: Empty continuation line (line 6)"]
    );
    assert_eq!(w[0].location, [LineRange::new(6, 6)]);
}

#[tokio::test]
async fn instruction_casing_majority() {
    let cases = [
        (
            "\nFROM scratch\ncopy Dockerfile /foo\nCOPY Dockerfile /bar\n",
            vec![
                "ConsistentInstructionCasing: Command 'copy' should match the case of the command majority (uppercase) (line 3)",
            ],
        ),
        (
            "\nfrOM scratch as base\nfrom scratch as base2\n",
            vec![
                "ConsistentInstructionCasing: Command 'frOM' should match the case of the command majority (lowercase) (line 2)",
            ],
        ),
        (
            "\nfrom scratch\nCOPY Dockerfile /foo\ncopy Dockerfile /bar\n",
            vec![
                "ConsistentInstructionCasing: Command 'COPY' should match the case of the command majority (lowercase) (line 3)",
            ],
        ),
        (
            "from scratch\nCOPY a /foo\nCOPY a /bar\nCOPY a /baz\n",
            vec![
                "ConsistentInstructionCasing: Command 'from' should match the case of the command majority (uppercase) (line 1)",
            ],
        ),
        ("from scratch\ncopy a /foo\n", vec![]),
        ("FROM scratch\nCOPY a /foo\n", vec![]),
        // Meta ARGs do not count.
        ("arg x\narg y\nFROM scratch\n", vec![]),
    ];
    for (df, want) in cases {
        assert_eq!(shorts(df).await, want, "{df}");
    }
}

#[tokio::test]
async fn duplicate_and_reserved_stage_names() {
    assert_eq!(
        shorts("\nFROM scratch AS b\nFROM scratch AS b\n").await,
        ["DuplicateStageName: Duplicate stage name \"b\", stage names should be unique (line 3)"]
    );
    assert!(
        shorts("FROM scratch AS b1\nFROM scratch AS b2\n")
            .await
            .is_empty()
    );
    assert_eq!(
        shorts("\nFROM scratch AS scratch\nFROM scratch AS context\n").await,
        [
            "ReservedStageName: Stage name should not use the same name as reserved stage \"scratch\" (line 2)",
            "ReservedStageName: Stage name should not use the same name as reserved stage \"context\" (line 3)",
        ]
    );
    assert!(shorts("FROM scratch\nFROM scratch AS a\n").await.is_empty());
}

#[tokio::test]
async fn json_args_recommended() {
    assert_eq!(
        shorts("\nFROM scratch\nCMD mycommand\n").await,
        [
            "JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 3)"
        ]
    );
    assert_eq!(
        shorts("from scratch\nentrypoint mycommand\n").await,
        [
            "JSONArgsRecommended: JSON arguments recommended for entrypoint to prevent unintended behavior related to OS signals (line 2)"
        ]
    );
    for df in [
        "FROM scratch\nSHELL [\"/usr/bin/customshell\"]\nCMD mycommand\n",
        "FROM scratch AS base\nSHELL [\"/usr/bin/customshell\"]\n\nFROM base\nENTRYPOINT mycommand\n",
        "FROM scratch\nCMD [\"mycommand\"]\n",
    ] {
        assert!(shorts(df).await.is_empty(), "{df}");
    }
}

#[tokio::test]
async fn maintainer_and_warnings_before_an_error() {
    assert_eq!(
        shorts("\nFROM scratch\nMAINTAINER me@example.org\n").await,
        [
            "MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label (line 3)"
        ]
    );
    let (w, err) = shorts_and_error(
        "\nFROM scratch AS BadStageName\nMAINTAINER me@example.org\nBADCMD\n",
        &options(),
    )
    .await;
    assert_eq!(
        w,
        [
            "StageNameCasing: Stage name 'BadStageName' should be lowercase (line 2)",
            "MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label (line 3)",
        ]
    );
    assert_eq!(
        err.message,
        "dockerfile parse error on line 4: unknown instruction: BADCMD"
    );
}

#[tokio::test]
async fn warnings_survive_dispatch_errors() {
    let (w, err) = shorts_and_error(
        "FROM scratch\nENV A=$undefined\nSTOPSIGNAL bogus\n",
        &options(),
    )
    .await;
    assert_eq!(
        w,
        ["UndefinedVar: Usage of undefined variable '$undefined' (line 2)"]
    );
    assert_eq!(err.message, "invalid signal: bogus");
    // Reported even though the expansion itself fails.
    let (w, err) = shorts_and_error("FROM scratch\nENV A=${nope:?boom}\n", &options()).await;
    assert_eq!(
        w,
        ["UndefinedVar: Usage of undefined variable '$nope' (line 2)"]
    );
    assert!(err.message.contains("nope: boom"), "{}", err.message);
}

#[tokio::test]
async fn undefined_args_in_from() {
    for df in [
        "\nARG base=scratch\nFROM $base\nCOPY Dockerfile .\n",
        "\nARG BUILDPLATFORM=linux/amd64\nFROM --platform=$BUILDPLATFORM scratch\n",
        "\nFROM --platform=$BUILDPLATFORM scratch\n",
        "\nARG DEBUG\nFROM scratch${DEBUG}\n",
        "\nARG DEBUG\nFROM scra${DEBUG:-tch}\n",
        "\nARG DEBUG=\"\"\nFROM scratch${DEBUG-@bogus}\n",
    ] {
        assert!(shorts(df).await.is_empty(), "{df}");
    }
    let (w, err) = shorts_and_error(
        "\nFROM --platform=$BULIDPLATFORM scratch\nCOPY Dockerfile .\n",
        &options(),
    )
    .await;
    assert_eq!(
        w,
        [
            "UndefinedArgInFrom: FROM argument 'BULIDPLATFORM' is not declared (did you mean BUILDPLATFORM?) (line 2)"
        ]
    );
    assert_eq!(
        err.message,
        "empty platform value from expression $BULIDPLATFORM (did you mean BUILDPLATFORM?)"
    );
    assert_eq!(err.locations, [LineRange::new(2, 2)]);

    let (w, err) = shorts_and_error(
        "\nARG MY_OS=linux\nARG MY_ARCH=amd64\nFROM --platform=linux/${MYARCH} busybox\n",
        &options(),
    )
    .await;
    assert_eq!(
        w,
        [
            "UndefinedArgInFrom: FROM argument 'MYARCH' is not declared (did you mean MY_ARCH?) (line 4)"
        ]
    );
    assert!(
        err.message
            .starts_with("failed to parse platform linux/${MYARCH}: ")
            && err.message.ends_with(" (did you mean MY_ARCH?)"),
        "{}",
        err.message
    );

    assert_eq!(
        shorts("\nARG tag=latest\nFROM busybox:${tag}${version} AS b\n").await,
        ["UndefinedArgInFrom: FROM argument 'version' is not declared (line 3)"]
    );
    // An undeclared build arg does not declare anything.
    let opts = with_build_args(&[("version", "")]);
    assert_eq!(
        shorts_with("FROM busybox${version}\n", &opts).await,
        ["UndefinedArgInFrom: FROM argument 'version' is not declared (line 1)"]
    );
}

#[tokio::test]
async fn workdir_relative_path() {
    assert_eq!(
        shorts("\nFROM scratch\nWORKDIR app/\n").await,
        [
            "WorkdirRelativePath: Relative workdir \"app/\" can have unexpected results if the base image changes (line 3)"
        ]
    );
    // The first WORKDIR of the build decides, base stages included.
    assert!(
        shorts("\nFROM scratch AS a\nWORKDIR /app\n\nFROM a AS b\nWORKDIR subdir/\n")
            .await
            .is_empty()
    );
    assert!(
        shorts("FROM scratch\nWORKDIR /a\nWORKDIR b\n")
            .await
            .is_empty()
    );
    // The base image's WorkingDir does not count.
    assert_eq!(
        shorts("FROM busybox\nENV D=x\nWORKDIR $D\n").await,
        [
            "WorkdirRelativePath: Relative workdir \"x\" can have unexpected results if the base image changes (line 3)"
        ]
    );
}

#[tokio::test]
async fn undefined_vars() {
    for df in [
        "\nFROM scratch\nARG foo\nCOPY Dockerfile${foo} .\n",
        "\nFROM alpine AS base\nARG foo=Dockerfile\n\nFROM base\nCOPY $foo .\n",
        "\nFROM alpine\nRUN echo $PATH $nope\n",
        "FROM scratch\nEXPOSE $nope 80\n",
        "FROM scratch\nARG BUILDKIT_SBOM_SCAN_STAGE\nCOPY a${BUILDKIT_SBOM_SCAN_CONTEXT} .\n",
    ] {
        assert!(shorts(df).await.is_empty(), "{df}");
    }
    assert_eq!(
        shorts("\nFROM alpine\nCOPY $foo .\nARG foo=bar\nRUN echo $foo\n").await,
        ["UndefinedVar: Usage of undefined variable '$foo' (line 3)"]
    );
    assert_eq!(
        shorts("\nFROM alpine\nARG DIR_BINARIES=binaries/\nARG DIR_ASSETS=assets/\nARG DIR_CONFIG=config/\nCOPY $DIR_ASSET .\n").await,
        ["UndefinedVar: Usage of undefined variable '$DIR_ASSET' (did you mean $DIR_ASSETS?) (line 6)"]
    );
    assert_eq!(
        shorts("\nFROM alpine\nENV PATH=$PAHT:/tmp/bin\n").await,
        ["UndefinedVar: Usage of undefined variable '$PAHT' (did you mean $PATH?) (line 3)"]
    );
    // ARG defaults, RUN mounts, USER, and heredoc bodies are expanded too.
    assert_eq!(
        shorts(
            "FROM scratch\nARG arg1=$x\nRUN --mount=type=cache,target=/c$y [\"true\"]\nUSER $z\n"
        )
        .await,
        [
            "UndefinedVar: Usage of undefined variable '$x' (line 2)",
            "UndefinedVar: Usage of undefined variable '$y' (line 3)",
            "UndefinedVar: Usage of undefined variable '$z' (line 4)",
        ]
    );
    // A heredoc spans several lines: one range per line, the first one
    // shown.
    let (res, w) = lint_with("FROM scratch\nCOPY <<EOF /a\n$body\nEOF\n", &options()).await;
    res.unwrap();
    assert_eq!(
        w[0].short(),
        "UndefinedVar: Usage of undefined variable '$body' (line 2)"
    );
    assert_eq!(
        w[0].location,
        [
            LineRange::new(2, 2),
            LineRange::new(3, 3),
            LineRange::new(4, 4)
        ]
    );
    assert!(
        shorts("FROM scratch\nCOPY <<'EOF' /a\n$body\nEOF\n")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn multiple_instructions_report_the_previous_one() {
    let msg = |i: &str, l: usize| {
        format!(
            "MultipleInstructionsDisallowed: Multiple {i} instructions should not be used in the same stage because only the last one will be used (line {l})"
        )
    };
    assert_eq!(
        shorts("\nFROM scratch\nENTRYPOINT [\"/myapp\"]\nENTRYPOINT [\"/myotherapp\"]\nCMD [\"/myapp\"]\nCMD [\"/myotherapp\"]\nHEALTHCHECK CMD [\"/myapp\"]\nHEALTHCHECK CMD [\"/myotherapp\"]\n").await,
        [msg("ENTRYPOINT", 3), msg("CMD", 5), msg("HEALTHCHECK", 7)]
    );
    assert_eq!(
        shorts("\nFROM scratch\nENTRYPOINT [\"/myapp\"]\nCMD [\"/myapp\"]\nHEALTHCHECK CMD [\"/myapp\"]\nCOPY <<EOF /a.txt\nHello, World!\nEOF\nENTRYPOINT [\"/myotherapp\"]\nCMD [\"/myotherapp\"]\nHEALTHCHECK CMD [\"/myotherapp\"]\n").await,
        [msg("ENTRYPOINT", 3), msg("CMD", 4), msg("HEALTHCHECK", 5)]
    );
    assert!(
        shorts("\nFROM scratch AS a\nENTRYPOINT [\"/myapp\"]\nCMD [\"/myapp\"]\nHEALTHCHECK CMD [\"/myapp\"]\n\nFROM a AS b\nENTRYPOINT [\"/myotherapp\"]\nCMD [\"/myotherapp\"]\nHEALTHCHECK CMD [\"/myotherapp\"]\n")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn legacy_key_value_format() {
    assert_eq!(
        shorts("\nFROM scratch\nENV testkey value\nLABEL key value\n").await,
        [
            "LegacyKeyValueFormat: \"ENV key=value\" should be used instead of legacy \"ENV key value\" format (line 3)",
            "LegacyKeyValueFormat: \"LABEL key=value\" should be used instead of legacy \"LABEL key value\" format (line 4)",
        ]
    );
    assert!(
        shorts("\nFROM scratch\nENV testkey=value\nLABEL key=value\n")
            .await
            .is_empty()
    );
    // Unreachable stages are not dispatched, so not linted either.
    assert!(
        shorts("\nFROM scratch AS a\n\nFROM a AS b\nENV testkey value\n\nFROM a AS c\n")
            .await
            .is_empty()
    );
    // Over two lines: two ranges.
    let (res, w) = lint_with("from scratch\nenv key \\\n  value\n", &options()).await;
    res.unwrap();
    assert_eq!(
        w[0].short(),
        "LegacyKeyValueFormat: \"env key=value\" should be used instead of legacy \"env key value\" format (line 2)"
    );
    assert_eq!(w[0].location, [LineRange::new(2, 2), LineRange::new(3, 3)]);
}

#[tokio::test]
async fn platform_flags() {
    assert_eq!(
        shorts("\nFROM --platform=$TARGETPLATFORM scratch\n").await,
        [
            "RedundantTargetPlatform: Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior (line 2)"
        ]
    );
    assert_eq!(
        shorts("\nFROM --platform=${TARGETPLATFORM} scratch\n").await,
        [
            "RedundantTargetPlatform: Setting platform to predefined ${TARGETPLATFORM} in FROM is redundant as this is the default behavior (line 2)"
        ]
    );
    assert!(
        shorts("FROM --platform=${TARGETPLATFORM}${nothing:-} scratch\nARG nothing\n")
            .await
            .iter()
            .all(|w| !w.starts_with("RedundantTargetPlatform"))
    );
    assert_eq!(
        shorts("\nFROM --platform=linux/amd64 scratch\n").await,
        [
            "FromPlatformFlagConstDisallowed: FROM --platform flag should not use constant value \"linux/amd64\" (line 2)"
        ]
    );
    assert!(
        shorts("\nFROM --platform=linux/amd64 scratch AS my_amd64_stage\n")
            .await
            .is_empty()
    );
    assert!(
        shorts("\nFROM --platform=linux/amd64 scratch AS linux\n")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn invalid_default_args_in_from() {
    let opts = with_build_args(&[("VERSION", "latest")]);
    assert_eq!(
        shorts_with("\nARG VERSION\nFROM busybox:$VERSION\n", &opts).await,
        [
            "InvalidDefaultArgInFrom: Default value for ARG busybox:$VERSION results in empty or invalid base image name (line 3)"
        ]
    );
    let opts = with_build_args(&[("IMAGE", "busybox:latest")]);
    assert_eq!(
        shorts_with("\nARG IMAGE\nFROM $IMAGE\n", &opts).await,
        [
            "InvalidDefaultArgInFrom: Default value for ARG $IMAGE results in empty or invalid base image name (line 3)"
        ]
    );
    let opts = with_build_args(&[("SFX", "box:latest")]);
    assert_eq!(
        shorts_with("\nARG SFX=\"box:\"\nFROM busy${SFX}\n", &opts).await,
        [
            "InvalidDefaultArgInFrom: Default value for ARG busy${SFX} results in empty or invalid base image name (line 3)"
        ]
    );
    let opts = with_build_args(&[("VERSION", "latest")]);
    assert!(
        shorts_with("\nARG VERSION=\"latest\"\nFROM busybox:${VERSION}\n", &opts)
            .await
            .is_empty()
    );
    let opts = with_build_args(&[("BUSYBOX_VARIANT", "-musl")]);
    assert!(
        shorts_with(
            "\nARG BUSYBOX_VARIANT=\"\"\nFROM busybox:stable${BUSYBOX_VARIANT}\n",
            &opts
        )
        .await
        .is_empty()
    );
    assert!(
        shorts_with(
            "\nARG BUSYBOX_VARIANT\nFROM busybox:stable${BUSYBOX_VARIANT}\n",
            &opts
        )
        .await
        .is_empty()
    );
}

#[tokio::test]
async fn expose_rules() {
    assert_eq!(
        shorts("\nFROM scratch\nEXPOSE 80/TcP 8080/TCP 8080/udp\n").await,
        [
            "ExposeProtoCasing: Defined protocol '80/TcP' in EXPOSE instruction should be lowercase (line 3)",
            "ExposeProtoCasing: Defined protocol '8080/TCP' in EXPOSE instruction should be lowercase (line 3)",
        ]
    );
    assert_eq!(
        shorts("\nFROM scratch\nEXPOSE 127.0.0.1:80:80 [::1]:8080:8080 5000:5000 8000\n").await,
        [
            "ExposeInvalidFormat: EXPOSE instruction should not define an IP address or host-port mapping, found '127.0.0.1:80:80' (line 3)",
            "ExposeInvalidFormat: EXPOSE instruction should not define an IP address or host-port mapping, found '5000:5000' (line 3)",
            "ExposeInvalidFormat: EXPOSE instruction should not define an IP address or host-port mapping, found '[::1]:8080:8080' (line 3)",
        ]
    );
    assert!(shorts("FROM scratch\nEXPOSE 80 53/udp\n").await.is_empty());
}

#[tokio::test]
async fn secrets_in_arg_and_env() {
    let df = "\nFROM scratch\nARG SECRET_PASSPHRASE\nENV SUPER_Secret=foo\nENV password=bar secret=baz\nARG super_duper_secret_token=foo auth=bar\nENV apikey=bar sunflower=foo\nENV git_key=\nENV PUBLIC_KEY=\nARG public_token\n";
    let want: Vec<String> = [
        ("ARG", "SECRET_PASSPHRASE", 3),
        ("ENV", "SUPER_Secret", 4),
        ("ENV", "password", 5),
        ("ENV", "secret", 5),
        ("ARG", "super_duper_secret_token", 6),
        ("ARG", "auth", 6),
        ("ENV", "apikey", 7),
        ("ENV", "git_key", 8),
    ]
    .iter()
    .map(|(i, k, l)| {
        format!("SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data ({i} \"{k}\") (line {l})")
    })
    .collect();
    assert_eq!(shorts(df).await, want);
    // Meta ARGs are not looked at.
    assert!(shorts("ARG TOKEN\nFROM scratch\n").await.is_empty());
}

#[tokio::test]
async fn base_image_platform() {
    assert_eq!(
        shorts("FROM armonly\n").await,
        [
            "InvalidBaseImagePlatform: Base image armonly was pulled with platform \"linux/arm64\", expected \"linux/amd64\" for current build (line 1)"
        ]
    );
    let (_, w) = lint_with("FROM armonly\n", &options()).await;
    assert_eq!(w[0].url, "");
    assert_eq!(
        w[0].description,
        "Base image platform does not match expected target platform"
    );
    assert!(shorts("FROM busybox\n").await.is_empty());
    let mut opts = options();
    opts.target_platform = Some(pb::Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
        ..Default::default()
    });
    assert!(shorts_with("FROM armonly\n", &opts).await.is_empty());
    // Unreachable stages are not resolved.
    assert!(shorts("FROM armonly AS a\nFROM scratch\n").await.is_empty());
}

#[tokio::test]
async fn definition_descriptions_are_experimental() {
    let good = "# check=experimental=InvalidDefinitionDescription\n# foo this is the foo\nARG foo=bar\n\n# base this is the base image\nFROM scratch AS base\n\n# version this is the version number\nARG version=latest\n\n# baz this is the baz\nARG foo=baz bar=qux baz=quux\n#\nARG bit=bat\n\n# comment for something other than ARG or FROM\nCOPY Dockerfile .\n";
    assert!(shorts(good).await.is_empty());
    let bad = "# check=experimental=InvalidDefinitionDescription\n# bar this is the bar\nARG foo=bar\n# BasE this is the BasE image\nFROM scratch AS base\n# definitely a bad comment\nARG version=latest\n# definitely a bad comment\nARG foo=baz bar=qux baz=quux\n";
    assert_eq!(
        shorts(bad).await,
        [
            "InvalidDefinitionDescription: Comment for ARG should follow the format: `# foo <description>` (line 3)",
            "InvalidDefinitionDescription: Comment for FROM should follow the format: `# base <description>` (line 5)",
            "InvalidDefinitionDescription: Comment for ARG should follow the format: `# version <description>` (line 7)",
            "InvalidDefinitionDescription: Comment for ARG should follow the format: `# <arg_key> <description>` (line 9)",
        ]
    );
    // Off by default.
    assert!(
        shorts(&bad.replace("# check=experimental=InvalidDefinitionDescription", "# x"))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn copy_ignored_files_are_experimental() {
    let mut opts = options();
    opts.context_excludes = vec!["Dockerfile".to_owned(), "docs".to_owned()];
    let df = "# check=experimental=CopyIgnoredFile\nFROM scratch AS src\nFROM scratch\nCOPY Dockerfile .\nADD docs/a.md .\nCOPY keep .\nCOPY --from=src Dockerfile /x\n";
    assert_eq!(
        shorts_with(df, &opts).await,
        [
            "CopyIgnoredFile: Attempting to Copy file \"Dockerfile\" that is excluded by .dockerignore (line 4)",
            "CopyIgnoredFile: Attempting to Add file \"docs/a.md\" that is excluded by .dockerignore (line 5)",
        ]
    );
    let df = df.replace("experimental=CopyIgnoredFile", "experimental=all");
    assert_eq!(shorts_with(&df, &opts).await.len(), 2);
    let off = df.replace("# check=experimental=all", "# nothing");
    assert!(shorts_with(&off, &opts).await.is_empty());
    // skip= does not apply to experimental rules.
    let skip = df.replace("experimental=all", "skip=all;experimental=CopyIgnoredFile");
    assert_eq!(shorts_with(&skip, &opts).await.len(), 2);
}

const CASING: &str = "FROM scratch as base\ncopy Dockerfile .\n";

fn names(w: &[String]) -> Vec<&str> {
    w.iter().filter_map(|s| s.split(':').next()).collect()
}

#[tokio::test]
async fn check_directive_skip_and_error() {
    let both = ["FromAsCasing", "ConsistentInstructionCasing"];
    assert_eq!(names(&shorts(CASING).await), both);
    for directive in [
        "#check=skip=all",
        "#check=skip=all;error=true",
        "#check=skip=ConsistentInstructionCasing,FromAsCasing",
        "#check=skip=ConsistentInstructionCasing,FromAsCasing;error=true",
        "# CHECK = skip=all",
    ] {
        let df = format!("{directive}\n{CASING}");
        assert!(shorts(&df).await.is_empty(), "{directive}");
    }
    let df = format!("#check=skip=ConsistentInstructionCasing\n{CASING}");
    assert_eq!(
        shorts(&df).await,
        ["FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 2)"]
    );
    let df = format!("#check=skip=ConsistentInstructionCasing;error=true\n{CASING}");
    let (w, err) = shorts_and_error(&df, &options()).await;
    assert_eq!(names(&w), ["FromAsCasing"]);
    assert_eq!(err.message, "lint violation found for rules: FromAsCasing");
    assert!(err.locations.is_empty());
    // Several rules: each once, sorted.
    let df = format!("#check=error=true\n{CASING}MAINTAINER x\ncopy a b\n");
    let (w, err) = shorts_and_error(&df, &options()).await;
    assert_eq!(w.len(), 4);
    assert_eq!(
        err.message,
        "lint violation found for rules: ConsistentInstructionCasing, FromAsCasing, MaintainerDeprecated"
    );
    // Skip names are exact.
    let df = format!("#check=skip=fromascasing\n{CASING}");
    assert_eq!(names(&shorts(&df).await), both);
    // The value ends at the first space, so this is `skip=A;`, an error.
    let df = format!("# check=skip=FromAsCasing; error=true\n{CASING}");
    let (w, err) = shorts_and_error(&df, &options()).await;
    assert!(w.is_empty());
    assert_eq!(
        err.message,
        "failed to parse check options: invalid check option \"\""
    );
    // Only the leading directives count.
    let df = format!("FROM scratch\n#check=skip=all\n{CASING}");
    assert!(!shorts(&df).await.is_empty());
}

#[tokio::test]
async fn check_errors() {
    for (directive, msg) in [
        (
            "#check=error=maybe",
            "failed to parse check options: failed to parse check option \"error=maybe\": strconv.ParseBool: parsing \"maybe\": invalid syntax",
        ),
        (
            "#check=foo=bar",
            "failed to parse check options: invalid check option \"foo\"",
        ),
        (
            "#check=skip",
            "failed to parse check options: invalid check option \"skip\"",
        ),
    ] {
        let df = format!("{directive}\n{CASING}");
        let (w, err) = shorts_and_error(&df, &options()).await;
        assert!(w.is_empty());
        assert_eq!(err.message, msg);
        // Even with linting off.
        let mut off = options();
        off.lint = None;
        let (_, err) = shorts_and_error(&df, &off).await;
        assert_eq!(err.message, msg);
    }
    let opts = with_build_args(&[("BUILDKIT_DOCKERFILE_CHECK", "error=nope")]);
    let (_, err) = shorts_and_error(CASING, &opts).await;
    assert_eq!(
        err.message,
        "failed to parse build-arg:BUILDKIT_DOCKERFILE_CHECK: failed to parse check option \"error=nope\": strconv.ParseBool: parsing \"nope\": invalid syntax"
    );
    let attrs = BTreeMap::from([(
        "build-arg:BUILDKIT_DOCKERFILE_CHECK".to_owned(),
        "bogus".to_owned(),
    )]);
    let err = ConvertOptions::from_attrs(&attrs, amd64(), "s", "context", Vec::new())
        .err()
        .unwrap();
    assert_eq!(
        err,
        "failed to parse build-arg:BUILDKIT_DOCKERFILE_CHECK: invalid check option \"bogus\""
    );
    let attrs = BTreeMap::from([(
        "build-arg:BUILDKIT_DOCKERFILE_CHECK".to_owned(),
        "skip=all".to_owned(),
    )]);
    let o = ConvertOptions::from_attrs(&attrs, amd64(), "s", "context", Vec::new()).unwrap();
    assert!(o.lint.is_none());
}

#[tokio::test]
async fn build_arg_replaces_the_directive() {
    let df = format!("#check=skip=all\n{CASING}");
    let opts = with_build_args(&[(
        "BUILDKIT_DOCKERFILE_CHECK",
        "skip=ConsistentInstructionCasing;error=true",
    )]);
    let (w, err) = shorts_and_error(&df, &opts).await;
    assert_eq!(
        w,
        ["FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 2)"]
    );
    assert_eq!(err.message, "lint violation found for rules: FromAsCasing");
    let df = format!("#check=error=true\n{CASING}");
    let opts = with_build_args(&[("BUILDKIT_DOCKERFILE_CHECK", "skip=all")]);
    assert!(shorts_with(&df, &opts).await.is_empty());
    // Even empty, it replaces the directive (here: error=true is dropped).
    let opts = with_build_args(&[("BUILDKIT_DOCKERFILE_CHECK", "")]);
    assert_eq!(shorts_with(&df, &opts).await.len(), 2);
}

#[tokio::test]
async fn no_sink_no_lint() {
    let mut opts = options();
    opts.lint = None;
    let df = format!("#check=error=true\n{CASING}");
    convert(df.as_bytes(), &opts, &Registry).await.unwrap();
}

#[tokio::test]
async fn emission_order_follows_buildkit() {
    let df = "ARG IMG\nFROM $IMG:${TAG:-latest} AS Build\nMAINTAINER me \\\n\n  x\ncopy a b\nENV password value\nEXPOSE 80/TCP\nWORKDIR rel\nCMD run\nCMD run\n";
    let opts = with_build_args(&[("IMG", "busybox")]);
    let got: Vec<String> = shorts_with(df, &opts)
        .await
        .iter()
        .map(|s| s.split(':').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        got,
        [
            // The parser's.
            "NoEmptyContinuation",
            // Node by node while parsing instructions.
            "StageNameCasing",
            "MaintainerDeprecated",
            // Whole-file checks.
            "ConsistentInstructionCasing",
            "InvalidDefaultArgInFrom",
            "UndefinedArgInFrom",
            // Dispatch, instruction by instruction.
            "LegacyKeyValueFormat",
            "SecretsUsedInArgOrEnv",
            "ExposeProtoCasing",
            "WorkdirRelativePath",
            "JSONArgsRecommended",
            "MultipleInstructionsDisallowed",
            "JSONArgsRecommended",
        ]
    );
}

#[tokio::test]
async fn sink_is_shared_and_drained() {
    let sink = LintSink::default();
    let mut opts = options();
    opts.lint = Some(sink.clone());
    convert(CASING.as_bytes(), &opts, &Registry).await.unwrap();
    let w = sink.take();
    assert_eq!(w.len(), 2);
    assert!(sink.take().is_empty());
    let rules: BTreeSet<&str> = w.iter().map(|w| w.rule_name).collect();
    assert_eq!(
        rules,
        BTreeSet::from(["ConsistentInstructionCasing", "FromAsCasing"])
    );
}

#[tokio::test]
async fn onbuild_triggers_are_linted_at_dispatch() {
    let df = "FROM scratch AS base\nONBUILD ENV foo value\nFROM base\n";
    assert_eq!(
        shorts(df).await,
        [
            "LegacyKeyValueFormat: \"ENV key=value\" should be used instead of legacy \"ENV key value\" format (line 3)"
        ]
    );
}

#[tokio::test]
async fn hostile_input_stays_bounded() {
    // Many undefined variables in one instruction: warnings are capped,
    // error=true still sees the rule.
    let mut body = String::new();
    for i in 0..(lint::MAX_WARNINGS + 50) {
        body.push_str(&format!("$v{i}"));
    }
    let df = format!("#check=error=true\nFROM scratch\nCOPY <<EOF /a\n{body}\nEOF\n");
    let (w, err) = shorts_and_error(&df, &options()).await;
    assert_eq!(w.len(), lint::MAX_WARNINGS);
    assert_eq!(err.message, "lint violation found for rules: UndefinedVar");
    // Odd patterns and paths never panic.
    let mut opts = options();
    opts.context_excludes = ["**", "[", "!", "a\\", "[z-a]", "é*?"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let df = "# check=experimental=all\nFROM scratch\nCOPY é /\n";
    let _ = lint_with(df, &opts).await;
    opts.context_excludes
        .retain(|p| !["[", "!", "[z-a]"].contains(&p.as_str()));
    let (res, w) = lint_with(df, &opts).await;
    res.unwrap();
    assert_eq!(w.len(), 1);
}
