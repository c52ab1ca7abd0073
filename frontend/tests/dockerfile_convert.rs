//! The Dockerfile converter: Dockerfiles in, decoded LLB and image configs
//! checked against what BuildKit produces for them.
//!
//! A fake [`ImageResolver`] answers with a canned busybox config. Vertex
//! names, op contents and history lines are BuildKit's (v0.24), compared
//! by hand with BuildKit's own converter for the scratch cases.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use bk_frontend::dockerfile::{ConvertOptions, Converted, ImageResolver, convert};
use bk_llb::{Digest, Graph, Vertex};
use bk_proto::pb::{self, file_action::Action, op::Op as OpKind};

const BUSYBOX_DIGEST: &str =
    "sha256:2919d0172f7524b2d8df9e50066a682669e6d170ac0f6a49676d54358fe970b5";
const BUSYBOX_CONFIG: &str = r#"{"architecture":"amd64","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/home","User":"1000"},"created":"2024-09-26T21:31:42Z","history":[{"created":"2024-09-26T21:31:42Z","created_by":"BusyBox 1.37.0 (glibc), Debian 12"},{"created":"2024-09-26T21:31:42Z","created_by":"CMD [\"sh\"]","empty_layer":true}],"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:e78a5d6cc6c2b3b1f3a2e4bb1d1cd1e69e2c1e8f9d5d5b0c0e2f7c1b3a4d5e6f"]}}"#;

/// Answers busybox (and `onbuild`, an image with ONBUILD triggers) and
/// records what was asked.
#[derive(Default)]
struct FakeRegistry {
    asked: Mutex<Vec<(String, String)>>,
}

#[async_trait]
impl ImageResolver for FakeRegistry {
    async fn resolve(
        &self,
        reference: &str,
        platform: &pb::Platform,
        _mode: &str,
    ) -> Result<(String, Vec<u8>), String> {
        self.asked.lock().unwrap().push((
            reference.to_owned(),
            format!("{}/{}", platform.os, platform.architecture),
        ));
        match reference {
            "docker.io/library/busybox:latest" => Ok((
                BUSYBOX_DIGEST.to_owned(),
                BUSYBOX_CONFIG.as_bytes().to_vec(),
            )),
            "docker.io/library/onbuild:latest" => {
                let mut v: serde_json::Value = serde_json::from_str(BUSYBOX_CONFIG).unwrap();
                v["config"]["OnBuild"] = serde_json::json!(["RUN echo from-base"]);
                Ok((BUSYBOX_DIGEST.to_owned(), serde_json::to_vec(&v).unwrap()))
            }
            other => Err(format!(
                "failed to resolve source metadata for {other}: not found"
            )),
        }
    }
}

fn linux_amd64() -> pb::Platform {
    pb::Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        ..Default::default()
    }
}

fn options() -> ConvertOptions {
    let mut o = ConvertOptions::new(linux_amd64(), "sess1");
    o.llb_caps = Some(
        bk_frontend::bridge::LLB_CAPS
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>(),
    );
    o
}

async fn run(df: &str, opts: &ConvertOptions) -> Converted {
    convert(df.as_bytes(), opts, &FakeRegistry::default())
        .await
        .unwrap_or_else(|e| panic!("convert failed: {e} at {:?}", e.locations))
}

/// A decoded definition with vertices by display name.
struct Decoded {
    graph: Graph,
    by_name: HashMap<String, Digest>,
    config: serde_json::Value,
}

fn decode(c: &Converted) -> Decoded {
    let graph = Graph::decode(&c.definition).expect("valid definition");
    let names = bk_llb::name::names(&graph);
    let by_name = names.into_iter().map(|(d, n)| (n, d)).collect();
    let config = serde_json::from_slice(&c.image_config).unwrap();
    Decoded {
        graph,
        by_name,
        config,
    }
}

impl Decoded {
    fn vertex(&self, name: &str) -> &Vertex {
        let d = self.by_name.get(name).unwrap_or_else(|| {
            let mut names: Vec<_> = self.by_name.keys().collect();
            names.sort();
            panic!("no vertex {name:?}; have {names:#?}")
        });
        &self.graph.vertices[d]
    }

    fn names(&self) -> BTreeSet<String> {
        self.by_name.keys().cloned().collect()
    }

    fn exec(&self, name: &str) -> pb::ExecOp {
        match &self.vertex(name).op.op {
            Some(OpKind::Exec(e)) => e.clone(),
            other => panic!("{name} is not an exec: {other:?}"),
        }
    }

    fn file(&self, name: &str) -> Vec<pb::FileAction> {
        match &self.vertex(name).op.op {
            Some(OpKind::File(f)) => f.actions.clone(),
            other => panic!("{name} is not a file op: {other:?}"),
        }
    }

    fn source(&self, name: &str) -> pb::SourceOp {
        match &self.vertex(name).op.op {
            Some(OpKind::Source(s)) => s.clone(),
            other => panic!("{name} is not a source: {other:?}"),
        }
    }

    fn input_name(&self, name: &str, i: usize) -> String {
        let (d, _) = &self.vertex(name).inputs[i];
        self.by_name
            .iter()
            .find(|(_, v)| *v == d)
            .map(|(n, _)| n.clone())
            .unwrap()
    }

