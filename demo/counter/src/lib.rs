//! `counter`: the demo workload of Substrate.
//!
//! A tiny HTTP/1.1 server built from the standard library only, so that it links into a fully
//! static binary that runs in an image holding nothing else:
//!
//! ```text
//! RUSTFLAGS='-C target-feature=+crt-static' \
//!   cargo build --release -p counter --target x86_64-unknown-linux-gnu
//! ```
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | `200`, `"<n> requests served since boot at <RFC 3339 time>\n"`: `n` counts the `GET /` requests served since the process first booted, this one included. It lives in process memory only, so it continues across a checkpoint/restore and restarts from 1 after a cold boot. |
//! | `PUT /file` | stores the body in `$DATA_FILE` (default `/data/file`; the directory is created), atomically (temporary file + rename); `200` |
//! | `GET /file` | `200` with the stored bytes, `404` when nothing is stored |
//! | `GET /healthz` | `200 "ok\n"`, not counted |
//!
//! `HEAD` is accepted wherever `GET` is. HTTP/1.1 connections are kept alive unless the client
//! sends `Connection: close`; HTTP/1.0 ones are closed unless it sends `Connection: keep-alive`.
//! Request bodies may use `Content-Length` or chunked transfer coding; `Expect: 100-continue` is
//! answered. Malformed requests get a `400` (or `413`/`431`/`501`) and the connection is closed.
//!
//! Configuration comes from the environment: `PORT` (default 8080; `0` picks a free port, which
//! the server logs), `LISTEN_HOST` (default `0.0.0.0`; tests on a host use `127.0.0.1`) and
//! `DATA_FILE`. On start the server prints `counter: listening on <addr> ...` to stderr.

use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest request head (request line and headers) accepted, in bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest number of header fields accepted.
pub const MAX_HEADERS: usize = 100;
/// Largest request body accepted (`PUT /file`), in bytes.
pub const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// How long an idle keep-alive connection is kept open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Process configuration, read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address to listen on: `$LISTEN_HOST:$PORT`.
    pub addr: SocketAddr,
    /// Where `PUT /file` stores the body: `$DATA_FILE`.
    pub data_file: PathBuf,
}

impl Config {
    /// Reads `PORT`, `LISTEN_HOST` and `DATA_FILE` through `get` (pass
    /// `|k| std::env::var(k).ok()`).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let host: std::net::IpAddr = match get("LISTEN_HOST") {
            None => std::net::IpAddr::from([0, 0, 0, 0]),
            Some(h) => h
                .trim()
                .parse()
                .map_err(|e| format!("LISTEN_HOST={h:?} is not an IP address: {e}"))?,
        };
        let port = match get("PORT") {
            None => 8080,
            Some(p) => p
                .trim()
                .parse::<u16>()
                .map_err(|e| format!("PORT={p:?} is not a port number (0-65535): {e}"))?,
        };
        let data_file = match get("DATA_FILE") {
            None => PathBuf::from("/data/file"),
            Some(f) if f.is_empty() => return Err("DATA_FILE is set but empty".to_string()),
            Some(f) => PathBuf::from(f),
        };
        Ok(Config {
            addr: SocketAddr::new(host, port),
            data_file,
        })
    }
}

/// What the server keeps in memory.
#[derive(Debug)]
pub struct State {
    served: AtomicU64,
    boot: SystemTime,
    data_file: PathBuf,
}

impl State {
    /// A fresh state: nothing served yet, booted now.
    pub fn new(data_file: PathBuf) -> Self {
        Self::with_boot_time(data_file, SystemTime::now())
    }

    /// A fresh state with a given boot time (for tests).
    pub fn with_boot_time(data_file: PathBuf, boot: SystemTime) -> Self {
        State {
            served: AtomicU64::new(0),
            boot,
            data_file,
        }
    }

