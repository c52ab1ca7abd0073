//! A client-side build through `LLBBridge`, as buildx drives one: the
//! client calls `Solve` without a definition, then talks to the bridge on
//! the same connection (routed by `buildkit-controlapi-buildid`): `Ping`,
//! `ResolveSourceMeta`, `Warn`, a multi-platform `Solve` of the Dockerfile
//! frontend, and `Return` of its `Refs`; the daemon exports what came back.

use std::collections::BTreeMap;
use std::time::Duration;

use bk_client::solve_opts::BuildFlags;
use bk_proto::moby::buildkit::v1::frontend::{
    self as gw, llb_bridge_client::LlbBridgeClient, result::Result as ResultKind,
};
use bk_proto::pb;
use compat_tests::{Daemon, DaemonOptions, random};
use tonic::metadata::MetadataValue;

fn with_build<T>(build_ref: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "buildkit-controlapi-buildid",
        MetadataValue::try_from(build_ref).unwrap(),
    );
    req
}

/// A frontend subrequest through the bridge: its result.
async fn subrequest(
    bridge: &mut LlbBridgeClient<tonic::transport::Channel>,
    build_ref: &str,
    opts: &[(&str, &str)],
) -> gw::Result {
    bridge
        .solve(with_build(
            build_ref,
            gw::SolveRequest {
                frontend: "dockerfile.v0".into(),
                frontend_opt: opts
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                allow_result_return: true,
                allow_result_array_ref: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .result
        .expect("a result")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_side_multi_platform_build_through_the_bridge() {
    let daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("amd64.txt"), "x86\n").unwrap();
    std::fs::write(dir.join("arm64.txt"), "arm\n").unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nARG TARGETARCH\nCOPY ${TARGETARCH}.txt /arch\n",
    )
    .unwrap();
    std::fs::write(dir.join("lint.Dockerfile"), "FROM scratch as Base\n").unwrap();
    let out = tmp.path().join("out");
    let flags = BuildFlags {
        frontend: Some("dockerfile.v0".into()),
        local: vec![
            format!("context={}", dir.display()),
            format!("dockerfile={}", dir.display()),
        ],
        output: vec![format!("type=local,dest={}", out.display())],
        ..Default::default()
    };
    let build_ref = random("gw");
    let mut prepared = flags.to_request(None, &build_ref, &random("s")).unwrap();
    // No definition and no frontend: the client builds through the bridge.
    prepared.request.frontend.clear();
    prepared.request.frontend_attrs.clear();
    let client = daemon.client().await;
    let build = {
        let client = client.clone();
        tokio::spawn(async move { client.build(prepared, |_| {}).await })
    };

    let mut bridge = LlbBridgeClient::new(client.channel());
    // The bridge exists once the daemon has the Solve.
    let mut pong = None;
    for _ in 0..100 {
        match bridge
            .ping(with_build(&build_ref, gw::PingRequest {}))
            .await
        {
            Ok(p) => {
                pong = Some(p.into_inner());
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let pong = pong.expect("the bridge answers Ping");
    let caps: Vec<&str> = pong
        .frontend_api_caps
        .iter()
        .map(|c| c.id.as_str())
        .collect();
    for cap in ["returnmap", "gateway.warnings", "proto.refarray"] {
        assert!(caps.contains(&cap), "{caps:?}");
    }

    // Git and HTTP metadata are refused plainly.
    let err = bridge
        .resolve_source_meta(with_build(
            &build_ref,
            gw::ResolveSourceMetaRequest {
                source: Some(pb::SourceOp {
                    identifier: "git://example.com/r".into(),
                    attrs: BTreeMap::new(),
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");

    bridge
        .warn(with_build(
            &build_ref,
            gw::WarnRequest {
                digest: "sha256:1111111111111111111111111111111111111111111111111111111111111111"
                    .into(),
                level: 0,
                short: b"a warning from the client".to_vec(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();

    // The lint subrequest (buildx --check): metadata, no build.
    let lint = subrequest(
        &mut bridge,
        &build_ref,
        &[
            ("requestid", "frontend.lint"),
            ("filename", "lint.Dockerfile"),
        ],
    )
    .await;
    assert_eq!(lint.metadata["result.statuscode"], b"1");
    assert_eq!(lint.metadata["version"], b"1.0.0");
    let results: serde_json::Value = serde_json::from_slice(&lint.metadata["result.json"]).unwrap();
    let rules: Vec<&str> = results["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["ruleName"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["StageNameCasing", "FromAsCasing"], "{results}");
    assert_eq!(results["sources"][0]["filename"], "lint.Dockerfile");
    let text = String::from_utf8_lossy(&lint.metadata["result.txt"]).into_owned();
    assert!(text.contains(" 1 | >>> FROM scratch as Base"), "{text}");

    // Targets (buildx --call targets): the stages, the last the default.
    let targets = subrequest(
        &mut bridge,
        &build_ref,
        &[("requestid", "frontend.targets")],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&targets.metadata["result.txt"]),
        "TARGET    DESCRIPTION\n(default) \n"
    );

    let mut opts = BTreeMap::new();
    opts.insert(
        "platform".to_string(),
        "linux/amd64,linux/arm64".to_string(),
    );
    let solved = bridge
        .solve(with_build(
            &build_ref,
            gw::SolveRequest {
                frontend: "dockerfile.v0".into(),
                frontend_opt: opts,
                allow_result_return: true,
                allow_result_array_ref: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let result = solved.result.expect("a result");
    let Some(ResultKind::Refs(refs)) = &result.result else {
        panic!("not a ref map: {result:?}");
    };
    let platforms: Vec<&String> = refs.refs.keys().collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    assert!(result.metadata.contains_key("refs.platforms"));

    bridge
        .r#return(with_build(
            &build_ref,
            gw::ReturnRequest {
                result: Some(result),
                error: None,
            },
        ))
        .await
        .unwrap();
    build.await.unwrap().unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("linux_arm64/arch")).unwrap(),
        "arm\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("linux_amd64/arch")).unwrap(),
        "x86\n"
    );
}
