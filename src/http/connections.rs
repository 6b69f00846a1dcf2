//! The server: HTTP/1.1, with bounds on what a connection may send and how slowly.

use super::*;

/// What a connection may send, and how slowly. (The body's size is the router's `max_body_bytes`.)
/// `serve` hands them to the handlers as a request extension; a router served otherwise (tests)
/// uses the defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerLimits {
    /// The request head (request line and headers) must arrive within this once the connection
    /// is open or the previous response is sent: a client sending nothing, or its headers a
    /// byte at a time, is disconnected here. So is an idle keep-alive connection.
    pub header_read_timeout: Duration,
    /// Most header fields in a request (431 with our error body past it). Four times as many
    /// are refused by hyper itself, with an empty 431.
    pub max_headers: usize,
    /// Most bytes of a request head (431 with our error body past it). Four times as many are
    /// refused by hyper itself, with an empty 431; that is also what a connection buffers.
    pub max_head_bytes: usize,
    /// A request's whole body must arrive within this once its head has: a client that trickles
    /// it is answered 408 at this deadline, and the refusal recorded.
    pub body_read_timeout: Duration,
    /// Connections served at once. Past it no more are accepted: they wait in the kernel's
    /// listen backlog until one closes.
    pub max_connections: usize,
    /// Requests with a body (anything but GET and HEAD) handled at once, from reading the body
    /// to the answer. Past it a request waits, its body unread (TCP holds the sender back),
    /// until one is answered: memory stays bounded by about this many bodies. GET (health,
    /// readiness, metrics, the audit query) is never held up by uploads.
    pub max_concurrent_requests: usize,
}

impl Default for ServerLimits {
    fn default() -> ServerLimits {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_head_bytes: 16 << 10,
            body_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_concurrent_requests: 64,
        }
    }
}