    /// Number of `GET /` requests served so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

/// An HTTP method the server knows about; anything else is `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Other(String),
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path of the request target, without the query string.
    pub path: String,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    pub body: Vec<u8>,
}

/// Why a request could not be read. Each maps to the status sent before closing.
#[derive(Debug)]
pub enum RequestError {
    /// The peer closed the connection or the idle timeout passed in the middle of a request.
    Io(io::Error),
    /// Syntax error in the request line, headers or chunked body: `400`.
    Malformed(String),
    /// Request head over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`]: `431`.
    HeadTooLarge,
    /// Body over [`MAX_BODY_BYTES`]: `413`.
    BodyTooLarge,
    /// A transfer coding other than `chunked`: `501`.
    UnsupportedTransferEncoding(String),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Io(e) => write!(f, "reading the request: {e}"),
            RequestError::Malformed(m) => write!(f, "malformed request: {m}"),
            RequestError::HeadTooLarge => write!(
                f,
                "request head larger than {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} fields"
            ),
            RequestError::BodyTooLarge => {
                write!(f, "request body larger than {MAX_BODY_BYTES} bytes")
            }
            RequestError::UnsupportedTransferEncoding(te) => {
                write!(f, "unsupported transfer-encoding {te:?} (only chunked)")
            }
        }
    }
}

impl std::error::Error for RequestError {}

impl RequestError {
    /// The response sent for this error (always with `Connection: close`), or `None` when the
    /// connection is already unusable.
    pub fn response(&self) -> Option<Response> {
        let (status, reason) = match self {
            RequestError::Io(_) => return None,
            RequestError::Malformed(_) => (400, "Bad Request"),
            RequestError::HeadTooLarge => (431, "Request Header Fields Too Large"),
            RequestError::BodyTooLarge => (413, "Content Too Large"),
            RequestError::UnsupportedTransferEncoding(_) => (501, "Not Implemented"),
        };
        Some(Response::text(status, reason, format!("{self}\n")))
    }
}

impl From<io::Error> for RequestError {
    fn from(e: io::Error) -> Self {
        RequestError::Io(e)
    }
}

/// A response ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: &'static str,
    pub content_type: &'static str,
    pub extra_headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Self {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra_headers: Vec::new(),
            body: body.into().into_bytes(),
        }
    }

    fn method_not_allowed(allow: &'static str) -> Self {
        let mut r = Response::text(405, "Method Not Allowed", format!("allowed: {allow}\n"));
        r.extra_headers.push(("Allow", allow.to_string()));
        r
    }

    /// Writes the response. `head_only` leaves the body out (answer to `HEAD`) but keeps its
    /// `Content-Length`.
    pub fn write_to(
        &self,
        w: &mut impl Write,
        keep_alive: bool,
        head_only: bool,
    ) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            if keep_alive { "keep-alive" } else { "close" }
        );
        for (name, value) in &self.extra_headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        w.write_all(head.as_bytes())?;
        if !head_only {
            w.write_all(&self.body)?;
        }
        w.flush()
    }
}

/// Reads one line of the request head (terminated by LF, CR before it removed), counting the
/// bytes against `budget`. `Ok(None)` at a clean end of stream before any byte.
fn read_line(r: &mut impl BufRead, budget: &mut usize) -> Result<Option<String>, RequestError> {
    let mut line = Vec::new();
    let limit = (*budget as u64).saturating_add(1);
    let n = r.by_ref().take(limit).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget {
        return Err(RequestError::HeadTooLarge);
    }
    *budget -= n;
    if line.last() != Some(&b'\n') {
        return Err(RequestError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed in the middle of the request head",
        )));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| RequestError::Malformed("request head is not UTF-8".to_string()))
}

