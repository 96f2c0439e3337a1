//! The fault policy: a small HTTP/1.1 proxy in front of a real registry, one request per
//! connection. It records every request, can misbehave on purpose (ignore
//! Range, redirect blob reads to an expiring location, demand bearer tokens),
//! injects transient faults at random per request ([`FaultPlan`]: resets,
//! 5xx/429, stalls, short or corrupted bodies, 401s, redirects) and serves a
//! docker-style token endpoint at `/token`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the proxy misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward as is.
    PassThrough,
    /// Drop `Range` when it names several ranges (registry answers 200 + whole blob).
    IgnoreMultiRange,
    /// Drop every `Range` header.
    IgnoreRange,
    /// Answer blob GETs with 307 to `/redirected/<generation>/…`.
    Redirect,
    /// Answer 400 to multi-range requests (like GCS).
    RejectMultiRange,
    /// Accept connections and never answer.
    Stall,
}

/// One transient fault injected into a single request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// Reset the connection (RST) instead of answering.
    Reset,
    /// Answer this status; 429 carries `Retry-After: 1`, 503 an HTTP-date
    /// one second ahead.
    Status(u16),
    /// Wait this long, then answer normally (a slow registry).
    Stall(Duration),
    /// Never answer, until the client gives up (longer than its timeout).
    Hang,
    /// Promise the whole body in Content-Length, send half of it, close.
    ShortBody,
    /// Forward the answer with one body byte flipped.
    Corrupt,
    /// Answer 401 with a Bearer challenge, as if the token had expired.
    Unauthorized,
    /// Answer blob GETs with 307 to `/redirected/<generation>/…`.
    Redirect,
    /// Each faulted request gets one of [`MIXED`], chosen at random.
    Mixed,
}

/// The fault modes [`FaultMode::Mixed`] draws from.
pub const MIXED: [FaultMode; 11] = [
    FaultMode::Reset,
    FaultMode::Status(500),
    FaultMode::Status(502),
    FaultMode::Status(503),
    FaultMode::Status(429),
    FaultMode::Stall(Duration::from_millis(200)),
    FaultMode::Hang,
    FaultMode::ShortBody,
    FaultMode::Corrupt,
    FaultMode::Unauthorized,
    FaultMode::Redirect,
];

/// Which requests get a fault and which one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultPlan {
    /// The fault injected.
    pub mode: FaultMode,
    /// Chance that one eligible request is faulted (0..=1).
    pub probability: f64,
    /// Only blob reads (and redirect targets) are eligible (else every `/v2/`
    /// request is; the token endpoint never is).
    pub only_blobs: bool,
    /// Seed of the proxy's random choices, so a run can be repeated.
    pub seed: u64,
    /// Stop injecting after this many faults.
    pub max_faults: Option<u64>,
}

impl FaultPlan {
    /// `mode` on `probability` of blob reads, seed 1, no limit.
    pub fn blobs(mode: FaultMode, probability: f64) -> Self {
        FaultPlan {
            mode,
            probability,
            only_blobs: true,
            seed: 1,
            max_faults: None,
        }
    }
}

/// xorshift64*: reproducible choices without an RNG dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// The plan in force and its random state.
struct Injector {
    plan: Option<FaultPlan>,
    rng: Rng,
    injected: u64,
}

