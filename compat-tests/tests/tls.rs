//! TCP listeners: mutual TLS accepts a client certificate from the daemon's
//! CA and refuses none or one from another CA; handshakes without ALPN (as
//! buildx's remote driver makes them) work; plain TCP needs an explicit flag.

use std::sync::Arc;
use std::time::Duration;

use bk_client::TlsOptions;
use compat_tests::certs::TestCa;
use compat_tests::{Daemon, DaemonOptions, free_port, run_buildkitd};
use hyper_util::rt::TokioIo;

struct TlsSetup {
    _dir: tempfile::TempDir,
    daemon: Daemon,
    addr: String,
    ca: std::path::PathBuf,
    good: TlsOptions,
    foreign: TlsOptions,
}

fn start_tls_daemon() -> TlsSetup {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "daemon");
    let other_ca = TestCa::new(dir.path(), "other");
    let server = ca.server(dir.path(), "server");
    let client = ca.client(dir.path(), "client");
    let stranger = other_ca.client(dir.path(), "stranger");
    let port = free_port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let daemon = Daemon::start(DaemonOptions {
        addrs: vec![addr.clone()],
        args: vec![
            format!("--tlscert={}", server.cert.display()),
            format!("--tlskey={}", server.key.display()),
            format!("--tlscacert={}", ca.cert_path.display()),
        ],
        ..Default::default()
    });
    let opts = |files: &compat_tests::certs::CertFiles| TlsOptions {
        ca: Some(ca.cert_path.clone()),
        cert: Some(files.cert.clone()),
        key: Some(files.key.clone()),
        server_name: None,
    };
    TlsSetup {
        good: opts(&client),
        foreign: opts(&stranger),
        ca: ca.cert_path.clone(),
        _dir: dir,
        daemon,
        addr,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_accepts_the_ca_s_clients_only() {
    let setup = start_tls_daemon();

    let client = Daemon::client_at(&setup.addr, Some(&setup.good))
        .await
        .unwrap();
    assert_eq!(client.list_workers(vec![]).await.unwrap().len(), 1);
    assert!(client.info().await.is_ok());
    assert!(client.disk_usage(vec![]).await.unwrap().is_empty());

    // By name too: the certificate covers localhost.
    let port = setup.addr.rsplit(':').next().unwrap();
    let mut named = setup.good.clone();
    named.server_name = Some("localhost".into());
    let client = Daemon::client_at(&format!("tcp://127.0.0.1:{port}"), Some(&named))
        .await
        .unwrap();
    assert!(client.info().await.is_ok());

    let no_cert = TlsOptions {
        ca: Some(setup.ca.clone()),
        ..Default::default()
    };
    let refused = match Daemon::client_at(&setup.addr, Some(&no_cert)).await {
        Err(_) => true,
        Ok(c) => c.info().await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");

    let refused = match Daemon::client_at(&setup.addr, Some(&setup.foreign)).await {
        Err(_) => true,
        Ok(c) => c.info().await.is_err(),
    };
    assert!(refused, "a client certificate from another CA was accepted");

    let plain = match Daemon::client_at(&setup.addr, None).await {
        Err(_) => true,
        Ok(c) => c.info().await.is_err(),
    };
    assert!(plain, "plain HTTP/2 was served on a TLS port");

    // The daemon survives all of that.
    let client = Daemon::client_at(&setup.addr, Some(&setup.good))
        .await
        .unwrap();
    assert!(client.info().await.is_ok(), "{}", setup.daemon.log_text());
}

fn pem_certs(path: &std::path::Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls::pki_types::pem::PemObject::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_without_alpn_is_accepted() {
    let setup = start_tls_daemon();
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certs(&setup.ca) {
        roots.add(cert).unwrap();
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(setup.good.key.as_ref().unwrap());
    use rustls::pki_types::pem::PemObject as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(pem_certs(setup.good.cert.as_ref().unwrap()), key.unwrap())
        .unwrap();
    // No alpn_protocols: like buildx's remote driver, speak h2 regardless.
    assert!(config.alpn_protocols.is_empty());
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let hostport = setup.addr.trim_start_matches("tcp://").to_string();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_| {
            let (connector, hostport) = (connector.clone(), hostport.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(hostport).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let tls = connector.connect(name, tcp).await?;
                assert!(tls.get_ref().1.alpn_protocol().is_none());
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    let mut control = bk_proto::moby::buildkit::v1::control_client::ControlClient::new(channel);
    let workers = control
        .list_workers(bk_proto::moby::buildkit::v1::ListWorkersRequest::default())
        .await
        .unwrap();
    assert_eq!(workers.into_inner().record.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_needs_the_explicit_flag() {
    let port = free_port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let (code, stderr) = run_buildkitd(&[
        "--root",
        root.to_str().unwrap(),
        "--config",
        "/nonexistent.toml",
        "--addr",
        &addr,
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("needs TLS"), "{stderr}");

    let daemon = Daemon::start(DaemonOptions {
        addrs: vec![addr.clone()],
        args: vec!["--allow-insecure-tcp".into()],
        ..Default::default()
    });
    let client = Daemon::client_at(&addr, None).await.unwrap();
    assert!(client.info().await.is_ok());
    assert!(daemon.log_text().contains("WITHOUT TLS"));
}
