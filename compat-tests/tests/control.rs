//! The Control API as clients see it before any build: workers, info, disk
//! usage, prune, the history probe buildx makes, health, and clear
//! `Unimplemented` answers for what is not built yet.

use bk_client::ServingStatus;
use bk_proto::moby::buildkit::v1::{
    BuildHistoryRequest, PruneRequest, SolveRequest, StatusRequest,
};
use compat_tests::{Daemon, DaemonOptions};
use tonic::Code;

const LABEL: &str = "org.mobyproject.buildkit.worker.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_report_labels_platforms_and_version() {
    let daemon = Daemon::start(DaemonOptions {
        args: vec!["--oci-worker-labels=com.example.team=build".into()],
        ..Default::default()
    });
    let client = daemon.client().await;
    let workers = client.list_workers(vec![]).await.unwrap();
    assert_eq!(workers.len(), 1);
    let w = &workers[0];
    assert_eq!(w.id.len(), 25, "worker id {:?}", w.id);
    assert_eq!(w.labels[&format!("{LABEL}executor")], "oci");
    assert_eq!(w.labels[&format!("{LABEL}sandbox")], "true");
    assert_eq!(w.labels["com.example.team"], "build");
    for key in [
        "snapshotter",
        "hostname",
        "network",
        "oci.process-mode",
        "selinux.enabled",
    ] {
        assert!(
            w.labels.contains_key(&format!("{LABEL}{key}")),
            "missing label {key}"
        );
    }
    assert!(!w.platforms.is_empty());
    assert_eq!(w.platforms[0].os, "linux");
    assert!(
        w.platforms[0].variant.is_empty(),
        "native platform comes first"
    );
    // The harness passes --oci-worker-gc=false.
    assert!(w.gc_policy.is_empty());
    let version = w.buildkit_version.clone().unwrap();
    assert!(version.version.starts_with('v'));

    // Filters select by id and label.
    let by_id = client
        .list_workers(vec![format!("id=={}", w.id)])
        .await
        .unwrap();
    assert_eq!(by_id.len(), 1);
    let none = client
        .list_workers(vec![format!("labels.\"{LABEL}executor\"==containerd")])
        .await
        .unwrap();
    assert!(none.is_empty());
    let bad = client.list_workers(vec!["id~=x".into()]).await.unwrap_err();
    assert!(bad.to_string().contains("not supported"), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_policy_is_reported_when_gc_is_on() {
    let daemon = Daemon::start(DaemonOptions {
        args: vec![
            "--oci-worker-gc=true".into(),
            "--oci-worker-gc-keepstorage=1000".into(),
        ],
        ..Default::default()
    });
    let workers = daemon.client().await.list_workers(vec![]).await.unwrap();
    let policy = &workers[0].gc_policy;
    assert_eq!(policy.len(), 4);
    assert_eq!(policy[0].filters.len(), 3);
    assert_eq!(policy[0].keep_duration, 48 * 3600 * 1_000_000_000);
    assert_eq!(policy[1].reserved_space, 1_000_000_000);
    assert!(policy[3].all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_du_prune_health() {
    let daemon = Daemon::start(DaemonOptions::default());
    let client = daemon.client().await;
    let info = client.info().await.unwrap();
    assert!(!info.package.is_empty());
    assert!(info.version.starts_with("v0."), "{}", info.version);
    assert!(client.disk_usage(vec![]).await.unwrap().is_empty());
    let removed = client
        .prune(PruneRequest {
            all: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(removed.is_empty());
    assert_eq!(client.health().await.unwrap(), ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_probe_is_a_clean_empty_stream() {
    let daemon = Daemon::start(DaemonOptions::default());
    let client = daemon.client().await;
    // Exactly what buildx sends to detect the history API.
    let (events, timestamp) = client
        .build_history(BuildHistoryRequest {
            active_only: true,
            r#ref: "buildx-test-history-api-feature".into(),
            early_exit: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(events.is_empty());
    let timestamp = timestamp.expect("buildkit-current-timestamp header");
    assert!(
        timestamp.contains('T') && timestamp.ends_with('Z'),
        "{timestamp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_frontends_and_unknown_jobs_get_clear_errors() {
    let daemon = Daemon::start(DaemonOptions::default());
    let mut control = daemon.client().await.control();
    let err = control
        .solve(SolveRequest {
            r#ref: "r1".into(),
            frontend: "gateway.v0".into(),
            frontend_attrs: [("source".to_string(), "example.com/frontend".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(
        err.message().contains("not supported yet"),
        "{}",
        err.message()
    );

    // Status waits briefly for a job that may still be starting, then says
    // what BuildKit says.
    let err = control
        .status(StatusRequest {
            r#ref: "never-started".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such job never-started");
    // The daemon is still fine afterwards.
    assert!(
        control
            .info(bk_proto::moby::buildkit::v1::InfoRequest {})
            .await
            .is_ok()
    );
}

/// A message whose field 1 is a varint where `SolveRequest.Ref` is a string.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongWireType {
    #[prost(uint64, tag = "1")]
    r#ref: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_an_error_not_a_crash() {
    let daemon = Daemon::start(DaemonOptions::default());
    let client = daemon.client().await;
    let mut grpc = tonic::client::Grpc::new(client.channel());
    grpc.ready().await.unwrap();
    let codec: tonic_prost::ProstCodec<WrongWireType, WrongWireType> =
        tonic_prost::ProstCodec::default();
    let path = http::uri::PathAndQuery::from_static("/moby.buildkit.v1.Control/Solve");
    let err = grpc
        .unary(tonic::Request::new(WrongWireType { r#ref: 7 }), path, codec)
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert!(
        client.info().await.is_ok(),
        "daemon died:\n{}",
        daemon.log_text()
    );
}
