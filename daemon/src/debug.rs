//! The debug listener (`--debugaddr`): plain HTTP/1.1 for humans and for
//! BuildKit's test harness, which fetches `/debug/pprof/goroutine` when a
//! test times out and fails if that request fails.

use std::convert::Infallible;
use std::path::PathBuf;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};

/// Binds the debug address: `unix:///path`, `tcp://host:port` or `host:port`.
pub async fn serve(addr: &str) -> std::io::Result<()> {
    if let Some(path) = addr.strip_prefix("unix://") {
        let path = PathBuf::from(path);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        tracing::info!(addr, "debug handlers listening");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_conn(TokioIo::new(stream)));
            }
        });
    } else {
        let hostport = addr.strip_prefix("tcp://").unwrap_or(addr);
        let listener = TcpListener::bind(hostport).await?;
        tracing::info!(addr, "debug handlers listening");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_conn(TokioIo::new(stream)));
            }
        });
    }
    Ok(())
}

async fn serve_conn<I>(io: TokioIo<I>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(handle);
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(error = %e, "debug connection ended");
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/debug/pprof/goroutine" | "/debug/pprof/" | "/debug/pprof" => (
            StatusCode::OK,
            format!(
                "buildkit-rs {}: a Rust daemon has no goroutines; \
                 run with --debug or RUST_LOG for task-level logs\n",
                crate::version::VERSION
            ),
        ),
        "/debug/version" => (
            StatusCode::OK,
            format!("{}\n", crate::version::VERSION_LINE),
        ),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    Ok(response)
}
