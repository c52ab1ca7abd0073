//! Cases follow containerd's `platforms` tests and `images.Manifest`'s
//! ordering; expectations were checked against the vendored Go package.

use super::*;
use crate::digest::Digest;
use crate::media_types;

fn p(spec: &str) -> Platform {
    // "os/arch[/variant]" without the host defaults `parse` applies.
    let mut it = spec.split('/');
    let os = it.next().unwrap_or_default();
    let arch = it.next().unwrap_or_default();
    let variant = it.next().unwrap_or_default();
    Platform::new(os, arch).with_variant(variant)
}

#[test]
fn normalises_spellings() {
    let cases = [
        ("linux/x86_64", "linux/amd64"),
        ("linux/x86-64", "linux/amd64"),
        ("linux/amd64/v1", "linux/amd64"),
        ("linux/amd64/v3", "linux/amd64/v3"),
        ("linux/i386", "linux/386"),
        ("linux/i386/v7", "linux/386"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/arm64/8", "linux/arm64"),
        ("linux/arm64/v8.0", "linux/arm64"),
        ("linux/arm64/v8.2", "linux/arm64/v8.2"),
        ("linux/arm64/9", "linux/arm64/v9"),
        ("linux/arm64/v9.0", "linux/arm64/v9"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/arm/7", "linux/arm/v7"),
        ("linux/arm/6", "linux/arm/v6"),
        ("linux/arm/5", "linux/arm/v5"),
        ("linux/arm/8", "linux/arm/v8"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/armel", "linux/arm/v6"),
        ("Linux/AMD64", "linux/amd64"),
        ("macos/arm64", "darwin/arm64"),
        ("linux/ppc64le", "linux/ppc64le"),
    ];
    for (input, want) in cases {
        assert_eq!(format(&normalize(&p(input))), want, "{input}");
    }
    assert_eq!(normalize(&Platform::new("", "amd64")).os, host_os());
}

#[test]
fn parses_specifiers_like_containerd() {
    let cases = [
        ("linux/amd64", "linux/amd64"),
        ("linux/amd64/v1", "linux/amd64"),
        ("linux/amd64/v3", "linux/amd64/v3"),
        ("linux/x86_64", "linux/amd64"),
        ("linux/arm", "linux/arm"),
        ("linux/arm/v7", "linux/arm/v7"),
        ("linux/armhf", "linux/arm"),
        ("linux/armel", "linux/arm/v6"),
        ("linux/arm/v6", "linux/arm/v6"),
        ("linux/arm64", "linux/arm64"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64/v8"),
        ("linux/arm64/v8.0", "linux/arm64/v8"),
        ("linux/arm64/v8.1", "linux/arm64/v8.1"),
        ("LINUX/AMD64", "linux/amd64"),
        ("darwin/arm64", "darwin/arm64"),
        ("macos/arm64", "darwin/arm64"),
        ("windows/amd64", "windows/amd64"),
        ("linux/s390x", "linux/s390x"),
        ("linux/unknownarch", "linux/unknownarch"),
    ];
    for (input, want) in cases {
        let got = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(format(&got), want, "{input}");
    }

    let w = parse("windows(10.0.17763)/amd64").unwrap();
    assert_eq!(
        (w.os.as_str(), w.os_version.as_str()),
        ("windows", "10.0.17763")
    );
    assert_eq!(format_all(&w), "windows(10.0.17763)/amd64");
    assert_eq!(format(&w), "windows/amd64");

    // One component: an OS takes the host's architecture, an architecture
    // the host's OS.
    let os_only = parse("linux").unwrap();
    assert_eq!(
        (os_only.os.as_str(), os_only.architecture.as_str()),
        ("linux", host_arch())
    );
    let arch_only = parse("arm64").unwrap();
    assert_eq!(
        (arch_only.os.as_str(), arch_only.architecture.as_str()),
        (host_os(), "arm64")
    );
    let arm = parse("armhf").unwrap();
    assert_eq!(
        (arm.architecture.as_str(), arm.variant.as_str()),
        ("arm", "")
    );

    let errors = [
        (
            "linux/*",
            "\"linux/*\": wildcards not yet supported: invalid argument",
        ),
        (
            "linux/amd64/v3/x",
            "\"linux/amd64/v3/x\": cannot parse platform specifier: invalid argument",
        ),
        (
            "nope",
            "\"nope\": unknown operating system or architecture: invalid argument",
        ),
        (
            "linux/",
            "\"\" is an invalid component of \"linux/\": platform specifier component must match \"^[A-Za-z0-9_.-]+$\": invalid argument",
        ),
        (
            "",
            "\"\" is an invalid OS component of \"\": OSAndVersion specifier component must match \"^([A-Za-z0-9_-]+)(?:\\\\(([A-Za-z0-9_.-]*)\\\\))?$\": invalid argument",
        ),
    ];
    for (input, want) in errors {
        assert_eq!(parse(input).unwrap_err().to_string(), want, "{input:?}");
    }
    for bad in [
        "linux(/amd64",
        "linux(1)x/amd64",
        "li nux/amd64",
        "linux/am d64",
        "(1)/amd64",
        "linux/amd64/v!",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn format_handles_missing_parts() {
    assert_eq!(format(&Platform::default()), "unknown");
    assert_eq!(format(&p("linux")), "linux");
    assert_eq!(format(&p("linux/arm/v7")), "linux/arm/v7");
}

/// Which of `candidates` `wanted` accepts, best first, as "os/arch/variant".
fn accepted(comparer: &MatchComparer, candidates: &[&str]) -> Vec<String> {
    let mut ok: Vec<(usize, &str)> = candidates
        .iter()
        .filter_map(|c| comparer.rank(&p(c)).map(|r| (r, *c)))
        .collect();
    ok.sort_by_key(|(r, _)| *r);
    ok.into_iter().map(|(_, c)| c.to_owned()).collect()
}

const ALL: &[&str] = &[
    "linux/386",
    "linux/amd64",
    "linux/amd64/v1",
    "linux/amd64/v2",
    "linux/amd64/v3",
    "linux/amd64/v4",
    "linux/arm/v5",
    "linux/arm/v6",
    "linux/arm/v7",
    "linux/arm",
    "linux/arm/v8",
    "linux/arm64",
    "linux/arm64/v8",
    "linux/aarch64",
    "linux/arm64/v8.1",
    "linux/arm64/v8.2",
    "linux/arm64/v8.6",
    "linux/arm64/v9",
    "linux/arm64/v9.1",
    "linux/arm64/v9.2",
    "windows/amd64",
    "linux/riscv64",
];

#[test]
fn only_accepts_compatible_platforms_in_order() {
    let cases: &[(&str, &[&str])] = &[
        (
            "linux/amd64",
            &["linux/amd64", "linux/amd64/v1", "linux/386"],
        ),
        (
            "linux/amd64/v3",
            &[
                "linux/amd64/v3",
                "linux/amd64/v2",
                "linux/amd64",
                "linux/amd64/v1",
                "linux/386",
            ],
        ),
        (
            "linux/amd64/v2",
            &[
                "linux/amd64/v2",
                "linux/amd64",
                "linux/amd64/v1",
                "linux/386",
            ],
        ),
        (
            "linux/x86_64",
            &["linux/amd64", "linux/amd64/v1", "linux/386"],
        ),
        ("linux/386", &["linux/386"]),
        (
            "linux/arm64",
            &[
                "linux/arm64",
                "linux/arm64/v8",
                "linux/aarch64",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm",
                "linux/arm/v6",
                "linux/arm/v5",
            ],
        ),
        (
            "linux/arm64/v8",
            &[
                "linux/arm64",
                "linux/arm64/v8",
                "linux/aarch64",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm",
                "linux/arm/v6",
                "linux/arm/v5",
            ],
        ),
        (
            "linux/arm64/v8.2",
            &[
                "linux/arm64/v8.2",
                "linux/arm64/v8.1",
                "linux/arm64",
                "linux/arm64/v8",
                "linux/aarch64",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm",
                "linux/arm/v6",
                "linux/arm/v5",
            ],
        ),
        (
            "linux/arm64/v9.1",
            &[
                "linux/arm64/v9.1",
                "linux/arm64/v9",
                "linux/arm64/v8.6",
                "linux/arm64/v8.2",
                "linux/arm64/v8.1",
                "linux/arm64",
                "linux/arm64/v8",
                "linux/aarch64",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm",
                "linux/arm/v6",
                "linux/arm/v5",
            ],
        ),
        (
            "linux/arm/v8",
            &[
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm",
                "linux/arm/v6",
                "linux/arm/v5",
            ],
        ),
        (
            "linux/arm/v7",
            &["linux/arm/v7", "linux/arm", "linux/arm/v6", "linux/arm/v5"],
        ),
        (
            "linux/arm",
            &["linux/arm/v7", "linux/arm", "linux/arm/v6", "linux/arm/v5"],
        ),
        ("linux/arm/v6", &["linux/arm/v6", "linux/arm/v5"]),
        ("linux/arm/v5", &["linux/arm/v5"]),
        // containerd knows no arm64/v7: nothing matches.
        ("linux/arm64/v7", &[]),
        ("windows/amd64", &["windows/amd64"]),
        ("linux/riscv64", &["linux/riscv64"]),
    ];
    for (wanted, want) in cases {
        let got = accepted(&MatchComparer::only(&p(wanted)), ALL);
        assert_eq!(got, *want, "only({wanted})");
    }
}

#[test]
fn only_strict_and_less() {
    let strict = MatchComparer::only_strict(&p("linux/arm64/v8"));
    assert_eq!(
        accepted(&strict, ALL),
        ["linux/arm64", "linux/arm64/v8", "linux/aarch64"]
    );
    let strict = MatchComparer::only_strict(&p("linux/amd64"));
    assert_eq!(accepted(&strict, ALL), ["linux/amd64", "linux/amd64/v1"]);

    let only = MatchComparer::only(&p("linux/amd64/v2"));
    assert!(only.less(&p("linux/amd64/v2"), &p("linux/amd64")));
    assert!(only.less(&p("linux/amd64"), &p("linux/386")));
    assert!(!only.less(&p("linux/386"), &p("linux/amd64")));
    assert!(!only.less(&p("linux/amd64"), &p("linux/amd64/v1")));
    assert!(only.less(&p("linux/386"), &p("linux/arm64")));
    assert!(!only.less(&p("linux/arm64"), &p("linux/s390x")));
    assert!(only.matches(&p("linux/amd64")) && !only.matches(&p("linux/amd64/v3")));
}

#[test]
fn empty_os_means_the_host() {
    let only = MatchComparer::only(&Platform::new("", "amd64"));
    assert!(only.matches(&Platform::new(host_os(), "amd64")));
    assert!(only.matches(&Platform::new("", "amd64")));
}

#[test]
fn host_default_accepts_the_host() {
    let spec = default_spec();
    assert_eq!(spec.os, host_os());
    assert_eq!(spec.architecture, host_arch());
    assert!(MatchComparer::host_default().matches(&spec));
    if host_arch() == "amd64" {
        assert!(MatchComparer::host_default().matches(&p("linux/386")));
        assert_eq!(spec.variant, "");
    }
}

#[test]
fn windows_os_versions() {
    let w = |v: &str| Platform {
        os_version: v.to_owned(),
        ..Platform::new("windows", "amd64")
    };
    let old_host = MatchComparer::only(&w("10.0.17763"));
    assert!(old_host.matches(&w("10.0.17763.1234")));
    assert!(old_host.matches(&w("")));
    assert!(!old_host.matches(&w("10.0.20348.1")));
    assert!(!old_host.matches(&w("10.0.14393.1")));
    assert!(!old_host.matches(&w("6.3.17763")));

    let new_host = MatchComparer::only(&w("10.0.26100.1"));
    assert!(new_host.matches(&w("10.0.20348.2")));
    assert!(new_host.matches(&w("10.0.26100.7")));
    assert!(!new_host.matches(&w("10.0.17763.1")));
    assert!(!new_host.matches(&w("10.0.26200.1")));
    // Unparsable versions on either side mean "any".
    assert!(MatchComparer::only(&w("10.0")).matches(&w("10.0.17763")));
    assert!(!new_host.matches(&w("+10.0.26100")));
    // Linux ignores os.version.
    let linux = MatchComparer::only(&p("linux/amd64"));
    assert!(linux.matches(&Platform {
        os_version: "whatever".into(),
        ..p("linux/amd64")
    }));
}

fn index_of(entries: &[Option<&str>]) -> Index {
    Index {
        schema_version: 2,
        media_type: media_types::OCI_INDEX.into(),
        artifact_type: String::new(),
        manifests: entries
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let mut d = Descriptor::new(
                    media_types::OCI_MANIFEST,
                    Digest::sha256_of(format!("{i}").as_bytes()),
                    i as u64,
                );
                d.platform = spec.map(p);
                d
            })
            .collect(),
        subject: None,
        annotations: Default::default(),
    }
}

/// Position in the index of what `select_manifest` picks.
fn pick(entries: &[Option<&str>], wanted: &str) -> Option<u64> {
    select_manifest(&index_of(entries), &p(wanted)).map(|d| d.size)
}

#[test]
fn select_manifest_picks_like_containerd() {
    let multi = [
        Some("unknown/unknown"),
        Some("linux/386"),
        Some("linux/arm/v6"),
        Some("linux/amd64"),
        Some("linux/arm/v7"),
        Some("linux/arm64/v8"),
        Some("linux/amd64/v3"),
        Some("windows/amd64"),
        Some("linux/s390x"),
    ];
    assert_eq!(pick(&multi, "linux/amd64"), Some(3));
    assert_eq!(pick(&multi, "linux/amd64/v3"), Some(6));
    assert_eq!(pick(&multi, "linux/amd64/v4"), Some(6));
    assert_eq!(pick(&multi, "linux/amd64/v2"), Some(3));
    assert_eq!(pick(&multi, "linux/386"), Some(1));
    assert_eq!(pick(&multi, "linux/arm64"), Some(5));
    assert_eq!(pick(&multi, "linux/aarch64"), Some(5));
    assert_eq!(pick(&multi, "linux/arm/v7"), Some(4));
    assert_eq!(pick(&multi, "linux/arm"), Some(4));
    assert_eq!(pick(&multi, "linux/arm/v6"), Some(2));
    assert_eq!(pick(&multi, "linux/arm/v5"), None);
    assert_eq!(pick(&multi, "windows/amd64"), Some(7));
    assert_eq!(pick(&multi, "linux/riscv64"), None);

    // Fallbacks.
    let old_arm = [Some("linux/arm/v5"), Some("linux/arm/v6")];
    assert_eq!(pick(&old_arm, "linux/arm/v7"), Some(1));
    assert_eq!(pick(&old_arm, "linux/arm64"), Some(1));
    assert_eq!(pick(&[Some("linux/386")], "linux/amd64"), Some(0));
    assert_eq!(pick(&[Some("linux/amd64/v2")], "linux/amd64"), None);

    // Ties keep index order; equal spellings tie.
    let same = [
        Some("linux/arm64"),
        Some("linux/aarch64"),
        Some("linux/arm64/v8"),
    ];
    assert_eq!(pick(&same, "linux/arm64"), Some(0));

    // A platform-less entry only when nothing else matches.
    let mixed = [None, Some("linux/386"), Some("linux/ppc64le")];
    assert_eq!(pick(&mixed, "linux/amd64"), Some(1));
    assert_eq!(pick(&mixed, "linux/s390x"), Some(0));
    assert_eq!(pick(&[], "linux/amd64"), None);

    let comparer = MatchComparer::only(&p("linux/amd64/v3"));
    let index = index_of(&[
        None,
        Some("linux/386"),
        Some("linux/amd64"),
        Some("linux/arm64"),
        Some("linux/amd64/v2"),
    ]);
    let order: Vec<u64> = candidate_manifests(&index, &comparer)
        .iter()
        .map(|d| d.size)
        .collect();
    assert_eq!(order, [4, 2, 1, 0]);

    let strict = MatchComparer::only_strict(&p("linux/amd64"));
    assert_eq!(
        select_manifest_with(&index, &strict).map(|d| d.size),
        Some(2)
    );
}

#[test]
fn selects_from_a_real_docker_manifest_list() {
    let json = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[
      {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,"digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","platform":{"architecture":"arm","os":"linux","variant":"v7"}},
      {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,"digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
      {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,"digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333","platform":{"architecture":"amd64","os":"linux"}}]}"#;
    let index: Index = serde_json::from_str(json).unwrap();
    let d = select_manifest(&index, &parse("linux/amd64").unwrap()).unwrap();
    assert!(d.digest.as_str().ends_with("3333"));
    let d = select_manifest(&index, &parse("linux/arm64").unwrap()).unwrap();
    assert!(d.digest.as_str().ends_with("2222"));
    let d = select_manifest(&index, &parse("linux/arm/v6").unwrap());
    assert!(d.is_none());
}