impl Injector {
    /// The fault for a request to `path`, if it gets one.
    fn decide(&mut self, method: &str, path: &str) -> Option<FaultMode> {
        let plan = self.plan?;
        // Redirect targets count as blob reads: a client that cached one
        // keeps meeting faults there.
        let eligible = (path.starts_with("/v2/") || path.starts_with("/redirected/"))
            && (!plan.only_blobs || (method == "GET" && path.contains("/blobs/sha256:")));
        if !eligible
            || plan.max_faults.is_some_and(|m| self.injected >= m)
            || self.rng.unit() >= plan.probability
        {
            return None;
        }
        self.injected += 1;
        Some(match plan.mode {
            FaultMode::Mixed => MIXED[self.rng.below(MIXED.len() as u64) as usize],
            m => m,
        })
    }
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Range header.
    pub range: Option<String>,
    /// Authorization header.
    pub authorization: Option<String>,
    /// The fault injected into it by the [`FaultPlan`], if any.
    pub fault: Option<FaultMode>,
    /// Every header, as received.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// The values of header `name` (any case), in order.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Token endpoint settings.
#[derive(Clone, Debug)]
pub struct TokenAuth {
    /// Basic credentials the token endpoint demands (None: anonymous tokens).
    pub user_password: Option<(String, String)>,
    /// An OAuth2 refresh token accepted on `POST /token` (grant_type=refresh_token).
    pub refresh_token: Option<String>,
}

struct State {
    upstream: SocketAddr,
    addr: SocketAddr,
    fault: Mutex<Fault>,
    seen: Mutex<Vec<Seen>>,
    bytes_sent: AtomicU64,
    active: AtomicUsize,
    token: Mutex<Option<TokenAuth>>,
    token_generation: AtomicU64,
    token_requests: AtomicU64,
    endless_tokens: std::sync::atomic::AtomicBool,
    redirect_generation: AtomicU64,
    fail_next: Mutex<Option<(u16, u32, Option<u64>)>>,
    injector: Mutex<Injector>,
    client: reqwest::Client,
}

/// A running proxy.
pub struct FaultProxy {
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free 127.0.0.1 port forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = Arc::new(State {
            upstream,
            addr: listener.local_addr().unwrap(),
            fault: Mutex::new(Fault::PassThrough),
            seen: Mutex::new(Vec::new()),
            bytes_sent: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            token: Mutex::new(None),
            token_generation: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            endless_tokens: std::sync::atomic::AtomicBool::new(false),
            redirect_generation: AtomicU64::new(0),
            fail_next: Mutex::new(None),
            injector: Mutex::new(Injector {
                plan: None,
                rng: Rng(1),
                injected: 0,
            }),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let s = s.clone();
                s.active.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = handle(&s, conn).await;
                    s.active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { state, task }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.state.addr.to_string()
    }

    /// Changes the misbehaviour.
    pub fn set_fault(&self, fault: Fault) {
        *self.state.fault.lock().unwrap() = fault;
    }

    /// Injects faults by `plan` from now on (`None`: stop). Resets the random
    /// state to the plan's seed and the fault count to zero.
    pub fn set_plan(&self, plan: Option<FaultPlan>) {
        let mut i = self.state.injector.lock().unwrap();
        i.rng = Rng(plan.map_or(1, |p| p.seed) | 1);
        i.injected = 0;
        i.plan = plan;
    }

    /// Faults injected under the current plan.
    pub fn faults_injected(&self) -> u64 {
        self.state.injector.lock().unwrap().injected
    }

    /// Requires bearer tokens from `/token` on every `/v2/` request.
    pub fn require_tokens(&self, auth: TokenAuth) {
        *self.state.token.lock().unwrap() = Some(auth);
    }

    /// Makes token answers endless: valid JSON, then whitespace without end
    /// (no Content-Length) until the client hangs up.
    pub fn endless_token_responses(&self) {
        self.state.endless_tokens.store(true, Ordering::SeqCst);
    }

    /// Invalidates all issued tokens (the next request gets a 401).
    pub fn revoke_tokens(&self) {
        self.state.token_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Makes earlier redirect targets answer 403, like an expired presigned URL.
    pub fn expire_redirects(&self) {
        self.state
            .redirect_generation
            .fetch_add(1, Ordering::SeqCst);
    }

    /// Answers the next `count` requests with `status` (and `Retry-After: secs`).
    pub fn fail_next(&self, status: u16, count: u32, retry_after: Option<u64>) {
        *self.state.fail_next.lock().unwrap() = Some((status, count, retry_after));
    }

    /// Tokens handed out so far.
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Requests seen so far (token requests included).
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Forgets the request log.
    pub fn clear_seen(&self) {
        self.state.seen.lock().unwrap().clear();
    }

    /// Body bytes written to clients so far.
    pub fn bytes_sent(&self) -> u64 {
        self.state.bytes_sent.load(Ordering::SeqCst)
    }

    /// Connections still being served.
    pub fn active_connections(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

async fn read_request(conn: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return Ok(None);
        }
        let n = conn.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[head_end + 4..].to_vec();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while body.len() < len {
        let n = conn.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Ok(Some(Request {
        method,
        path,
        headers,
        body,
    }))
}

async fn respond(
    conn: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body).await?;
    conn.shutdown().await
}

fn repository_of(path: &str) -> String {
    let p = path.trim_start_matches("/v2/");
    let end = ["/blobs/", "/manifests/"]
        .iter()
        .filter_map(|m| p.find(m))
        .min()
        .unwrap_or(p.len());
    p[..end].to_string()
}

fn challenge(s: &State, path: &str) -> String {
    format!(
        "Bearer realm=\"http://{}/token\",service=\"test-registry\",scope=\"repository:{}:pull\"",
        s.addr,
        repository_of(path)
    )
}

/// `Retry-After` as an HTTP-date `secs` seconds from now.
fn http_date_in(secs: u64) -> String {
    httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(secs))
}

/// Answers `fault` without contacting the registry, or returns `false`
/// when the request goes on to the registry.
async fn inject(
    s: &State,
    conn: &mut TcpStream,
    req: &Request,
    fault: FaultMode,
) -> std::io::Result<bool> {
    match fault {
        FaultMode::Reset => {
            // Zero linger turns the close into a RST.
            conn.set_zero_linger()?;
            Ok(true)
        }
        FaultMode::Status(status) => {
            let headers: Vec<(&str, String)> = match status {
                429 => vec![("Retry-After", "1".into())],
                503 => vec![("Retry-After", http_date_in(1))],
                _ => Vec::new(),
            };
            respond(conn, status, &headers, b"injected").await?;
            Ok(true)
        }
        FaultMode::Hang => {
            hold(conn).await;
            Ok(true)
        }
        FaultMode::Stall(d) => {
            tokio::time::sleep(d).await;
            Ok(false)
        }
        FaultMode::Unauthorized => {
            let c = challenge(s, &req.path);
            respond(conn, 401, &[("WWW-Authenticate", c)], b"{}").await?;
            Ok(true)
        }
        FaultMode::Redirect => {
            redirect(s, conn, &req.path).await?;
            Ok(true)
        }
        FaultMode::ShortBody | FaultMode::Corrupt | FaultMode::Mixed => Ok(false),
    }
}

/// Holds the connection open without answering until the client gives up.
async fn hold(conn: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    while conn.read(&mut sink).await.is_ok_and(|n| n > 0) {}
}

async fn redirect(s: &State, conn: &mut TcpStream, path: &str) -> std::io::Result<()> {
    // A redirect target redirected again points at the same blob.
    let path = path
        .strip_prefix("/redirected/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(path.to_string(), |(_, p)| format!("/{p}"));
    let location = format!(
        "/redirected/{}{}",
        s.redirect_generation.load(Ordering::SeqCst),
        path
    );
    respond(conn, 307, &[("Location", location)], b"").await
}

async fn handle(s: &State, mut conn: TcpStream) -> std::io::Result<()> {
    let Some(req) = read_request(&mut conn).await? else {
        return Ok(());
    };
    let planned = s.injector.lock().unwrap().decide(&req.method, &req.path);
    s.seen.lock().unwrap().push(Seen {
        method: req.method.clone(),
        path: req.path.clone(),
        range: req.header("range"),
        authorization: req.header("authorization"),
        fault: planned,
        headers: req.headers.clone(),
    });
    let injected = {
        let mut f = s.fail_next.lock().unwrap();
        match f.as_mut() {
            Some((status, count, retry_after)) if *count > 0 => {
                *count -= 1;
                Some((*status, *retry_after))
            }
            _ => None,
        }
    };
    if let Some((status, retry_after)) = injected {
        let headers: Vec<(&str, String)> = retry_after
            .map(|r| ("Retry-After", r.to_string()))
            .into_iter()
            .collect();
        return respond(&mut conn, status, &headers, b"injected").await;
    }
    let token = s.token.lock().unwrap().clone();
    let generation = s.token_generation.load(Ordering::SeqCst);
    if req.path.starts_with("/token") {
        let Some(auth) = token else {
            return respond(&mut conn, 404, &[], b"").await;
        };
        if req.method == "POST" {
            let form = String::from_utf8_lossy(&req.body).to_string();
            let has = |kv: &str| form.split('&').any(|p| p == kv);
            let ok = auth.refresh_token.as_ref().is_some_and(|t| {
                has("grant_type=refresh_token") && has(&format!("refresh_token={t}"))
            });
            if !ok {
                return respond(&mut conn, 401, &[], b"{\"error\":\"invalid_grant\"}").await;
            }
        } else if let Some((user, password)) = auth.user_password {
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            );
            if req.header("authorization").as_deref() != Some(want.as_str()) {
                return respond(&mut conn, 401, &[], b"{\"details\":\"bad credentials\"}").await;
            }
        }
        let n = s.token_requests.fetch_add(1, Ordering::SeqCst);
        let body = format!("{{\"access_token\":\"tok-{generation}-{n}\",\"expires_in\":300}}");
        if s.endless_tokens.load(Ordering::SeqCst) {
            let head =
                "HTTP/1.1 200 X\r\nConnection: close\r\nContent-Type: application/json\r\n\r\n";
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(body.as_bytes()).await?;
            let spaces = vec![b' '; 64 << 10];
            // At most 4 GiB, until the client hangs up.
            for _ in 0..(1 << 16) {
                if conn.write_all(&spaces).await.is_err() {
                    break;
                }
            }
            return Ok(());
        }
        return respond(
            &mut conn,
            200,
            &[("Content-Type", "application/json".into())],
            body.as_bytes(),
        )
        .await;
    }
    if token.is_some() && req.path.starts_with("/v2/") {
        let ok = req
            .header("authorization")
            .is_some_and(|a| a.starts_with(&format!("Bearer tok-{generation}-")));
        if !ok {
            let c = challenge(s, &req.path);
            return respond(&mut conn, 401, &[("WWW-Authenticate", c)], b"{}").await;
        }
    }
    if let Some(fault) = planned
        && inject(s, &mut conn, &req, fault).await?
    {
        return Ok(());
    }
    let fault = *s.fault.lock().unwrap();
    if fault == Fault::Stall {
        hold(&mut conn).await;
        return Ok(());
    }
    if fault == Fault::RejectMultiRange && req.header("range").is_some_and(|r| r.contains(',')) {
        return respond(&mut conn, 400, &[], b"multi-range not supported").await;
    }
    let mut upstream_path = req.path.clone();
    if let Some(rest) = req.path.strip_prefix("/redirected/") {
        let (generation, path) = rest.split_once('/').unwrap_or(("", rest));
        if generation != s.redirect_generation.load(Ordering::SeqCst).to_string() {
            return respond(&mut conn, 403, &[], b"<Error>expired</Error>").await;
        }
        upstream_path = format!("/{path}");
    } else if fault == Fault::Redirect && req.method == "GET" && req.path.contains("/blobs/sha256:")
    {
        return redirect(s, &mut conn, &req.path).await;
    }
    let drop_range = match (fault, req.header("range")) {
        (Fault::IgnoreRange, Some(_)) => true,
        (Fault::IgnoreMultiRange, Some(r)) => r.contains(','),
        _ => false,
    };
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap();
    let mut fwd = s
        .client
        .request(method, format!("http://{}{}", s.upstream, upstream_path));
    for (k, v) in &req.headers {
        let lower = k.to_ascii_lowercase();
        let skip = matches!(lower.as_str(), "host" | "connection" | "content-length")
            || (lower == "range" && drop_range)
            || (lower == "authorization" && token.is_some());
        if !skip {
            fwd = fwd.header(k, v);
        }
    }
    if !req.body.is_empty() {
        fwd = fwd.body(req.body);
    }
    let Ok(mut resp) = fwd.send().await else {
        return respond(&mut conn, 502, &[], b"").await;
    };
    let mut head = format!(
        "HTTP/1.1 {} X\r\nConnection: close\r\n",
        resp.status().as_u16()
    );
    for (k, v) in resp.headers() {
        if !matches!(
            k.as_str(),
            "connection" | "transfer-encoding" | "keep-alive"
        ) {
            head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap_or_default()));
        }
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).await?;
    // Where the body is cut (short body) or which byte is flipped (corrupt).
    let body_len = resp.content_length().unwrap_or(0);
    let (cut, flip) = match planned {
        Some(FaultMode::ShortBody) => (Some(body_len / 2), None),
        Some(FaultMode::Corrupt) if body_len > 0 => {
            let at = s.injector.lock().unwrap().rng.below(body_len);
            (None, Some(at))
        }
        _ => (None, None),
    };
    let mut offset = 0u64;
    while let Ok(Some(chunk)) = resp.chunk().await {
        let mut chunk = chunk.to_vec();
        if let Some(at) = flip.filter(|at| (offset..offset + chunk.len() as u64).contains(at)) {
            chunk[(at - offset) as usize] ^= 0x5a;
        }
        if let Some(cut) = cut {
            let keep = cut.saturating_sub(offset).min(chunk.len() as u64) as usize;
            chunk.truncate(keep);
        }
        offset += chunk.len() as u64;
        conn.write_all(&chunk).await?;
        s.bytes_sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        if cut.is_some_and(|c| offset >= c) {
            // Content-Length promised more: the client sees the body end early.
            return conn.shutdown().await;
        }
    }
    conn.shutdown().await
}