/// Reads one request from `r`. `Ok(None)` when the peer closed the connection cleanly between
/// requests. `on_continue` is called when the client asked for `Expect: 100-continue`, before the
/// body is read.
pub fn read_request(
    r: &mut impl BufRead,
    mut on_continue: impl FnMut() -> io::Result<()>,
) -> Result<Option<Request>, RequestError> {
    let mut budget = MAX_HEAD_BYTES;
    // RFC 9112 §2.2: ignore empty lines before the request line.
    let request_line = loop {
        match read_line(r, &mut budget)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Malformed(format!(
            "request line {request_line:?} is not `METHOD TARGET HTTP/1.x`"
        )));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(RequestError::Malformed(format!("bad method {method:?}")));
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        v => {
            return Err(RequestError::Malformed(format!(
                "unsupported protocol version {v:?}"
            )));
        }
    };
    if !target.starts_with('/') {
        return Err(RequestError::Malformed(format!(
            "request target {target:?} is not an absolute path"
        )));
    }
    let path = target
        .split(['?', '#'])
        .next()
        .unwrap_or(target)
        .to_string();

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut connection_close = !http11;
    let mut expect_continue = false;
    let mut fields = 0;
    loop {
        let Some(line) = read_line(r, &mut budget)? else {
            return Err(RequestError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of the request head",
            )));
        };
        if line.is_empty() {
            break;
        }
        fields += 1;
        if fields > MAX_HEADERS {
            return Err(RequestError::HeadTooLarge);
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(RequestError::Malformed(format!(
                "header line {line:?} has no colon"
            )));
        };
        if name.is_empty() || name.ends_with([' ', '\t']) {
            return Err(RequestError::Malformed(format!("bad header name {name:?}")));
        }
        let value = value.trim_matches([' ', '\t']);
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                let n: u64 = value.parse().map_err(|_| {
                    RequestError::Malformed(format!("Content-Length {value:?} is not a number"))
                })?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(RequestError::Malformed(
                        "conflicting Content-Length headers".to_string(),
                    ));
                }
                content_length = Some(n);
            }
            "transfer-encoding" => {
                for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    if coding.eq_ignore_ascii_case("chunked") && !chunked {
                        chunked = true;
                    } else {
                        return Err(RequestError::UnsupportedTransferEncoding(value.to_string()));
                    }
                }
            }
            "connection" => {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        connection_close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        connection_close = false;
                    }
                }
            }
            "expect" if value.eq_ignore_ascii_case("100-continue") => expect_continue = true,
            _ => {}
        }
    }
    if chunked && content_length.is_some() {
        return Err(RequestError::Malformed(
            "both Content-Length and Transfer-Encoding given".to_string(),
        ));
    }
    let has_body = chunked || content_length.is_some_and(|n| n > 0);
    if content_length.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(RequestError::BodyTooLarge);
    }
    if has_body && expect_continue && http11 {
        on_continue()?;
    }
    let body = if chunked {
        read_chunked(r)?
    } else {
        let n = content_length.unwrap_or(0);
        let mut body = Vec::with_capacity(n.min(1 << 20) as usize);
        r.by_ref().take(n).read_to_end(&mut body)?;
        if (body.len() as u64) < n {
            return Err(RequestError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of the request body",
            )));
        }
        body
    };
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "PUT" => Method::Put,
        m => Method::Other(m.to_string()),
    };
    Ok(Some(Request {
        method,
        path,
        keep_alive: !connection_close,
        body,
    }))
}

