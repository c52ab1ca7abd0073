//! A session end to end over real gRPC: a Control server whose `Session`
//! goes to the manager, a client session serving Secrets, and daemon-side
//! calls through the tunnel.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bk_proto::moby::buildkit::secrets::v1::secrets_client::SecretsClient;
use bk_proto::moby::buildkit::secrets::v1::secrets_server::{Secrets, SecretsServer};
use bk_proto::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};
use bk_proto::moby::buildkit::v1 as api;
use bk_proto::moby::buildkit::v1::control_client::ControlClient;
use bk_proto::moby::buildkit::v1::control_server::{Control, ControlServer};
use bk_session::{ClientSession, SessionError, SessionManager};
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Only `Session` matters here.
struct TestControl(Arc<SessionManager>);

#[tonic::async_trait]
impl Control for TestControl {
    async fn disk_usage(
        &self,
        _: Request<api::DiskUsageRequest>,
    ) -> Result<Response<api::DiskUsageResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    type PruneStream = BoxStream<api::UsageRecord>;
    async fn prune(
        &self,
        _: Request<api::PruneRequest>,
    ) -> Result<Response<Self::PruneStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn solve(
        &self,
        _: Request<api::SolveRequest>,
    ) -> Result<Response<api::SolveResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    type StatusStream = BoxStream<api::StatusResponse>;
    async fn status(
        &self,
        _: Request<api::StatusRequest>,
    ) -> Result<Response<Self::StatusStream>, Status> {
        Err(Status::unimplemented(""))
    }
    type SessionStream = BoxStream<api::BytesMessage>;
    async fn session(
        &self,
        request: Request<Streaming<api::BytesMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let metadata = request.metadata().clone();
        let stream = self.0.handle(&metadata, request.into_inner())?;
        Ok(Response::new(stream))
    }
    async fn list_workers(
        &self,
        _: Request<api::ListWorkersRequest>,
    ) -> Result<Response<api::ListWorkersResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn info(
        &self,
        _: Request<api::InfoRequest>,
    ) -> Result<Response<api::InfoResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    type ListenBuildHistoryStream = BoxStream<api::BuildHistoryEvent>;
    async fn listen_build_history(
        &self,
        _: Request<api::BuildHistoryRequest>,
    ) -> Result<Response<Self::ListenBuildHistoryStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn update_build_history(
        &self,
        _: Request<api::UpdateBuildHistoryRequest>,
    ) -> Result<Response<api::UpdateBuildHistoryResponse>, Status> {
        Err(Status::unimplemented(""))
    }
}

/// Secrets whose value is `size` bytes of the id repeated; `hang` never answers.
struct TestSecrets;

#[tonic::async_trait]
impl Secrets for TestSecrets {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretResponse>, Status> {
        let id = request.into_inner().id;
        if id == "hang" {
            futures::future::pending::<()>().await;
        }
        if id == "missing" {
            return Err(Status::not_found("secret missing not found"));
        }
        let size = id.parse::<usize>().unwrap_or(5);
        Ok(Response::new(GetSecretResponse {
            data: vec![b'x'; size],
        }))
    }
}

const GET_SECRET: &str = "/moby.buildkit.secrets.v1.Secrets/GetSecret";

