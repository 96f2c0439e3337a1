//! The metrics listeners: a tiny HTTP/1.1 responder (one request per
//! connection) on the TCP `metrics_address` (`GET /metrics`) and on the
//! unix socket `debug_address` (`GET /debug/vars`, and `/metrics` unless
//! metrics are off), as the Go reference's two listeners.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

use crate::stargz::StargzFs;

/// Largest request head read before answering.
const MAX_REQUEST: usize = 8 << 10;

/// What a listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Routes {
    /// `GET /metrics`.
    metrics: bool,
    /// `GET /debug/vars`.
    debug: bool,
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, fs: Arc<StargzFs>) {
    let routes = Routes {
        metrics: true,
        debug: false,
    };
    loop {
        if let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(answer(conn, fs.clone(), routes));
        }
    }
}

/// Serves `GET /debug/vars` (and `GET /metrics` when `metrics`) on the
/// unix socket `listener` until the task is dropped.
pub async fn serve_debug(listener: UnixListener, fs: Arc<StargzFs>, metrics: bool) {
    let routes = Routes {
        metrics,
        debug: true,
    };
    loop {
        if let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(answer(conn, fs.clone(), routes));
        }
    }
}

/// `/debug/vars`: expvar-shaped JSON (the command line, as Go's) with the
/// daemon's version and mounted layers.
pub fn debug_vars(fs: &StargzFs) -> String {
    let cmdline: Vec<String> = std::env::args().collect();
    serde_json::json!({
        "cmdline": cmdline,
        "rstargz": {
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "mounted_layers": fs.mounted().len(),
        },
    })
    .to_string()
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut conn: S, fs: Arc<StargzFs>, routes: Routes) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let (body, content_type) = if routes.metrics && head.starts_with(b"GET /metrics ") {
        (Some(super::render(&fs)), "text/plain; version=0.0.4")
    } else if routes.debug && head.starts_with(b"GET /debug/vars ") {
        (Some(debug_vars(&fs)), "application/json; charset=utf-8")
    } else {
        (None, "")
    };
    let response = match body {
        Some(body) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
    };
    let _ = conn.write_all(response.as_bytes()).await;
    let _ = conn.shutdown().await;
}
