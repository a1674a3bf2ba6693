//! A minimal HTTP/1.1 server for `GET /metrics` (Prometheus text format).
//!
//! Bounded like everything a peer can reach: at most [`CONNECTIONS_MAX`]
//! connections served at once (others wait in the listen backlog), a request
//! head of at most [`HEAD_MAX`] bytes read within [`READ_TIMEOUT`], one
//! request per connection (`Connection: close`).

use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::debug;

/// Connections served at once.
const CONNECTIONS_MAX: usize = 8;
/// Largest request head read.
const HEAD_MAX: usize = 8 * 1024;
/// How long a client may take to send its request head (and to read the answer).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `metrics` on `listener` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                debug!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if tokio::time::timeout(READ_TIMEOUT * 2, answer(stream, &metrics))
                .await
                .is_err()
            {
                debug!("metrics: a connection timed out");
            }
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a request head (its first line is enough).
fn route(head: &[u8]) -> Route {
    let Ok(text) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let mut parts = text.lines().next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    if method != "GET" {
        return Route::MethodNotAllowed;
    }
    match target.split('?').next() {
        Some("/metrics") => Route::Metrics,
        _ => Route::NotFound,
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = loop {
        let read = match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break false,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                debug!(error = %e, "metrics: read failed");
                return;
            }
        };
        head.extend_from_slice(&buf[..read]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
        if head.len() > HEAD_MAX {
            break false;
        }
    };
    let (status, content_type, body) = match (complete, route(&head)) {
        (false, _) | (_, Route::BadRequest) => {
            ("400 Bad Request", "text/plain", b"bad request\n".to_vec())
        }
        (true, Route::MethodNotAllowed) => (
            "405 Method Not Allowed",
            "text/plain",
            b"only GET\n".to_vec(),
        ),
        (true, Route::NotFound) => (
            "404 Not Found",
            "text/plain",
            b"metrics are at /metrics\n".to_vec(),
        ),
        (true, Route::Metrics) => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(header.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    };
    if let Err(e) = write.await {
        debug!(error = %e, "metrics: write failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe"), Route::BadRequest);
    }

    async fn get(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_the_metrics_and_refuses_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        metrics.fsyncs.inc();
        let server = tokio::spawn(serve(listener, metrics));
        let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("\npbft_fsyncs_total 1\n"), "{ok}");
        let missing = get(addr, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let garbage = get(addr, b"garbage\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        server.abort();
    }
}