/// Decodes a chunked body (RFC 9112 §7.1); trailers are read and ignored.
fn read_chunked(r: &mut impl BufRead) -> Result<Vec<u8>, RequestError> {
    let mut body = Vec::new();
    loop {
        let mut budget = MAX_HEAD_BYTES;
        let Some(line) = read_line(r, &mut budget)? else {
            return Err(RequestError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a chunked body",
            )));
        };
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_hex, 16)
            .map_err(|_| RequestError::Malformed(format!("bad chunk size line {line:?}")))?;
        if size == 0 {
            // Trailer section, up to the empty line.
            loop {
                match read_line(r, &mut budget)? {
                    Some(l) if l.is_empty() => return Ok(body),
                    Some(_) => continue,
                    None => {
                        return Err(RequestError::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed in the chunked trailer",
                        )));
                    }
                }
            }
        }
        if body.len() as u64 + size > MAX_BODY_BYTES {
            return Err(RequestError::BodyTooLarge);
        }
        let before = body.len();
        r.by_ref().take(size).read_to_end(&mut body)?;
        if (body.len() - before) as u64 != size {
            return Err(RequestError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a chunk",
            )));
        }
        let mut crlf_budget = 2;
        match read_line(r, &mut crlf_budget) {
            Ok(Some(l)) if l.is_empty() => {}
            Ok(_) | Err(RequestError::HeadTooLarge) => {
                return Err(RequestError::Malformed(
                    "chunk data not followed by CRLF".to_string(),
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Answers one request. Pure except for `PUT`/`GET /file`, which touch `state`'s data file.
pub fn handle(req: &Request, state: &State) -> Response {
    match req.path.as_str() {
        "/" => match req.method {
            Method::Get | Method::Head => {
                // HEAD does not count: it serves no counter value.
                let n = if req.method == Method::Get {
                    state.served.fetch_add(1, Ordering::SeqCst) + 1
                } else {
                    state.served()
                };
                Response::text(
                    200,
                    "OK",
                    format!(
                        "{n} requests served since boot at {}\n",
                        rfc3339(state.boot)
                    ),
                )
            }
            _ => Response::method_not_allowed("GET, HEAD"),
        },
        "/healthz" => match req.method {
            Method::Get | Method::Head => Response::text(200, "OK", "ok\n"),
            _ => Response::method_not_allowed("GET, HEAD"),
        },
        "/file" => match req.method {
            Method::Get | Method::Head => match fs::read(&state.data_file) {
                Ok(bytes) => Response {
                    status: 200,
                    reason: "OK",
                    content_type: "application/octet-stream",
                    extra_headers: Vec::new(),
                    body: bytes,
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => Response::text(
                    404,
                    "Not Found",
                    format!("no file stored at {}\n", state.data_file.display()),
                ),
                Err(e) => Response::text(
                    500,
                    "Internal Server Error",
                    format!("reading {}: {e}\n", state.data_file.display()),
                ),
            },
            Method::Put => match store_file(&state.data_file, &req.body) {
                Ok(()) => Response::text(
                    200,
                    "OK",
                    format!(
                        "stored {} bytes in {}\n",
                        req.body.len(),
                        state.data_file.display()
                    ),
                ),
                Err(e) => Response::text(
                    500,
                    "Internal Server Error",
                    format!("storing {}: {e}\n", state.data_file.display()),
                ),
            },
            Method::Other(_) => Response::method_not_allowed("GET, HEAD, PUT"),
        },
        other => Response::text(404, "Not Found", format!("no route for {other}\n")),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename.
fn store_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "DATA_FILE has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Formats a time as RFC 3339 in UTC with second precision, e.g. `2024-07-29T12:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Serves one connection until the client closes it, asks to, or sends something invalid.
pub fn serve_connection(stream: TcpStream, state: &State) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let req = {
            let w = &mut writer;
            read_request(&mut reader, || {
                w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
                w.flush()
            })
        };
        match req {
            Ok(None) => return Ok(()),
            Ok(Some(req)) => {
                let resp = handle(&req, state);
                resp.write_to(&mut writer, req.keep_alive, req.method == Method::Head)?;
                if !req.keep_alive {
                    return Ok(());
                }
            }
            Err(e) => {
                if let Some(resp) = e.response() {
                    // Best effort: the connection is closed right after.
                    let _ = resp.write_to(&mut writer, false, false);
                }
                return match e {
                    RequestError::Io(e) => Err(e),
                    _ => Ok(()),
                };
            }
        }
    }
}

/// Accepts connections forever, one thread each.
pub fn serve(listener: TcpListener, state: Arc<State>) -> io::Result<()> {
    loop {
        let (stream, _) = match listener.accept() {
            Ok(c) => c,
            // Transient accept failures (e.g. out of descriptors, aborted connections).
            Err(e) => {
                eprintln!("counter: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let state = Arc::clone(&state);
        std::thread::Builder::new()
            .name("conn".to_string())
            .spawn(move || {
                let _ = serve_connection(stream, &state);
            })?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn parse(raw: &str) -> Result<Option<Request>, RequestError> {
        read_request(&mut Cursor::new(raw.as_bytes().to_vec()), || Ok(()))
    }

    fn req(method: Method, path: &str, body: &[u8]) -> Request {
        Request {
            method,
            path: path.to_string(),
            keep_alive: true,
            body: body.to_vec(),
        }
    }

    fn state(dir: &Path) -> State {
        State::with_boot_time(
            dir.join("sub/dir/file"),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
    }

    fn tempdir() -> PathBuf {
        use std::sync::atomic::AtomicUsize;
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "counter-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn counts_get_root_and_not_health_or_head() {
        let dir = tempdir();
        let st = state(&dir);
        let r1 = handle(&req(Method::Get, "/", b""), &st);
        assert_eq!(r1.status, 200);
        assert_eq!(
            String::from_utf8(r1.body).unwrap(),
            "1 requests served since boot at 2023-11-14T22:13:20Z\n"
        );
        assert_eq!(
            handle(&req(Method::Get, "/healthz", b""), &st).body,
            b"ok\n"
        );
        let head = handle(&req(Method::Head, "/", b""), &st);
        assert!(String::from_utf8(head.body).unwrap().starts_with("1 "));
        let r2 = handle(&req(Method::Get, "/", b""), &st);
        assert!(
            String::from_utf8(r2.body)
                .unwrap()
                .starts_with("2 requests")
        );
        assert_eq!(st.served(), 2);
    }

    #[test]
    fn file_roundtrip_and_404() {
        let dir = tempdir();
        let st = state(&dir);
        let missing = handle(&req(Method::Get, "/file", b""), &st);
        assert_eq!(missing.status, 404);
        let put = handle(&req(Method::Put, "/file", b"hello\x00world"), &st);
        assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
        let got = handle(&req(Method::Get, "/file", b""), &st);
        assert_eq!(got.status, 200);
        assert_eq!(got.body, b"hello\x00world");
        assert_eq!(
            fs::read(dir.join("sub/dir/file")).unwrap(),
            b"hello\x00world"
        );
        // Overwrite.
        handle(&req(Method::Put, "/file", b"v2"), &st);
        assert_eq!(handle(&req(Method::Get, "/file", b""), &st).body, b"v2");
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.join("sub/dir")).unwrap().count(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_routes_and_methods() {
        let dir = tempdir();
        let st = state(&dir);
        assert_eq!(handle(&req(Method::Get, "/nope", b""), &st).status, 404);
        let r = handle(&req(Method::Put, "/", b""), &st);
        assert_eq!(r.status, 405);
        assert_eq!(r.extra_headers, vec![("Allow", "GET, HEAD".to_string())]);
        assert_eq!(
            handle(&req(Method::Other("DELETE".into()), "/file", b""), &st).status,
            405
        );
        assert_eq!(st.served(), 0);
    }

    #[test]
    fn parses_keep_alive_defaults() {
        let r = parse("GET /?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/");
        assert!(r.keep_alive);
        let r = parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive);
        let r = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!r.keep_alive);
        let r = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.keep_alive);
        // Bare LF line endings are tolerated.
        let r = parse("GET /healthz HTTP/1.1\nHost: a\n\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.path, "/healthz");
    }

    #[test]
    fn parses_bodies() {
        let r = parse("PUT /file HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloEXTRA")
            .unwrap()
            .unwrap();
        assert_eq!(r.body, b"hello");
        let r = parse(
            "PUT /file HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, b"hello world");
    }

    #[test]
    fn pipelined_requests_are_read_one_by_one() {
        let mut c = Cursor::new(
            b"GET / HTTP/1.1\r\n\r\nPUT /file HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /healthz HTTP/1.1\r\n\r\n"
                .to_vec(),
        );
        let a = read_request(&mut c, || Ok(())).unwrap().unwrap();
        let b = read_request(&mut c, || Ok(())).unwrap().unwrap();
        let d = read_request(&mut c, || Ok(())).unwrap().unwrap();
        assert_eq!(
            (a.path.as_str(), b.body.as_slice(), d.path.as_str()),
            ("/", &b"hi"[..], "/healthz")
        );
        assert!(read_request(&mut c, || Ok(())).unwrap().is_none());
    }

    #[test]
    fn expect_continue_is_answered_before_the_body() {
        let mut called = 0;
        let raw = b"PUT /file HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx";
        let r = read_request(&mut Cursor::new(raw.to_vec()), || {
            called += 1;
            Ok(())
        })
        .unwrap()
        .unwrap();
        assert_eq!((called, r.body.as_slice()), (1, &b"x"[..]));
    }

    #[test]
    fn rejects_bad_requests_with_precise_status() {
        let status = |raw: &str| parse(raw).unwrap_err().response().map(|r| r.status);
        assert_eq!(status("GARBAGE\r\n\r\n"), Some(400));
        assert_eq!(status("GET / HTTP/2.0\r\n\r\n"), Some(400));
        assert_eq!(status("GET nope HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(status("GET / HTTP/1.1\r\nNoColon\r\n\r\n"), Some(400));
        assert_eq!(
            status("PUT /file HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status("PUT /file HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status("PUT /file HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status("PUT /file HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Some(501)
        );
        assert_eq!(
            status(&format!(
                "PUT /file HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                MAX_BODY_BYTES + 1
            )),
            Some(413)
        );
        let huge = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(status(&huge), Some(431));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Some(431));
        assert_eq!(
            status("PUT /file HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Some(400)
        );
        // Truncated input is an I/O condition, not answered.
        assert_eq!(
            status("PUT /file HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc"),
            None
        );
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\n"), None);
    }

    #[test]
    fn clean_eof_between_requests() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("\r\n").unwrap().is_none());
    }

    #[test]
    fn writes_responses() {
        let r = Response::text(200, "OK", "hi\n");
        let mut out = Vec::new();
        r.write_to(&mut out, true, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nhi\n"
        );
        let mut out = Vec::new();
        r.write_to(&mut out, false, true).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("Content-Length: 3\r\nConnection: close\r\n\r\n"));
        assert!(s.ends_with("\r\n\r\n"));
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn config_from_env() {
        let c = Config::from_env(|_| None).unwrap();
        assert_eq!(c.addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.data_file, PathBuf::from("/data/file"));
        let c = Config::from_env(|k| match k {
            "PORT" => Some("9001".into()),
            "DATA_FILE" => Some("/tmp/x".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            (c.addr.port(), c.data_file),
            (9001, PathBuf::from("/tmp/x"))
        );
        let e = Config::from_env(|k| (k == "PORT").then(|| "80000".to_string())).unwrap_err();
        assert!(e.contains("PORT=\"80000\""), "{e}");
        let c =
            Config::from_env(|k| (k == "LISTEN_HOST").then(|| "127.0.0.1".to_string())).unwrap();
        assert_eq!(c.addr, "127.0.0.1:8080".parse().unwrap());
        let e = Config::from_env(|k| (k == "LISTEN_HOST").then(|| "localhost".to_string()))
            .unwrap_err();
        assert!(e.contains("LISTEN_HOST=\"localhost\""), "{e}");
    }
}