/// Serve `app` on `listener` until `shutdown`; then stop accepting, let requests in flight
/// finish (idle connections close at once) and return when every connection has ended.
///
/// `axum::serve` sets no timer, so hyper's header read timeout never fires there: a client that
/// connects and sends nothing holds its connection forever. This is the same hyper HTTP/1.1
/// connection (axum's router as the service) with a timer and the [`ServerLimits`]. A request
/// refused before it reaches the router (head too slow, too large, malformed) is recorded
/// through `pipeline` as a `rejected` record with the peer address; with no body to hash, each
/// kind of refusal is deduplicated as one body would be (once per period, repeats counted).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    pipeline: Option<Arc<Pipeline>>,
    limits: ServerLimits,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let hard_head_bytes = (limits.max_head_bytes * 4).max(8192);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers * 4)
        .max_header_size(hard_head_bytes)
        .max_buf_size(hard_head_bytes);
    let builder = Arc::new(builder);
    let app = app.layer(axum::Extension(limits));
    let mut connections = tokio::task::JoinSet::new();
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let uploads = Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_requests));
    loop {
        // A connection is accepted only with room for it (the permit goes with its task).
        let room = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            room = open.clone().acquire_owned() => room,
        };
        let Ok(room) = room else { break };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) => continue,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (builder, token, pipeline, uploads) =
            (builder.clone(), shutdown.clone(), pipeline.clone(), uploads.clone());
        let stats = Arc::new(ConnStats::default());
        let io = hyper_util::rt::TokioIo::new(Sniffed { inner: stream, stats: stats.clone() });
        let service = {
            let (router, stats, pipeline) =
                (hyper_util::service::TowerToHyperService::new(app.clone()), stats.clone(), pipeline.clone());
            hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                use hyper::service::Service as _;
                stats.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let with_body = !matches!(*req.method(), Method::GET | Method::HEAD);
                let answer = match head_over_limits(&req, limits) {
                    None => Ok(router.call(req)),
                    Some(over) => Err(over),
                };
                let (pipeline, uploads) = (pipeline.clone(), uploads.clone());
                async move {
                    match answer {
                        Ok(answer) => {
                            // The body is read when the answer is first polled: after the permit.
                            let _turn = if with_body { uploads.acquire_owned().await.ok() } else { None };
                            answer.await
                        }
                        Err((error, kind)) => {
                            let (reason, location) = (error.message.clone(), error.location.clone());
                            record_head_refusal(pipeline.as_deref(), Some(431), kind, reason, location, peer).await;
                            Ok(error.into_response())
                        }
                    }
                }
            })
        };
        connections.spawn(async move {
            let _room = room;
            let conn = builder.serve_connection(io, service);
            let mut conn = std::pin::pin!(conn);
            let mut closing = false;
            let result = loop {
                tokio::select! {
                    result = conn.as_mut() => break result,
                    _ = token.cancelled(), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            };
            refused_head(result.err(), &stats, peer, pipeline.as_deref(), limits).await;
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// A request head over our limits: our 431, saying which header or how many.
pub(super) fn head_over_limits<B>(req: &Request<B>, limits: ServerLimits) -> Option<(ApiError, &'static str)> {
    let fields = req.headers().len();
    if fields > limits.max_headers {
        let message = format!("request head has {fields} header fields; the limit is {}", limits.max_headers);
        let location = json!({ "header_fields": fields });
        return Some((ApiError::at(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, message, location), "fields"));
    }
    let size = |(k, v): (&header::HeaderName, &header::HeaderValue)| k.as_str().len() + v.len() + 4;
    let bytes =
        req.method().as_str().len() + req.uri().to_string().len() + 12 + req.headers().iter().map(size).sum::<usize>();
    if bytes > limits.max_head_bytes {
        let (name, largest) = req.headers().iter().map(|h| (h.0.as_str(), size(h))).max_by_key(|h| h.1)?;
        let name = elide(name, MAX_PATH);
        let message = format!(
            "request head of {bytes} bytes exceeds the limit of {} bytes (largest: header `{name}`, {largest} bytes)",
            limits.max_head_bytes
        );
        let location = json!({ "header": name, "head_bytes": bytes });
        return Some((ApiError::at(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, message, location), "bytes"));
    }
    None
}

/// Per connection: requests handed to the service, response heads written (hyper writes one of
/// its own, without calling the service, when it refuses a request head), and bytes read since
/// the last one (none: an idle keep-alive connection, not a slow client).
#[derive(Default)]
pub(super) struct ConnStats {
    pub(super) served: std::sync::atomic::AtomicUsize,
    pub(super) heads: std::sync::atomic::AtomicUsize,
    pub(super) last_status: std::sync::atomic::AtomicU16,
    pub(super) read_since_head: std::sync::atomic::AtomicUsize,
}

/// A connection that notes the status line of every response head written.
pub(super) struct Sniffed {
    pub(super) inner: tokio::net::TcpStream,
    pub(super) stats: Arc<ConnStats>,
}

impl Sniffed {
    pub(super) fn note(&self, written: &[u8]) {
        if let Some(rest) = written.strip_prefix(b"HTTP/1.1 ")
            && let Some(status) = rest.get(..3).and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok())
        {
            self.stats.heads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.stats.last_status.store(status, std::sync::atomic::Ordering::Relaxed);
            self.stats.read_since_head.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl tokio::io::AsyncRead for Sniffed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.stats.read_since_head.fetch_add(read, std::sync::atomic::Ordering::Relaxed);
        polled
    }
}

impl tokio::io::AsyncWrite for Sniffed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            self.note(&buf[..*n]);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let std::task::Poll::Ready(Ok(n)) = &polled
            && let Some(first) = bufs.iter().find(|b| !b.is_empty())
        {
            self.note(&first[..first.len().min(*n)]);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection has ended: if hyper refused a request head (it timed out, or hyper answered
/// without calling the service), record it.
pub(super) async fn refused_head(
    error: Option<hyper::Error>,
    stats: &ConnStats,
    peer: std::net::SocketAddr,
    pipeline: Option<&Pipeline>,
    limits: ServerLimits,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let hard = ((limits.max_head_bytes * 4).max(8192), limits.max_headers * 4);
    let (status, kind, reason) = match &error {
        // Kept alive after a response and then idle: closed, nothing refused.
        Some(e) if e.is_timeout() && stats.served.load(Relaxed) > 0 && stats.read_since_head.load(Relaxed) == 0 => {
            return;
        }
        Some(e) if e.is_timeout() => {
            let secs = limits.header_read_timeout.as_secs_f64();
            (None, "timeout", format!("request head not received within {secs}s; connection closed"))
        }
        Some(e) if e.is_parse_version_h2() => (None, "http2", "HTTP/2 is not served (HTTP/1.1 only)".to_string()),
        // hyper answered a request head it could not take with a status of its own.
        _ if stats.heads.load(Relaxed) > stats.served.load(Relaxed) => match stats.last_status.load(Relaxed) {
            431 => (
                Some(431),
                "hard-limit",
                format!("request head over {} bytes or {} header fields; refused unread", hard.0, hard.1),
            ),
            414 => (Some(414), "uri", "request URI too long".to_string()),
            status => (Some(status), "malformed", "malformed request head".to_string()),
        },
        Some(e) => {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
            return;
        }
        None => return,
    };
    record_head_refusal(pipeline, status, kind, reason, Value::Null, peer).await;
}

/// Record a refused request head. They come in bursts (connections opened together time out
/// together), so they are recorded one at a time: the pipeline's de-duplication then sees
/// each kind once per period, not once per connection in flight.
pub(super) async fn record_head_refusal(
    pipeline: Option<&Pipeline>,
    status: Option<u16>,
    kind: &str,
    reason: String,
    location: Value,
    peer: std::net::SocketAddr,
) {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    tracing::debug!(%peer, ?status, %reason, "request head refused");
    let Some(pipeline) = pipeline else { return };
    let rejection = Rejection {
        source: "http",
        origin: json!({ "status": status, "location": location, "peer": peer.to_string(), "stage": "request head" }),
        reason,
        size: 0,
        body: &[],
        // No body to hash: the kind of refusal is what repeats.
        body_sha256: crate::digest::sha256_hex(format!("request head refused: {kind}").as_bytes()),
    };
    let _one = ONE_AT_A_TIME.lock().await;
    if let Err(e) = pipeline.reject(rejection).await {
        warn!(error = %e, "could not record a refused request head");
    }
}