async fn start_daemon() -> (
    Arc<SessionManager>,
    ControlClient<tonic::transport::Channel>,
) {
    let manager = SessionManager::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ControlServer::new(TestControl(manager.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (manager, ControlClient::new(channel))
}

fn client_session(id: &str) -> ClientSession {
    ClientSession::new(id, "shared").with_service(
        |r| r.add_service(SecretsServer::new(TestSecrets)),
        &[GET_SECRET],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_calls_client_services_through_the_tunnel() {
    let (manager, control) = start_daemon().await;
    let running = client_session("sess-1").run(control.clone()).await.unwrap();

    let session = manager.get("sess-1", Duration::from_secs(5)).await.unwrap();
    assert_eq!(session.shared_key(), "shared");
    assert!(session.supports(GET_SECRET));
    assert!(
        session.supports(&GET_SECRET.to_uppercase()),
        "method check is case-insensitive"
    );
    assert!(!session.supports("/moby.filesync.v1.FileSync/DiffCopy"));
    // A `prefix:` is ignored when looking up.
    assert!(
        manager
            .get("local:sess-1", Duration::from_secs(1))
            .await
            .is_ok()
    );

    let mut secrets = SecretsClient::new(session.channel()).max_decoding_message_size(16 << 20);
    let small = secrets
        .get_secret(GetSecretRequest {
            id: "7".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(small.into_inner().data.len(), 7);

    // Bigger than any window: flow control in both layers must cooperate.
    let big = secrets
        .get_secret(GetSecretRequest {
            id: "3145728".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(big.into_inner().data.len(), 3 << 20);

    // Many at once over the one connection.
    let calls = (0..32).map(|i| {
        let mut c = secrets.clone();
        async move {
            c.get_secret(GetSecretRequest {
                id: (1000 + i).to_string(),
                ..Default::default()
            })
            .await
        }
    });
    for (i, r) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(r.unwrap().into_inner().data.len(), 1000 + i);
    }

    let err = secrets
        .get_secret(GetSecretRequest {
            id: "missing".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Closing ends the session on both sides, promptly.
    tokio::time::timeout(
        Duration::from_secs(5),
        running.close(Duration::from_secs(5)),
    )
    .await
    .expect("close must not hang");
    tokio::time::timeout(Duration::from_secs(5), session.closed())
        .await
        .expect("daemon side must notice the close");
    assert!(matches!(
        manager.get("sess-1", Duration::from_millis(200)).await,
        Err(SessionError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_session_and_duplicates() {
    let (manager, control) = start_daemon().await;
    let waiter = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.get("late", Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _running = client_session("late").run(control.clone()).await.unwrap();
    let session = waiter.await.unwrap().unwrap();
    assert_eq!(session.id(), "late");

    // A second session with the same id is refused; the first keeps working.
    let dup = client_session("late").run(control.clone()).await;
    match dup {
        Err(status) => assert_eq!(status.code(), tonic::Code::AlreadyExists),
        Ok(_) => panic!("duplicate session accepted"),
    }
    let mut secrets = SecretsClient::new(session.channel());
    assert!(
        secrets
            .get_secret(GetSecretRequest {
                id: "3".into(),
                ..Default::default()
            })
            .await
            .is_ok()
    );

    // `any` falls through ids that never connect to one that exists.
    let ids = vec!["".to_string(), "late".to_string()];
    let got = manager
        .any(&ids, |s| async move {
            Ok::<_, SessionError>(s.id().to_string())
        })
        .await
        .unwrap();
    assert_eq!(got, "late");
    let none = manager
        .any(&[], |_| async { Ok::<_, SessionError>(()) })
        .await;
    assert!(matches!(none, Err(SessionError::NoActiveSessions)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_when_the_session_goes_away() {
    let (manager, control) = start_daemon().await;
    let running = client_session("gone").run(control.clone()).await.unwrap();
    let session = manager.get("gone", Duration::from_secs(5)).await.unwrap();
    let stuck = {
        let session = session.clone();
        tokio::spawn(async move {
            let mut secrets = SecretsClient::new(session.channel());
            session
                .call(secrets.get_secret(GetSecretRequest {
                    id: "hang".into(),
                    ..Default::default()
                }))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(running);
    let result = tokio::time::timeout(Duration::from_secs(10), stuck)
        .await
        .expect("stuck call must be failed when the session dies")
        .unwrap();
    assert!(result.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_credentials_from_the_client() {
    use bk_session::auth::{self, DockerAuth};
    use bk_session::secrets::{self, SecretError, SecretSource, SecretStore};

    let dir = std::env::temp_dir().join(format!("bk-session-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), b"hunter2").unwrap();
    std::fs::write(dir.join("huge"), vec![b'x'; 600 * 1024]).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"auths":{"localhost:5000":{"username":"u","password":"p"}}}"#,
    )
    .unwrap();
    // SAFETY: set before any thread of this test reads it.
    unsafe { std::env::set_var("BK_SESSION_TEST_SECRET", "from-env") };

    let store = SecretStore::new([
        ("file".to_string(), SecretSource::File(dir.join("token"))),
        (
            "env".to_string(),
            SecretSource::Env("BK_SESSION_TEST_SECRET".into()),
        ),
        ("huge".to_string(), SecretSource::File(dir.join("huge"))),
        ("gone".to_string(), SecretSource::File(dir.join("nope"))),
    ]);
    let (manager, control) = start_daemon().await;
    let _running = ClientSession::new("with-secrets", "")
        .with_service(
            |r| r.add_service(store.into_service()),
            &[secrets::GET_SECRET],
        )
        .with_service(
            |r| r.add_service(DockerAuth::with_config(dir.join("config.json")).into_service()),
            auth::METHODS,
        )
        .run(control.clone())
        .await
        .unwrap();
    let _bare = ClientSession::new("bare", "")
        .run(control.clone())
        .await
        .unwrap();

    let group = vec!["with-secrets".to_string()];
    assert_eq!(
        secrets::get_secret(&manager, &group, "file").await.unwrap(),
        b"hunter2"
    );
    assert_eq!(
        secrets::get_secret(&manager, &group, "env").await.unwrap(),
        b"from-env"
    );
    for missing in ["nope", "gone"] {
        let err = secrets::get_secret(&manager, &group, missing)
            .await
            .unwrap_err();
        assert!(matches!(err, SecretError::NotFound(_)), "{err}");
        assert_eq!(err.to_string(), format!("secret {missing}: not found"));
    }
    assert!(secrets::get_secret(&manager, &group, "huge").await.is_err());
    // A session that serves no secrets does not have any.
    let bare = vec!["bare".to_string()];
    assert!(matches!(
        secrets::get_secret(&manager, &bare, "file").await,
        Err(SecretError::NotFound(_))
    ));

    let creds = auth::credentials(&manager, &group, "localhost:5000")
        .await
        .unwrap();
    assert_eq!((creds.username.as_str(), creds.secret.as_str()), ("u", "p"));
    let anon = auth::credentials(&manager, &group, "elsewhere.example")
        .await
        .unwrap();
    assert!(anon.username.is_empty() && anon.secret.is_empty());
    let anon = auth::credentials(&manager, &bare, "localhost:5000")
        .await
        .unwrap();
    assert!(anon.secret.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_agent_is_forwarded_both_ways() {
    use bk_session::ssh::{self, SshForwarder};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = std::env::temp_dir().join(format!("bk-ssh-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let agent_path = dir.join("agent.sock");
    let _ = std::fs::remove_file(&agent_path);
    // A stand-in agent that echoes what it reads.
    let agent = tokio::net::UnixListener::bind(&agent_path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = agent.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    assert!(
        SshForwarder::new([("k".to_string(), vec![dir.clone()])]).is_err(),
        "a directory is no socket"
    );
    let forwarder = SshForwarder::new([("default".to_string(), vec![agent_path.clone()])]).unwrap();

    let (manager, control) = start_daemon().await;
    let _running = ClientSession::new("ssh", "")
        .with_service(|r| r.add_service(forwarder.into_service()), ssh::METHODS)
        .run(control.clone())
        .await
        .unwrap();
    let session = manager.get("ssh", Duration::from_secs(5)).await.unwrap();
    ssh::check_agent(&session, "default").await.unwrap();
    assert!(ssh::check_agent(&session, "other").await.is_err());

    let (step_side, daemon_side) = tokio::net::UnixStream::pair().unwrap();
    let forward = {
        let session = session.clone();
        tokio::spawn(async move { ssh::forward_connection(&session, "default", daemon_side).await })
    };
    let (mut read, mut write) = step_side.into_split();
    write.write_all(b"ssh-agent request").await.unwrap();
    let mut got = vec![0u8; 17];
    read.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ssh-agent request");
    drop(write);
    let mut rest = Vec::new();
    read.read_to_end(&mut rest).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), forward)
        .await
        .expect("forwarding ends when the step closes")
        .unwrap()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Builds `root` with a small tree: files, a subdir, a symlink, an empty dir.
fn make_tree(root: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root.join("src/deep")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("README"), b"hello").unwrap();
    std::fs::write(root.join("src/main.rs"), b"fn main() {}").unwrap();
    std::fs::write(root.join("src/deep/data.bin"), vec![7u8; 200_000]).unwrap();
    std::fs::write(root.join("secret.key"), b"do not send").unwrap();
    std::fs::set_permissions(
        root.join("src/main.rs"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("src/main.rs", root.join("link")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_come_in_and_outputs_go_out() {
    use bk_fsutil::receive::ReceiveOptions;
    use bk_session::filesync::{
        self, FileSendTarget, FileSendTargets, FileSyncProvider, SyncRequest,
    };
    use std::os::unix::fs::PermissionsExt;

    let tmp = tempfile::tempdir().unwrap();
    let context = tmp.path().join("context");
    make_tree(&context);
    let out_dir = tmp.path().join("out");
    let out_tar = tmp.path().join("out.tar");

    let (manager, control) = start_daemon().await;
    let provider = FileSyncProvider::new([("context".to_string(), context.clone())].into());
    let targets = FileSendTargets::new(vec![
        Some(FileSendTarget::Dir(out_dir.clone())),
        None,
        Some(FileSendTarget::File(out_tar.clone())),
    ]);
    let _running = ClientSession::new("files", "")
        .with_service(
            |r| r.add_service(provider.into_service()),
            filesync::FILESYNC_METHODS,
        )
        .with_service(|r| r.add_service(targets), filesync::FILESEND_METHODS)
        .run(control.clone())
        .await
        .unwrap();
    let session = manager.get("files", Duration::from_secs(5)).await.unwrap();

    // In, with an exclude pattern applied by the client.
    let snapshot = tmp.path().join("snapshot");
    std::fs::create_dir_all(&snapshot).unwrap();
    let request = SyncRequest {
        name: "context".into(),
        exclude_patterns: Some(vec!["*.key".into()]),
        ..Default::default()
    };
    let first = filesync::sync_dir(&session, &request, &snapshot, ReceiveOptions::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read(snapshot.join("README")).unwrap(), b"hello");
    assert_eq!(
        std::fs::read(snapshot.join("src/deep/data.bin"))
            .unwrap()
            .len(),
        200_000
    );
    assert!(
        !snapshot.join("secret.key").exists(),
        "excluded file was sent"
    );
    assert!(snapshot.join("empty").is_dir());
    assert_eq!(
        std::fs::read_link(snapshot.join("link")).unwrap(),
        std::path::Path::new("src/main.rs")
    );
    let mode = std::fs::metadata(snapshot.join("src/main.rs"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(first.files_requested, 3);

    // Again, unchanged: no content moves. Then one changed file moves alone.
    let again = filesync::sync_dir(&session, &request, &snapshot, ReceiveOptions::default())
        .await
        .unwrap();
    assert_eq!(again.files_requested, 0);
    assert_eq!(again.bytes_received, 0);
    std::fs::write(context.join("README"), b"hello, again").unwrap();
    let changed = filesync::sync_dir(&session, &request, &snapshot, ReceiveOptions::default())
        .await
        .unwrap();
    assert_eq!(changed.files_requested, 1);
    assert_eq!(
        std::fs::read(snapshot.join("README")).unwrap(),
        b"hello, again"
    );

    // Unknown names are refused by the client.
    let unknown = SyncRequest {
        name: "nope".into(),
        ..Default::default()
    };
    let err = filesync::sync_dir(&session, &unknown, &snapshot, ReceiveOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no access allowed"), "{err}");

    // Out: a directory to exporter 0, bytes to exporter 2.
    let entries = bk_fsutil::walk::walk(&snapshot, &Default::default()).unwrap();
    filesync::send_dir(&session, 0, entries).await.unwrap();
    assert_eq!(
        std::fs::read(out_dir.join("src/main.rs")).unwrap(),
        b"fn main() {}"
    );
    assert_eq!(
        std::fs::read(out_dir.join("src/deep/data.bin"))
            .unwrap()
            .len(),
        200_000
    );
    let body = futures::stream::iter(vec![
        bytes::Bytes::from(vec![1u8; 5 << 20]),
        bytes::Bytes::from_static(b"end"),
    ]);
    filesync::send_file(&session, 2, &Default::default(), body)
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&out_tar).unwrap().len(), (5 << 20) + 3);
    // Exporter 1 has no client-side output.
    let none = futures::stream::iter(vec![bytes::Bytes::from_static(b"x")]);
    assert!(
        filesync::send_file(&session, 1, &Default::default(), none)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_token_fallbacks() {
    use bk_session::auth::{self, DockerAuth};
    use bk_session::upload::{self, UploadProvider};
    use futures::StreamExt;

    let tmp = tempfile::tempdir().unwrap();
    let blob = tmp.path().join("context.tar");
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&blob, &content).unwrap();

    let (manager, control) = start_daemon().await;
    let provider = UploadProvider::new([("/abc".to_string(), blob.clone())].into());
    let _running = ClientSession::new("uploads", "")
        .with_service(|r| r.add_service(provider.into_service()), &[upload::PULL])
        .with_service(
            |r| r.add_service(DockerAuth::with_config(tmp.path().join("none.json")).into_service()),
            auth::METHODS,
        )
        .run(control.clone())
        .await
        .unwrap();
    let session = manager
        .get("uploads", Duration::from_secs(5))
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut stream = upload::pull(&session, "/abc").await.unwrap();
    while let Some(chunk) = stream.next().await {
        got.extend(chunk.unwrap());
    }
    assert_eq!(got, content);
    let mut missing = upload::pull(&session, "/nope")
        .await
        .map(|s| s.into_future());
    if let Ok(fut) = missing.as_mut() {
        let (first, _) = fut.await;
        assert!(first.is_some_and(|r| r.is_err()));
    }

    // Our client offers no token authority: the daemon falls back.
    assert_eq!(
        auth::token_authority(&session, "localhost:5000", &[1; 32])
            .await
            .unwrap(),
        None
    );
    let request = bk_proto::moby::filesync::v1::FetchTokenRequest {
        client_id: "buildkit-client".into(),
        host: "localhost:5000".into(),
        ..Default::default()
    };
    assert_eq!(auth::fetch_token(&session, request).await.unwrap(), None);
}

/// A client whose bytes to the daemon can be frozen mid-session, as
/// BuildKit's integration test does to check that the daemon's health checks
/// fail stuck calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_fails_stuck_calls_through_health_checks() {
    use bk_session::manager::{HEADER_HEALTH_TIMEOUT, HEADER_METHOD, HEADER_SESSION_ID};
    use futures::StreamExt;
    use tokio::sync::{mpsc, watch};
    use tokio_stream::wrappers::ReceiverStream;

    let (manager, mut control) = start_daemon().await;
    let (to_daemon, outbound) = mpsc::channel::<api::BytesMessage>(16);
    let mut request = Request::new(ReceiverStream::new(outbound));
    let md = request.metadata_mut();
    md.insert(HEADER_SESSION_ID, "stall".parse().unwrap());
    md.insert(HEADER_HEALTH_TIMEOUT, "1000".parse().unwrap());
    for m in ["/grpc.health.v1.Health/Check", GET_SECRET] {
        md.append(HEADER_METHOD, m.parse().unwrap());
    }
    let inbound = control.session(request).await.unwrap().into_inner();
    let (io, mut from_server, _tunnel) =
        bk_session::tunnel::open(inbound.map(|m| m.map(|m| m.data)));
    let (stall, stalled) = watch::channel(false);
    tokio::spawn(async move {
        while let Some(data) = from_server.recv().await {
            if *stalled.borrow() {
                // Frozen: keep the stream open, send nothing more.
                futures::future::pending::<()>().await;
            }
            if to_daemon.send(api::BytesMessage { data }).await.is_err() {
                break;
            }
        }
    });
    let (_, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(SecretsServer::new(TestSecrets))
            .serve_with_incoming(futures::stream::once(
                async move { Ok::<_, std::io::Error>(io) },
            )),
    );

    let session = manager.get("stall", Duration::from_secs(5)).await.unwrap();
    let mut secrets = SecretsClient::new(session.channel());
    // Works while the client answers.
    assert!(
        secrets
            .get_secret(GetSecretRequest {
                id: "3".into(),
                ..Default::default()
            })
            .await
            .is_ok()
    );

    stall.send(true).unwrap();
    let stuck = session.call(secrets.get_secret(GetSecretRequest {
        id: "hang".into(),
        ..Default::default()
    }));
    let result = tokio::time::timeout(Duration::from_secs(15), stuck)
        .await
        .expect("the stuck call must fail once health checks fail");
    assert!(result.is_err());
    assert!(session.is_closed());
}