    fn history(&self) -> Vec<(String, bool)> {
        self.config["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["created_by"].as_str().unwrap().to_owned(),
                    h["empty_layer"].as_bool().unwrap_or(false),
                )
            })
            .collect()
    }
}

fn caps(v: &Vertex) -> BTreeSet<String> {
    v.metadata.caps.keys().cloned().collect()
}

#[tokio::test]
async fn image_base_run_copy_and_config() {
    let df = "FROM busybox AS builder\nRUN echo hi > /x\nCOPY app.py /app/\nWORKDIR /srv\nCMD [\"python\", \"app.py\"]\n";
    let c = run(df, &options()).await;
    let d = decode(&c);
    let from = format!("[1/4] FROM docker.io/library/busybox:latest@{BUSYBOX_DIGEST}");
    assert_eq!(
        d.names(),
        BTreeSet::from([
            from.clone(),
            "[2/4] RUN echo hi > /x".to_owned(),
            "[3/4] COPY app.py /app/".to_owned(),
            "[4/4] WORKDIR /srv".to_owned(),
            "[internal] load build context".to_owned(),
        ])
    );

    // The image source: pinned by digest, its platform, BuildKit's metadata.
    let img = d.vertex(&from);
    let src = d.source(&from);
    assert_eq!(
        src.identifier,
        format!("docker-image://docker.io/library/busybox:latest@{BUSYBOX_DIGEST}")
    );
    assert!(src.attrs.is_empty());
    assert_eq!(img.op.platform, Some(linux_amd64()));
    assert_eq!(img.op.constraints, Some(pb::WorkerConstraints::default()));
    assert_eq!(caps(img), BTreeSet::from(["source.image".to_owned()]));
    assert_eq!(
        img.metadata.description["com.docker.dockerfile.v1.command"],
        "FROM busybox AS builder"
    );

    // RUN: the image's env, workdir and user; BuildKit's caps.
    let run_v = d.vertex("[2/4] RUN echo hi > /x");
    let e = d.exec("[2/4] RUN echo hi > /x");
    let meta = e.meta.unwrap();
    assert_eq!(meta.args, ["/bin/sh", "-c", "echo hi > /x"]);
    assert_eq!(
        meta.env,
        ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    );
    assert_eq!(meta.cwd, "/home");
    assert_eq!(meta.user, "1000");
    assert!(meta.remove_mount_stubs_recursive);
    assert_eq!(run_v.op.platform, Some(linux_amd64()));
    assert_eq!(
        caps(run_v),
        BTreeSet::from([
            "exec.meta.base".to_owned(),
            "exec.meta.setsdefaultpath".to_owned(),
            "exec.mount.bind".to_owned(),
        ])
    );
    assert_eq!(
        run_v.metadata.description["com.docker.dockerfile.v1.command"],
        "RUN echo hi > /x"
    );

    // COPY from the context: BuildKit's copy flags, relative to the workdir.
    let actions = d.file("[3/4] COPY app.py /app/");
    let Some(Action::Copy(cp)) = &actions[0].action else {
        panic!("not a copy")
    };
    assert_eq!((cp.src.as_str(), cp.dest.as_str()), ("/app.py", "/app/"));
    assert!(cp.follow_symlink && cp.dir_copy_contents && cp.create_dest_path);
    assert!(cp.allow_wildcard && cp.allow_empty_wildcard);
    assert!(!cp.attempt_unpack_docker_compatibility);
    assert_eq!((cp.mode, cp.timestamp), (-1, -1));
    assert_eq!(
        d.input_name("[3/4] COPY app.py /app/", 0),
        "[2/4] RUN echo hi > /x"
    );
    assert_eq!(
        d.input_name("[3/4] COPY app.py /app/", 1),
        "[internal] load build context"
    );
    assert!(d.vertex("[3/4] COPY app.py /app/").op.platform.is_none());

    // The context: the session, only the files used.
    let ctx = d.source("[internal] load build context");
    assert_eq!(ctx.identifier, "local://context");
    assert_eq!(
        ctx.attrs,
        BTreeMap::from([
            ("local.followpaths".to_owned(), r#"["app.py"]"#.to_owned()),
            ("local.session".to_owned(), "sess1".to_owned()),
            ("local.sharedkeyhint".to_owned(), "context".to_owned()),
        ])
    );

    // WORKDIR: mkdir with the image's user.
    let actions = d.file("[4/4] WORKDIR /srv");
    let Some(Action::Mkdir(mk)) = &actions[0].action else {
        panic!("not a mkdir")
    };
    assert_eq!(
        (mk.path.as_str(), mk.mode, mk.make_parents),
        ("/srv", 0o755, true)
    );
    assert_eq!(
        mk.owner.clone().unwrap().user.unwrap().user,
        Some(pb::user_opt::User::ById(1000))
    );

    // The config: the base's, updated; history appended.
    let cfg = &d.config;
    assert_eq!(cfg["architecture"], "amd64");
    assert!(cfg.get("created").is_none());
    assert_eq!(
        cfg["config"]["Cmd"],
        serde_json::json!(["python", "app.py"])
    );
    assert_eq!(cfg["config"]["WorkingDir"], "/srv");
    assert_eq!(cfg["config"]["User"], "1000");
    assert_eq!(cfg["config"]["ArgsEscaped"], true);
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
    assert_eq!(
        d.history(),
        [
            ("BusyBox 1.37.0 (glibc), Debian 12".to_owned(), false),
            ("CMD [\"sh\"]".to_owned(), true),
            ("RUN /bin/sh -c echo hi > /x # buildkit".to_owned(), false),
            ("COPY app.py /app/ # buildkit".to_owned(), false),
            ("WORKDIR /srv".to_owned(), false),
            ("CMD [\"python\" \"app.py\"]".to_owned(), true),
        ]
    );
    let base: serde_json::Value =
        serde_json::from_slice(c.base_image_config.as_ref().unwrap()).unwrap();
    assert_eq!(base["created"], "2024-09-26T21:31:42Z");

    // Terminal metadata.
    let def = &c.definition;
    let terminal = Digest::of(def.def.last().unwrap());
    assert_eq!(
        def.metadata[&terminal.to_string()]
            .caps
            .keys()
            .collect::<Vec<_>>(),
        ["constraints", "meta.description", "platform"]
    );
}

#[tokio::test]
async fn scratch_config_and_metadata_history() {
    let df = r#"FROM scratch
ENV A=1 B="two words"
LABEL version=1.0 "maintainer"="me"
ARG X=y
USER app
EXPOSE 8080 53/udp
VOLUME ["/data"]
STOPSIGNAL SIGKILL
SHELL ["/bin/bash", "-c"]
HEALTHCHECK --interval=5m --timeout=3s CMD curl -f http://localhost/
ENTRYPOINT echo hi
ONBUILD RUN echo later
MAINTAINER someone
"#;
    let mut opts = options();
    opts.labels.insert("extra".into(), "label".into());
    let c = run(df, &opts).await;
    assert!(c.definition.def.is_empty(), "nothing to build");
    assert!(c.base_image_config.is_none());
    let text = String::from_utf8(c.image_config.clone()).unwrap();
    assert!(
        text.contains(r#""rootfs":{"type":"layers","diff_ids":null}"#),
        "{text}"
    );
    let d: serde_json::Value = serde_json::from_slice(&c.image_config).unwrap();
    let cfg = &d["config"];
    assert_eq!(
        cfg["Env"],
        serde_json::json!([
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "A=1",
            "B=two words"
        ])
    );
    assert_eq!(
        cfg["Labels"],
        serde_json::json!({"version": "1.0", "maintainer": "me", "extra": "label"})
    );
    assert_eq!(cfg["User"], "app");
    assert_eq!(
        cfg["ExposedPorts"],
        serde_json::json!({"53/udp": {}, "8080/tcp": {}})
    );
    assert_eq!(cfg["Volumes"], serde_json::json!({"/data": {}}));
    assert_eq!(cfg["StopSignal"], "SIGKILL");
    assert_eq!(cfg["Shell"], serde_json::json!(["/bin/bash", "-c"]));
    assert_eq!(
        cfg["Healthcheck"],
        serde_json::json!({"Test": ["CMD-SHELL", "curl -f http://localhost/"], "Interval": 300_000_000_000u64, "Timeout": 3_000_000_000u64})
    );
    assert_eq!(
        cfg["Entrypoint"],
        serde_json::json!(["/bin/bash", "-c", "echo hi"])
    );
    assert!(cfg.get("Cmd").is_none());
    assert_eq!(cfg["OnBuild"], serde_json::json!(["RUN echo later"]));
    assert_eq!(d["author"], "someone");
    let history: Vec<String> = d["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            assert_eq!(h["comment"], "buildkit.dockerfile.v0");
            assert_eq!(h["empty_layer"], true);
            h["created_by"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        history,
        [
            "ENV A=1 B=two words",
            "LABEL version=1.0 maintainer=me",
            "ARG X=y",
            "USER app",
            "EXPOSE [53/udp 8080/tcp]",
            "VOLUME [/data]",
            "STOPSIGNAL SIGKILL",
            "SHELL [/bin/bash -c]",
            r#"HEALTHCHECK &{["CMD-SHELL" "curl -f http://localhost/"] "5m0s" "3s" "0s" "0s" '\x00'}"#,
            r#"ENTRYPOINT ["/bin/bash" "-c" "echo hi"]"#,
            "MAINTAINER someone",
        ]
    );
}

#[tokio::test]
async fn targets_prune_and_unknown_target_errors() {
    let df = "FROM busybox AS base\nRUN echo base\n\nFROM scratch AS unused\nCOPY --from=nothere /x /y\n\nFROM base AS app\nRUN echo app\n\nFROM scratch AS out\nCOPY --from=app /bin/app /app\n";
    let registry = FakeRegistry::default();
    let c = convert(df.as_bytes(), &options(), &registry).await.unwrap();
    let d = decode(&c);
    let names = d.names();
    assert!(names.contains("[base 2/2] RUN echo base"), "{names:?}");
    assert!(names.contains("[app 1/1] RUN echo app"), "{names:?}");
    assert!(names.contains("[out 1/1] COPY --from=app /bin/app /app"));
    assert!(!names.iter().any(|n| n.contains("unused")));
    // Only the reachable image was resolved; the unused stage's implicit
    // image was not.
    assert_eq!(
        registry.asked.lock().unwrap().clone(),
        [(
            "docker.io/library/busybox:latest".to_owned(),
            "linux/amd64".to_owned()
        )]
    );

    let mut opts = options();
    opts.target = Some("APP".into());
    let c = run(df, &opts).await;
    let d = decode(&c);
    assert!(!d.names().iter().any(|n| n.contains("COPY")));
    let root = &d.graph.vertices[&d.graph.root.0];
    assert_eq!(d.by_name["[app 1/1] RUN echo app"], d.graph.root.0);
    assert!(root.inputs.len() == 1);

    opts.target = Some("ap".into());
    let err = convert(df.as_bytes(), &opts, &FakeRegistry::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        r#"target stage "ap" could not be found (did you mean app?)"#
    );

    let err = convert(
        b"FROM nosuchimage\nRUN true\n",
        &options(),
        &FakeRegistry::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.message,
        "nosuchimage: failed to resolve source metadata for docker.io/library/nosuchimage:latest: not found"
    );
    assert_eq!(
        err.locations,
        [bk_frontend::dockerfile::LineRange::new(1, 1)]
    );
}

#[tokio::test]
async fn platform_args_meta_args_and_build_args() {
    let df = "ARG IMG=busybox\nARG TAG\nFROM --platform=$BUILDPLATFORM ${IMG}${TAG:+:$TAG} AS b\nARG TARGETPLATFORM\nARG TARGETARCH\nARG BUILDOS\nARG V=default\nRUN echo $TARGETPLATFORM $TARGETARCH $BUILDOS $V\n";
    let mut opts = options();
    opts.target_platform = Some(pb::Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
        ..Default::default()
    });
    opts.build_args.insert("V".into(), "given".into());
    let registry = FakeRegistry::default();
    let c = convert(df.as_bytes(), &opts, &registry).await.unwrap();
    let d = decode(&c);
    let name = "[2/2] RUN echo linux/arm64 arm64 linux given";
    let e = d.exec(name);
    assert_eq!(
        e.meta.unwrap().env,
        [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "TARGETPLATFORM=linux/arm64",
            "TARGETARCH=arm64",
            "BUILDOS=linux",
            "V=given",
        ]
    );
    // Built on the build platform, exported as the target platform.
    assert_eq!(d.vertex(name).op.platform, Some(linux_amd64()));
    assert_eq!(registry.asked.lock().unwrap()[0].1, "linux/amd64");
    assert_eq!(d.config["architecture"], "arm64");
    let h = d.history();
    assert_eq!(
        h.last().unwrap().0,
        "RUN |4 TARGETPLATFORM=linux/arm64 TARGETARCH=arm64 BUILDOS=linux V=given /bin/sh -c echo $TARGETPLATFORM $TARGETARCH $BUILDOS $V # buildkit"
    );

    let mut opts = options();
    opts.build_args.insert("TAG".into(), "1.36".into());
    let err = convert(df.as_bytes(), &opts, &FakeRegistry::default())
        .await
        .unwrap_err();
    assert!(
        err.message.starts_with("busybox:1.36: failed to resolve"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn run_mounts_and_modes() {
    let df = r#"FROM scratch AS src
COPY go.mod /go.mod

FROM busybox
WORKDIR /w
RUN --mount=type=bind,from=src,source=/go.mod,target=go.mod \
    --mount=type=bind,target=/ctx,rw \
    --mount=type=cache,target=/root/.cache,sharing=locked \
    --mount=type=cache,id=npm,target=/npm,uid=1000,mode=0700 \
    --mount=type=tmpfs,target=/tmp,size=64m \
    --mount=type=secret,id=token \
    --mount=type=secret,id=api,env=API_KEY,required \
    --mount=type=ssh,id=github,required \
    --network=none --security=insecure \
    echo $API_KEY
"#;
    let mut opts = options();
    opts.cache_id_namespace = "ns".into();
    opts.build_args
        .insert("http_proxy".into(), "http://proxy:3128".into());
    let c = run(df, &opts).await;
    let d = decode(&c);
    let name = d.names().into_iter().find(|n| n.contains("RUN")).unwrap();
    assert!(name.starts_with("[stage-1 3/3] RUN --mount=type=bind,from=src"));
    assert!(name.ends_with("echo ****"), "{name}");
    let e = d.exec(&name);
    assert_eq!(e.network, pb::NetMode::None as i32);
    assert_eq!(e.security, pb::SecurityMode::Insecure as i32);
    let meta = e.meta.clone().unwrap();
    assert_eq!(meta.proxy_env.unwrap().http_proxy, "http://proxy:3128");
    assert_eq!(
        meta.env.last().unwrap(),
        "SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0"
    );
    let summary: Vec<_> = e
        .mounts
        .iter()
        .map(|m| {
            (
                m.dest.as_str(),
                m.mount_type,
                m.input,
                m.output,
                m.readonly,
                m.selector.as_str(),
            )
        })
        .collect();
    let (bind, cache, tmpfs, secret, ssh) = (
        pb::MountType::Bind as i32,
        pb::MountType::Cache as i32,
        pb::MountType::Tmpfs as i32,
        pb::MountType::Secret as i32,
        pb::MountType::Ssh as i32,
    );
    assert_eq!(
        summary,
        [
            ("/", bind, 0, 0, false, ""),
            ("/ctx", bind, 1, -1, false, ""),
            ("/npm", cache, 2, -1, false, "/cache"),
            ("/root/.cache", cache, -1, -1, false, ""),
            ("/tmp", tmpfs, -1, -1, false, ""),
            ("/w/go.mod", bind, 3, -1, true, "/go.mod"),
            ("/run/secrets/token", secret, -1, 0, false, ""),
            ("/run/buildkit/ssh_agent.0", ssh, -1, 0, false, ""),
        ]
    );
    assert_eq!(
        e.mounts[3].cache_opt,
        Some(pb::CacheOpt {
            id: "ns//root/.cache".into(),
            sharing: pb::CacheSharingOpt::Locked as i32
        })
    );
    assert_eq!(e.mounts[2].cache_opt.as_ref().unwrap().id, "ns/npm");
    assert_eq!(e.mounts[4].tmpfs_opt, Some(pb::TmpfsOpt { size: 64 << 20 }));
    assert_eq!(
        e.mounts[6].secret_opt,
        Some(pb::SecretOpt {
            id: "token".into(),
            uid: 0,
            gid: 0,
            mode: 0o400,
            optional: true
        })
    );
    assert_eq!(
        e.secretenv,
        [pb::SecretEnv {
            id: "api".into(),
            name: "API_KEY".into(),
            optional: false
        }]
    );
    let ssh_opt = e.mounts[7].ssh_opt.clone().unwrap();
    assert_eq!(
        (ssh_opt.id.as_str(), ssh_opt.mode, ssh_opt.optional),
        ("github", 0o600, false)
    );
    // The cache seed: a mkdir on scratch with the owner and mode asked.
    let seed = d.file("[internal] setting cache mount permissions");
    let Some(Action::Mkdir(mk)) = &seed[0].action else {
        panic!()
    };
    assert_eq!((mk.path.as_str(), mk.mode), ("/cache", 0o700));
    assert_eq!(
        mk.owner.clone().unwrap().user.unwrap().user,
        Some(pb::user_opt::User::ById(1000))
    );
    let v = d.vertex(&name);
    for cap in [
        "exec.meta.network",
        "exec.meta.security",
        "exec.meta.proxyenv",
        "exec.mount.cache",
        "exec.mount.cache.sharing",
        "exec.mount.tmpfs",
        "exec.mount.tmpfs.size",
        "exec.mount.secret",
        "exec.secretenv",
        "exec.mount.ssh",
        "exec.mount.selector",
    ] {
        assert!(caps(v).contains(cap), "{cap}");
    }
    // The context serves all of it (a bind of `/`).
    let ctx = d.source("[internal] load build context");
    assert!(!ctx.attrs.contains_key("local.followpaths"));
}

#[tokio::test]
async fn copy_variants_link_chown_chmod_heredoc_and_excludes() {
    let df = r#"FROM busybox
USER app
COPY --link --chown=app:staff a /a
COPY --chmod=u+x,g-w b /b
COPY --chmod=640 --exclude=*.md --parents src/./lib/ /dst/
ADD pkg.tar.gz /opt/
COPY <<EOF /etc/conf
hello $HOME
EOF
"#;
    let mut opts = options();
    opts.context_excludes = vec!["node_modules".into()];
    let c = run(df, &opts).await;
    let d = decode(&c);

    // --link: the copy onto scratch in a weak progress group, then merged.
    let copy = d.file("[2/6] COPY --link --chown=app:staff a /a");
    assert_eq!(copy[0].input, -1);
    let Some(Action::Copy(cp)) = &copy[0].action else {
        panic!()
    };
    let owner = cp.owner.clone().unwrap();
    assert_eq!(
        owner.user.unwrap().user,
        Some(pb::user_opt::User::ByName(pb::NamedUserOpt {
            name: "app".into(),
            input: -1
        }))
    );
    let link = d.vertex("[2/6] LINK COPY --link --chown=app:staff a /a");
    assert!(matches!(link.op.op, Some(OpKind::Merge(_))));
    assert_eq!(caps(link), BTreeSet::from(["mergeop".to_owned()]));
    let pg = link.metadata.progress_group.clone().unwrap();
    let copy_pg = d
        .vertex("[2/6] COPY --link --chown=app:staff a /a")
        .metadata
        .progress_group
        .clone()
        .unwrap();
    assert_eq!(pg.id, copy_pg.id);
    assert!(copy_pg.weak && !pg.weak);
    assert_eq!(pg.name, "[2/6] COPY --link --chown=app:staff a /a");
    assert_eq!(
        d.input_name("[2/6] LINK COPY --link --chown=app:staff a /a", 0),
        format!("[1/6] FROM docker.io/library/busybox:latest@{BUSYBOX_DIGEST}")
    );

    let b = d.file("[3/6] COPY --chmod=u+x,g-w b /b");
    let Some(Action::Copy(cp)) = &b[0].action else {
        panic!()
    };
    assert_eq!((cp.mode, cp.mode_str.as_str()), (0, "u+x,g-w"));

    let p = d.file("[4/6] COPY --chmod=640 --exclude=*.md --parents src/./lib/ /dst/");
    let Some(Action::Copy(cp)) = &p[0].action else {
        panic!()
    };
    assert_eq!(cp.src, "/src");
    assert_eq!(cp.include_patterns, ["lib"]);
    assert_eq!(cp.exclude_patterns, ["*.md"]);
    assert_eq!(cp.mode, 0o640);

    let add = d.file("[5/6] ADD pkg.tar.gz /opt/");
    let Some(Action::Copy(cp)) = &add[0].action else {
        panic!()
    };
    assert!(cp.attempt_unpack_docker_compatibility);

    // Heredoc: a file made on scratch, expanded, copied without wildcards.
    let mk = d.file("[internal] preparing inline document");
    let Some(Action::Mkfile(f)) = &mk[0].action else {
        panic!()
    };
    assert_eq!((f.path.as_str(), f.mode), ("/EOF", 0o644));
    assert_eq!(f.data, b"hello \n");
    let h = d.file("[6/6] COPY <<EOF /etc/conf");
    let Some(Action::Copy(cp)) = &h[0].action else {
        panic!()
    };
    assert_eq!((cp.src.as_str(), cp.dest.as_str()), ("/EOF", "/etc/conf"));
    assert!(!cp.allow_wildcard && !cp.follow_symlink && !cp.dir_copy_contents);

    let ctx = d.source("[internal] load build context");
    assert_eq!(ctx.attrs["local.excludepatterns"], r#"["node_modules"]"#);
    assert_eq!(
        ctx.attrs["local.followpaths"],
        r#"["a","b","pkg.tar.gz","src/lib"]"#
    );
    let history: Vec<String> = d.history().into_iter().map(|h| h.0).collect();
    assert_eq!(
        &history[2..],
        [
            "USER app",
            "COPY --chown=app:staff a /a # buildkit",
            "COPY --chmod=u+x,g-w b /b # buildkit",
            "COPY --parents --chmod=640 src/./lib/ /dst/ # buildkit",
            "ADD pkg.tar.gz /opt/ # buildkit",
            "COPY <<EOF /etc/conf # buildkit",
        ]
    );

    // ADD of a URL: an http source named after the URL's file, copied
    // without unpacking; the checksum goes to the source.
    let sum = format!("sha256:{}", "b".repeat(64));
    let c = convert(
        format!("FROM scratch\nADD --checksum={sum} https://example.com/x/a.tgz?v=1 /d/\n")
            .as_bytes(),
        &options(),
        &FakeRegistry::default(),
    )
    .await
    .unwrap();
    let d = decode(&c);
    // The source and the copy share the step's name: find them by kind.
    let copy = d
        .graph
        .vertices
        .values()
        .find(|v| matches!(v.op.op, Some(OpKind::File(_))))
        .expect("a file op");
    let Some(OpKind::File(f)) = &copy.op.op else {
        unreachable!()
    };
    let Some(Action::Copy(cp)) = &f.actions[0].action else {
        panic!()
    };
    assert_eq!((cp.src.as_str(), cp.dest.as_str()), ("/a.tgz", "/d/"));
    assert!(!cp.attempt_unpack_docker_compatibility);
    let (input, _) = &copy.inputs[0];
    let Some(OpKind::Source(src)) = &d.graph.vertices[input].op.op else {
        panic!("the copy's input is not a source")
    };
    assert_eq!(src.identifier, "https://example.com/x/a.tgz?v=1");
    assert_eq!(src.attrs["http.filename"], "a.tgz");
    assert_eq!(src.attrs["http.checksum"], sum);

    // ADD of a git reference: a git source with BuildKit's attrs, copied
    // from its root.
    let c = convert(
        b"FROM scratch\nADD --keep-git-dir https://example.com/r/repo.git?tag=v1#:sub /src/\n",
        &options(),
        &FakeRegistry::default(),
    )
    .await
    .unwrap();
    let d = decode(&c);
    let src = d
        .graph
        .vertices
        .values()
        .find_map(|v| match &v.op.op {
            Some(OpKind::Source(s)) if s.identifier.starts_with("git://") => Some(s.clone()),
            _ => None,
        })
        .expect("a git source");
    assert_eq!(
        src.identifier,
        "git://example.com/r/repo.git#refs/tags/v1:sub"
    );
    assert_eq!(src.attrs["git.fullurl"], "https://example.com/r/repo.git");
    assert_eq!(src.attrs["git.keepgitdir"], "true");
    assert_eq!(src.attrs["git.authtokensecret"], "GIT_AUTH_TOKEN");

    // COPY refuses URLs and git references as BuildKit does.
    for (df, msg) in [
        (
            "FROM scratch\nCOPY git@github.com:moby/buildkit.git /\n",
            "source can't be a git ref for COPY",
        ),
        (
            "FROM scratch\nCOPY https://example.com/a /\n",
            "source can't be a URL for COPY",
        ),
    ] {
        let err = convert(df.as_bytes(), &options(), &FakeRegistry::default())
            .await
            .unwrap_err();
        assert!(err.message.contains(msg), "{}", err.message);
        assert_eq!(
            err.locations,
            [bk_frontend::dockerfile::LineRange::new(2, 2)]
        );
    }
}

#[tokio::test]
async fn no_cache_epoch_and_onbuild() {
    let df =
        "FROM onbuild AS a\nWORKDIR /x\nRUN echo a\n\nFROM scratch AS b\nCOPY --from=a /x /x\n";
    let mut opts = options();
    opts.no_cache = Some(vec!["A".into()]);
    opts.build_args
        .insert("SOURCE_DATE_EPOCH".into(), "1700000000".into());
    let c = run(df, &opts).await;
    let d = decode(&c);
    // The base image's trigger runs first, as ONBUILD.
    assert!(
        d.vertex("[a 2/4] ONBUILD RUN echo from-base")
            .metadata
            .ignore_cache
    );
    assert!(d.vertex("[a 4/4] RUN echo a").metadata.ignore_cache);
    assert!(
        !d.vertex("[b 1/1] COPY --from=a /x /x")
            .metadata
            .ignore_cache
    );
    let mk = d.file("[a 3/4] WORKDIR /x");
    let Some(Action::Mkdir(m)) = &mk[0].action else {
        panic!()
    };
    assert_eq!(m.timestamp, 1_700_000_000_000_000_000);
    for h in d.config["history"].as_array().unwrap() {
        assert_eq!(h["created"], "2023-11-14T22:13:20Z");
    }
    let terminal = Digest::of(c.definition.def.last().unwrap());
    assert!(
        c.definition.metadata[&terminal.to_string()]
            .caps
            .contains_key("meta.ignorecache")
    );

    let mut opts = options();
    opts.no_cache = Some(Vec::new());
    let c = run(df, &opts).await;
    let d = decode(&c);
    assert!(
        d.vertex("[b 1/1] COPY --from=a /x /x")
            .metadata
            .ignore_cache
    );
}

#[tokio::test]
async fn named_contexts() {
    let df = "FROM base AS b\nRUN echo hi\nFROM scratch\nCOPY --from=assets /logo.png /\nCOPY --from=b /etc /etc\n";
    let mut opts = options();
    opts.named_contexts
        .insert("base".into(), "docker-image://busybox".into());
    opts.named_contexts
        .insert("assets".into(), "local:web".into());
    opts.named_context_excludes
        .insert("web".into(), vec!["*.psd".into()]);
    let c = run(df, &opts).await;
    let d = decode(&c);
    let img = d.source("[context base] busybox");
    assert_eq!(
        img.identifier,
        "docker-image://docker.io/library/busybox:latest"
    );
    let web = d.source("[context assets] load from client");
    assert_eq!(web.identifier, "local://web");
    assert_eq!(
        web.attrs,
        BTreeMap::from([
            (
                "local.excludepatterns".to_owned(),
                r#"["*.psd"]"#.to_owned()
            ),
            ("local.followpaths".to_owned(), r#"["logo.png"]"#.to_owned()),
            ("local.session".to_owned(), "sess1".to_owned()),
            (
                "local.sharedkeyhint".to_owned(),
                "context:assets".to_owned()
            ),
        ])
    );
    // The image context's config applies to the stage.
    // The stage counts its FROM, which a named context does not show.
    let e = d.exec("[b 1/2] RUN echo hi");
    assert_eq!(e.meta.unwrap().cwd, "/home");

    opts.named_contexts
        .insert("assets".into(), "git://github.com/x/y".into());
    let err = convert(df.as_bytes(), &opts, &FakeRegistry::default())
        .await
        .unwrap_err();
    assert!(err.message.contains("not supported yet"), "{}", err.message);
}

#[tokio::test]
async fn errors_carry_lines() {
    for (df, msg, line) in [
        (
            "FROM scratch\nCOPY --from=later /a /b\nFROM scratch AS later\nFROM scratch\nCOPY --from=0 /a /b\n",
            r#"cannot copy from stage "later", it needs to be defined before current stage "stage-0""#,
            2,
        ),
        (
            "FROM scratch\nRUN --mount=type=bind,target=/ true\n",
            r#"invalid mount target "/""#,
            2,
        ),
        (
            "FROM scratch\nWORKDIR /a\nSTOPSIGNAL nope\n",
            "invalid signal: nope",
            3,
        ),
        ("FROM scratch\nENV A=${B:?required}\n", "B: required", 2),
    ] {
        let err = convert(df.as_bytes(), &options(), &FakeRegistry::default())
            .await
            .unwrap_err();
        assert!(err.message.contains(msg), "{} vs {msg}", err.message);
        assert_eq!(
            err.locations,
            [bk_frontend::dockerfile::LineRange::new(line, line)],
            "{msg}"
        );
    }
    let err = convert(b"ARG X\n", &options(), &FakeRegistry::default())
        .await
        .unwrap_err();
    assert_eq!(err.message, "dockerfile contains no stages to build");
    let err = convert(
        b"FROM scratch AS a\nCOPY --from=b /x /y\nFROM scratch AS b\nCOPY --from=a /x /y\n",
        &options(),
        &FakeRegistry::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.message, "circular dependency detected on stage: a");
}

#[tokio::test]
async fn attrs_and_source_map() {
    let attrs = BTreeMap::from([
        ("build-arg:A".to_owned(), "1".to_owned()),
        ("label:l".to_owned(), "v".to_owned()),
        ("platform".to_owned(), "linux/arm64,linux/amd64".to_owned()),
        ("no-cache".to_owned(), String::new()),
        ("add-hosts".to_owned(), "db=10.0.0.2".to_owned()),
        ("shm-size".to_owned(), "1048576".to_owned()),
        ("ulimit".to_owned(), "nofile=1024:2048".to_owned()),
        ("force-network-mode".to_owned(), "host".to_owned()),
        ("context:foo".to_owned(), "local:foo".to_owned()),
    ]);
    let o = ConvertOptions::from_attrs(&attrs, linux_amd64(), "s", "context", Vec::new()).unwrap();
    assert_eq!(o.build_args["A"], "1");
    assert_eq!(o.labels["l"], "v");
    assert_eq!(o.platforms.len(), 2);
    assert_eq!(o.target_platform.as_ref().unwrap().architecture, "arm64");
    assert!(o.multi_platform);
    assert_eq!(o.no_cache, Some(Vec::new()));
    assert_eq!(o.ulimits[0].hard, 2048);
    assert_eq!(o.network_mode, pb::NetMode::Host);
    assert_eq!(o.named_contexts["foo"], "local:foo");
    let bad = BTreeMap::from([("image-resolve-mode".to_owned(), "x".to_owned())]);
    assert!(ConvertOptions::from_attrs(&bad, linux_amd64(), "s", "context", Vec::new()).is_err());

    let mut opts = o;
    opts.llb_caps = options().llb_caps;
    opts.named_contexts.clear();
    opts.source_map = Some(bk_frontend::dockerfile::SourceMap {
        filename: "Dockerfile".into(),
        definition: None,
    });
    let df = "FROM scratch\nRUN \\\n  true\nCOPY a /a\n";
    let c = run(df, &opts).await;
    let d = decode(&c);
    // Scratch has no platform of its own to show; COPY shows the stage's.
    assert!(d.names().contains("[linux/arm64 2/2] COPY a /a"));
    let name = "[1/2] RUN   true";
    let e = d.exec(name);
    assert_eq!(e.network, pb::NetMode::Host as i32);
    let meta = e.meta.unwrap();
    assert_eq!(meta.extra_hosts[0].ip, "10.0.0.2");
    assert_eq!(meta.ulimit.len(), 1);
    assert!(e.mounts.iter().any(|m| m.dest == "/dev/shm"));
    assert!(d.vertex(name).metadata.ignore_cache);
    let source = c.definition.source.clone().unwrap();
    assert_eq!(source.infos[0].filename, "Dockerfile");
    assert_eq!(source.infos[0].language, "Dockerfile");
    let loc = &source.locations[&d.by_name[name].to_string()].locations[0];
    let lines: Vec<i32> = loc
        .ranges
        .iter()
        .map(|r| r.start.unwrap_or_default().line)
        .collect();
    assert_eq!(lines, [2, 3]);
}

#[tokio::test]
async fn deep_dockerfiles_do_not_overflow() {
    let mut df = String::from("FROM scratch\n");
    for i in 0..5000 {
        df.push_str(&format!("RUN echo {i}\n"));
    }
    let c = run(&df, &options()).await;
    assert_eq!(c.definition.def.len(), 5001);
}

#[tokio::test]
async fn input_named_context_is_imported() {
    // A frontend input: a definition of its own, used as a stage.
    let input = bk_llb::builder::local("other", BTreeMap::new())
        .with_name("their context")
        .marshal();
    let mut opts = options();
    opts.named_contexts
        .insert("dep".into(), "input:theirs".into());
    opts.inputs.insert("theirs".into(), input);
    let c = run("FROM scratch\nCOPY --from=dep /f /f\n", &opts).await;
    let d = decode(&c);
    assert_eq!(d.source("their context").identifier, "local://other");
    assert_eq!(
        d.input_name("[stage-0 1/1] COPY --from=dep /f /f", 0),
        "their context"
    );

    opts.named_contexts
        .insert("dep".into(), "input:missing".into());
    let err = convert(
        b"FROM scratch\nCOPY --from=dep /f /f\n",
        &opts,
        &FakeRegistry::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.message, "invalid input missing for dep");
}

/// The outline (`buildx --call outline`): the target's args (with their
/// values and description comments, through base stages and the stages it
/// copies from), secrets and SSH agents — as Go's for the same file.
#[tokio::test]
async fn outline_of_a_target() {
    let df = b"# VERSION the version to build
ARG VERSION=1.2
ARG UNUSED=x
# BASE where it starts
ARG BASE=scratch
FROM ${BASE} AS base
# MODE how it is built
ARG MODE=release
ARG VERSION
RUN --mount=type=secret,id=token,required=true --mount=type=ssh echo $MODE

# build compiles it
FROM base AS build
ARG OTHER=${MODE}-y
RUN --mount=type=secret,id=npmrc --mount=type=ssh,id=gh,required echo

FROM scratch AS final
COPY --from=build / /
";
    let c = convert(df, &options(), &FakeRegistry::default())
        .await
        .unwrap();
    let o = &c.outline;
    assert_eq!(o.name, "final");
    let args: Vec<(&str, &str, &str, usize)> = o
        .args
        .iter()
        .map(|a| {
            (
                a.name.as_str(),
                a.value.as_str(),
                a.description.as_str(),
                a.location.start,
            )
        })
        .collect();
    assert_eq!(
        args,
        [
            ("VERSION", "1.2", "the version to build", 2),
            ("BASE", "scratch", "where it starts", 5),
            ("MODE", "release", "how it is built", 8),
            ("OTHER", "release-y", "", 14),
        ]
    );
    let secrets: Vec<(&str, bool)> = o
        .secrets
        .iter()
        .map(|s| (s.name.as_str(), s.required))
        .collect();
    assert_eq!(secrets, [("token", true), ("npmrc", false)]);
    let ssh: Vec<(&str, bool)> = o
        .ssh
        .iter()
        .map(|s| (s.name.as_str(), s.required))
        .collect();
    assert_eq!(ssh, [("default", false), ("gh", true)]);
}
