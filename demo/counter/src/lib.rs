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
//! | `GET /bytes/<n>` | `200`, `application/octet-stream`, `Content-Length: n` and `n` bytes of the [pattern](pattern_byte): byte `i` is `i % 251`. Generated in 64 KiB pieces while written, never held whole; `n` is decimal, at most [`MAX_GENERATED_BYTES`] (else `400`). Not counted. |
//! | `POST /sink`, `PUT /sink` | reads the body as it arrives and discards it, whatever its size ([`MAX_BODY_BYTES`] does not apply; only a 64 KiB buffer is held); `200`, `"<bytes> <checksum>\n"`: the number of body bytes and their [FNV-1a 64](Fnv1a64) hash as 16 lowercase hex digits (the empty body gives `"0 cbf29ce484222325\n"`; the body of `GET /bytes/1048576` gives `"1048576 4c568eccaeaf6c44\n"`) |
//! | `GET /echo` with `Connection: Upgrade` and `Upgrade: <protocol>` | `101 Switching Protocols` with `Connection: Upgrade`, `Upgrade: <protocol>` (`websocket` when offered, else the first one offered) and, when the request has a `Sec-WebSocket-Key`, its `Sec-WebSocket-Accept` (RFC 6455 §4.2.2). From then on every byte received is sent back verbatim (no WebSocket framing is done, so frames come back as they were sent) until the client closes its side; the server then closes. An upgraded connection is closed after [`UPGRADE_IDLE_TIMEOUT`] without a byte received. Without the two headers (or in HTTP/1.0): `426` with an explanation. |
//!
//! `HEAD` is accepted wherever `GET` is (`HEAD /echo` gets the `426`). HTTP/1.1 connections are
//! kept alive unless the client sends `Connection: close`; HTTP/1.0 ones are closed unless it
//! sends `Connection: keep-alive`. Request bodies may use `Content-Length` or chunked transfer
//! coding; `Expect: 100-continue` is answered. Malformed requests get a `400` (or
//! `413`/`431`/`501`) and the connection is closed. Connections idle for [`IDLE_TIMEOUT`] (no byte
//! received while a request is awaited or read, or no byte accepted by the client while a
//! response is written) are closed.
//!
//! Configuration comes from the environment: `PORT` (default 8080; `0` picks a free port, which
//! the server logs), `LISTEN_HOST` (default `0.0.0.0`; tests on a host use `127.0.0.1`) and
//! `DATA_FILE`. On start the server prints `counter: listening on <addr> ...` to stderr.

use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest request head (request line and headers) accepted, in bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest number of header fields accepted.
pub const MAX_HEADERS: usize = 100;
/// Largest request body accepted (`PUT /file` and every other route but `/sink`), in bytes.
pub const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// How long an idle keep-alive connection is kept open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an upgraded (`/echo`) connection is kept open without receiving a byte.
pub const UPGRADE_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest `n` of `GET /bytes/<n>`: 1 TiB.
pub const MAX_GENERATED_BYTES: u64 = 1 << 40;
/// Size of the pieces `/bytes` writes and `/sink` and `/echo` read.
const IO_CHUNK: usize = 64 * 1024;
/// The period of the `/bytes` pattern.
const PATTERN_PERIOD: usize = 251;

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
    Post,
    Other(String),
}

/// How the body of a request is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: n`, or no body at all (`0`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head: everything but the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// The path of the request target, without the query string.
    pub path: String,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// Whether the request is HTTP/1.1 (else HTTP/1.0).
    pub http11: bool,
    pub framing: Framing,
    /// Whether the client sent `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The protocol the client asks to switch to: set when the request is HTTP/1.1, `Connection`
    /// lists `upgrade` and `Upgrade` offers a valid protocol (`websocket` when offered, else the
    /// first one).
    pub upgrade: Option<String>,
    /// The `Sec-WebSocket-Key` header, trimmed.
    pub websocket_key: Option<String>,
}

impl RequestHead {
    /// Whether a body follows the head.
    pub fn has_body(&self) -> bool {
        self.framing != Framing::Length(0)
    }

    /// Whether `100 Continue` is to be sent before the body is read.
    pub fn wants_continue(&self) -> bool {
        self.has_body() && self.expect_continue && self.http11
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path of the request target, without the query string.
    pub path: String,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// See [`RequestHead::upgrade`].
    pub upgrade: Option<String>,
    /// See [`RequestHead::websocket_key`].
    pub websocket_key: Option<String>,
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
    /// When set, the body is instead that many bytes of the `/bytes` [pattern](pattern_byte),
    /// generated while it is written (and `body` is empty).
    pub pattern_len: Option<u64>,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Self {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra_headers: Vec::new(),
            body: body.into().into_bytes(),
            pattern_len: None,
        }
    }

    fn method_not_allowed(allow: &'static str) -> Self {
        let mut r = Response::text(405, "Method Not Allowed", format!("allowed: {allow}\n"));
        r.extra_headers.push(("Allow", allow.to_string()));
        r
    }

    /// The value of `Content-Length`.
    pub fn content_length(&self) -> u64 {
        self.pattern_len.unwrap_or(self.body.len() as u64)
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
            self.content_length(),
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
            match self.pattern_len {
                Some(n) => write_pattern(w, 0, n)?,
                None => w.write_all(&self.body)?,
            }
        }
        w.flush()
    }
}

/// Byte `i` of the body of `GET /bytes/<n>`: `i % 251` (251 is prime, so the pattern does not
/// line up with power-of-two buffer sizes and a lost, repeated or reordered piece changes the
/// checksum).
pub fn pattern_byte(i: u64) -> u8 {
    (i % PATTERN_PERIOD as u64) as u8
}

/// `IO_CHUNK` bytes of the pattern from any offset: `&block[i % 251..][..IO_CHUNK]`.
fn pattern_block() -> &'static [u8] {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK.get_or_init(|| {
        (0..(IO_CHUNK + PATTERN_PERIOD) as u64)
            .map(pattern_byte)
            .collect()
    })
}

/// Writes bytes `offset..offset + n` of the `/bytes` pattern to `w` in pieces of at most 64 KiB.
pub fn write_pattern(w: &mut impl Write, offset: u64, n: u64) -> io::Result<()> {
    let block = pattern_block();
    let end = offset.saturating_add(n);
    let mut pos = offset;
    while pos < end {
        let start = (pos % PATTERN_PERIOD as u64) as usize;
        let len = (end - pos).min(IO_CHUNK as u64) as usize;
        w.write_all(&block[start..start + len])?;
        pos += len as u64;
    }
    Ok(())
}

/// The checksum of `/sink`: the 64-bit FNV-1a hash (offset basis `0xcbf29ce484222325`, prime
/// `0x100000001b3`: for each byte, `h = (h ^ byte) * prime mod 2^64`), with a byte count.
/// Usable as an [`io::Write`] sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv1a64 {
    hash: u64,
    bytes: u64,
}

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv1a64 {
    pub const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    pub const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// The hash of nothing.
    pub fn new() -> Self {
        Fnv1a64 {
            hash: Self::OFFSET_BASIS,
            bytes: 0,
        }
    }

    /// Hashes `data` after what came before.
    pub fn update(&mut self, data: &[u8]) {
        let mut h = self.hash;
        for &b in data {
            h = (h ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
        self.hash = h;
        self.bytes += data.len() as u64;
    }

    /// The hash so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// How many bytes were hashed.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The answer of `/sink`: `"<bytes> <hash as 16 lowercase hex digits>\n"`.
    pub fn summary(&self) -> String {
        format!("{} {:016x}\n", self.bytes, self.hash)
    }
}

impl Write for Fnv1a64 {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// SHA-1 (FIPS 180-4), for `Sec-WebSocket-Accept` only.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&(data.len() as u64).wrapping_mul(8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hi = hi.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (o, hi) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&hi.to_be_bytes());
    }
    out
}

/// Base64 with padding (RFC 4648 §4).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let n = u32::from(group[0]) << 16
            | u32::from(*group.get(1).unwrap_or(&0)) << 8
            | u32::from(*group.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn websocket_accept(key: &str) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    base64(&sha1(format!("{}{GUID}", key.trim()).as_bytes()))
}

/// Whether `s` is a valid `Upgrade` protocol: `token ["/" token]` (RFC 9110 §7.8).
fn is_protocol(s: &str) -> bool {
    let is_token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    match s.split_once('/') {
        Some((name, version)) => is_token(name) && is_token(version),
        None => is_token(s),
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

/// Reads the head of one request from `r`, leaving `r` at the start of the body. `Ok(None)` when
/// the peer closed the connection cleanly between requests.
pub fn read_head(r: &mut impl BufRead) -> Result<Option<RequestHead>, RequestError> {
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
    let mut connection_upgrade = false;
    let mut upgrade: Option<String> = None;
    let mut websocket_key: Option<String> = None;
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
                    } else if token.eq_ignore_ascii_case("upgrade") {
                        connection_upgrade = true;
                    }
                }
            }
            "upgrade" => {
                let offered = value.split(',').map(str::trim).filter(|p| is_protocol(p));
                for protocol in offered {
                    if protocol.eq_ignore_ascii_case("websocket") {
                        upgrade = Some(protocol.to_string());
                        break;
                    }
                    upgrade.get_or_insert_with(|| protocol.to_string());
                }
            }
            "sec-websocket-key" => websocket_key = Some(value.to_string()),
            "expect" if value.eq_ignore_ascii_case("100-continue") => expect_continue = true,
            _ => {}
        }
    }
    if chunked && content_length.is_some() {
        return Err(RequestError::Malformed(
            "both Content-Length and Transfer-Encoding given".to_string(),
        ));
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "PUT" => Method::Put,
        "POST" => Method::Post,
        m => Method::Other(m.to_string()),
    };
    Ok(Some(RequestHead {
        method,
        path,
        keep_alive: !connection_close,
        http11,
        framing: if chunked {
            Framing::Chunked
        } else {
            Framing::Length(content_length.unwrap_or(0))
        },
        expect_continue,
        // RFC 9110 §7.8: `Upgrade` is ignored in HTTP/1.0 and needs `Connection: upgrade`.
        upgrade: upgrade.filter(|_| http11 && connection_upgrade),
        websocket_key,
    }))
}

/// Reads one request from `r`, its body included (at most [`MAX_BODY_BYTES`]). `Ok(None)` when
/// the peer closed the connection cleanly between requests. `on_continue` is called when the
/// client asked for `Expect: 100-continue`, before the body is read.
pub fn read_request(
    r: &mut impl BufRead,
    on_continue: impl FnMut() -> io::Result<()>,
) -> Result<Option<Request>, RequestError> {
    match read_head(r)? {
        None => Ok(None),
        Some(head) => read_body(head, r, on_continue).map(Some),
    }
}

/// Reads the body (at most [`MAX_BODY_BYTES`]) of the request whose head is `head`.
fn read_body(
    head: RequestHead,
    r: &mut impl BufRead,
    mut on_continue: impl FnMut() -> io::Result<()>,
) -> Result<Request, RequestError> {
    let mut body = Vec::new();
    if let Framing::Length(n) = head.framing {
        if n > MAX_BODY_BYTES {
            return Err(RequestError::BodyTooLarge);
        }
        body.reserve_exact(n.min(1 << 20) as usize);
    }
    if head.wants_continue() {
        on_continue()?;
    }
    let mut reader = BodyReader::new(r, head.framing, Some(MAX_BODY_BYTES));
    loop {
        let len = body.len();
        let grow = match head.framing {
            Framing::Length(n) => (n - len as u64).min(IO_CHUNK as u64) as usize,
            Framing::Chunked => IO_CHUNK,
        };
        body.resize(len + grow, 0);
        let n = reader.read_some(&mut body[len..]);
        body.truncate(len + *n.as_ref().unwrap_or(&0));
        if n? == 0 {
            break;
        }
    }
    Ok(Request {
        method: head.method,
        path: head.path,
        keep_alive: head.keep_alive,
        upgrade: head.upgrade,
        websocket_key: head.websocket_key,
        body,
    })
}

/// Reads a request body as a stream, decoding the chunked transfer coding (RFC 9112 §7.1; chunk
/// extensions and trailers are read and ignored). Holds no buffer of its own.
pub struct BodyReader<'a, R> {
    r: &'a mut R,
    state: BodyState,
    /// Body bytes returned so far.
    done: u64,
    /// Largest body accepted (checked at each chunk size), or no limit.
    limit: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
enum BodyState {
    /// This many bytes left of a `Content-Length` body.
    Length(u64),
    /// This many bytes left of the current chunk; `first` before the first chunk-size line.
    Chunk {
        left: u64,
        first: bool,
    },
    Done,
}

impl<'a, R: BufRead> BodyReader<'a, R> {
    /// A reader of a body framed as `framing` starting at `r`'s position. `limit` applies to
    /// chunked bodies: a `Content-Length` is to be checked before.
    pub fn new(r: &'a mut R, framing: Framing, limit: Option<u64>) -> Self {
        let state = match framing {
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunk {
                left: 0,
                first: true,
            },
        };
        BodyReader {
            r,
            state,
            done: 0,
            limit,
        }
    }

    /// Reads the next body bytes into `buf` (not empty), returning how many; `0` at the end of
    /// the body, after which `r` is at the start of the next request.
    pub fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, RequestError> {
        loop {
            match self.state {
                BodyState::Done | BodyState::Length(0) => {
                    self.state = BodyState::Done;
                    return Ok(0);
                }
                BodyState::Length(left) => {
                    let n = self.read_data(buf, left)?;
                    self.state = BodyState::Length(left - n as u64);
                    return Ok(n);
                }
                BodyState::Chunk { left: 0, first } => {
                    if !first {
                        self.read_chunk_crlf()?;
                    }
                    self.state = match self.read_chunk_size()? {
                        0 => {
                            self.read_trailers()?;
                            BodyState::Done
                        }
                        size => BodyState::Chunk {
                            left: size,
                            first: false,
                        },
                    };
                }
                BodyState::Chunk { left, first } => {
                    let n = self.read_data(buf, left)?;
                    self.state = BodyState::Chunk {
                        left: left - n as u64,
                        first,
                    };
                    return Ok(n);
                }
            }
        }
    }

    /// Reads at most `left` (> 0) body bytes into `buf`.
    fn read_data(&mut self, buf: &mut [u8], left: u64) -> Result<usize, RequestError> {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        loop {
            match self.r.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(RequestError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of the request body",
                    )));
                }
                Ok(n) => {
                    self.done += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn read_chunk_size(&mut self) -> Result<u64, RequestError> {
        let mut budget = MAX_HEAD_BYTES;
        let Some(line) = read_line(self.r, &mut budget)? else {
            return Err(RequestError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a chunked body",
            )));
        };
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_hex, 16)
            .map_err(|_| RequestError::Malformed(format!("bad chunk size line {line:?}")))?;
        if self
            .limit
            .is_some_and(|limit| self.done.saturating_add(size) > limit)
        {
            return Err(RequestError::BodyTooLarge);
        }
        Ok(size)
    }

    fn read_chunk_crlf(&mut self) -> Result<(), RequestError> {
        let mut crlf_budget = 2;
        match read_line(self.r, &mut crlf_budget) {
            Ok(Some(l)) if l.is_empty() => Ok(()),
            Ok(None) => Err(RequestError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a chunk",
            ))),
            Ok(Some(_)) | Err(RequestError::HeadTooLarge) => Err(RequestError::Malformed(
                "chunk data not followed by CRLF".to_string(),
            )),
            Err(e) => Err(e),
        }
    }

    /// Trailer section, up to the empty line.
    fn read_trailers(&mut self) -> Result<(), RequestError> {
        let mut budget = MAX_HEAD_BYTES;
        loop {
            match read_line(self.r, &mut budget)? {
                Some(l) if l.is_empty() => return Ok(()),
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
}

/// `POST`/`PUT /sink`: reads the body of `head` from `r` and discards it, counting and hashing
/// it with a 64 KiB buffer whatever its size.
pub fn sink(
    head: &RequestHead,
    r: &mut impl BufRead,
    mut on_continue: impl FnMut() -> io::Result<()>,
) -> Result<Response, RequestError> {
    if head.wants_continue() {
        on_continue()?;
    }
    let mut body = BodyReader::new(r, head.framing, None);
    let mut sum = Fnv1a64::new();
    let mut buf = vec![0u8; IO_CHUNK];
    loop {
        match body.read_some(&mut buf)? {
            0 => break,
            n => sum.update(&buf[..n]),
        }
    }
    Ok(Response::text(200, "OK", sum.summary()))
}

/// The `n` of `/bytes/<n>`.
fn parse_bytes_len(s: &str) -> Result<u64, String> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a decimal number of bytes\n"));
    }
    match s.parse::<u64>() {
        Ok(n) if n <= MAX_GENERATED_BYTES => Ok(n),
        _ => Err(format!("{s} is more than {MAX_GENERATED_BYTES} bytes\n")),
    }
}

/// Answers one request. Pure except for `PUT`/`GET /file`, which touch `state`'s data file.
///
/// `serve_connection` answers `POST`/`PUT /sink` (with [`sink`], streaming) and upgrades to
/// `/echo` itself; here `/sink` answers from the body in memory and `/echo` is always the `426`.
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
                    pattern_len: None,
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
            Method::Post | Method::Other(_) => Response::method_not_allowed("GET, HEAD, PUT"),
        },
        "/sink" => match req.method {
            Method::Post | Method::Put => {
                let mut sum = Fnv1a64::new();
                sum.update(&req.body);
                Response::text(200, "OK", sum.summary())
            }
            _ => Response::method_not_allowed("POST, PUT"),
        },
        "/echo" => match req.method {
            Method::Get | Method::Head => {
                let mut r = Response::text(
                    426,
                    "Upgrade Required",
                    "GET /echo needs the headers `Connection: Upgrade` and `Upgrade: <protocol>` \
                     (e.g. `Upgrade: websocket`) in HTTP/1.1: the connection is then switched to \
                     that protocol and every byte sent on it is echoed back\n",
                );
                r.extra_headers.push(("Upgrade", "websocket".to_string()));
                r
            }
            _ => Response::method_not_allowed("GET, HEAD"),
        },
        other => match other.strip_prefix("/bytes/") {
            Some(n) => match req.method {
                Method::Get | Method::Head => match parse_bytes_len(n) {
                    Ok(n) => Response {
                        status: 200,
                        reason: "OK",
                        content_type: "application/octet-stream",
                        extra_headers: Vec::new(),
                        body: Vec::new(),
                        pattern_len: Some(n),
                    },
                    Err(e) => Response::text(400, "Bad Request", e),
                },
                _ => Response::method_not_allowed("GET, HEAD"),
            },
            None => Response::text(404, "Not Found", format!("no route for {other}\n")),
        },
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

/// Sends back every byte read from `r` until it ends: the `/echo` of an upgraded connection.
pub fn echo(r: &mut impl BufRead, w: &mut impl Write) -> io::Result<()> {
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return w.flush();
        }
        w.write_all(buf)?;
        let n = buf.len();
        r.consume(n);
    }
}

/// What to do after reading a request.
enum Exchange {
    /// The client closed the connection cleanly between requests.
    Closed,
    /// Send the response; keep the connection when `keep_alive`.
    Respond {
        resp: Response,
        keep_alive: bool,
        head_only: bool,
    },
    /// Switch to the protocol the request asks for.
    Upgrade(Request),
}

/// Reads one request from `reader` and answers it, except for the writing.
fn exchange(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    state: &State,
) -> Result<Exchange, RequestError> {
    let Some(head) = read_head(reader)? else {
        return Ok(Exchange::Closed);
    };
    let on_continue = || {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        writer.flush()
    };
    if head.path == "/sink" && matches!(head.method, Method::Post | Method::Put) {
        return Ok(Exchange::Respond {
            resp: sink(&head, reader, on_continue)?,
            keep_alive: head.keep_alive,
            head_only: false,
        });
    }
    let req = read_body(head, reader, on_continue)?;
    if req.path == "/echo" && req.method == Method::Get && req.upgrade.is_some() {
        return Ok(Exchange::Upgrade(req));
    }
    Ok(Exchange::Respond {
        resp: handle(&req, state),
        keep_alive: req.keep_alive,
        head_only: req.method == Method::Head,
    })
}

/// Serves one connection until the client closes it, asks to, or sends something invalid.
pub fn serve_connection(stream: TcpStream, state: &State) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(IO_CHUNK, stream);
    loop {
        match exchange(&mut reader, &mut writer, state) {
            Ok(Exchange::Closed) => return Ok(()),
            Ok(Exchange::Upgrade(req)) => return serve_upgraded(reader, writer, &req),
            Ok(Exchange::Respond {
                resp,
                keep_alive,
                head_only,
            }) => {
                resp.write_to(&mut writer, keep_alive, head_only)?;
                if !keep_alive {
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

/// Switches the connection to the protocol `req` asks for and echoes bytes until the client
/// closes its side (or [`UPGRADE_IDLE_TIMEOUT`] passes without a byte), then closes.
fn serve_upgraded(
    mut reader: BufReader<TcpStream>,
    mut writer: TcpStream,
    req: &Request,
) -> io::Result<()> {
    let protocol = req.upgrade.as_deref().unwrap_or_default();
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n"
    );
    if let Some(key) = &req.websocket_key {
        head.push_str(&format!(
            "Sec-WebSocket-Accept: {}\r\n",
            websocket_accept(key)
        ));
    }
    head.push_str("\r\n");
    writer.write_all(head.as_bytes())?;
    writer.flush()?;
    writer.set_read_timeout(Some(UPGRADE_IDLE_TIMEOUT))?;
    writer.set_write_timeout(Some(UPGRADE_IDLE_TIMEOUT))?;
    echo(&mut reader, &mut writer)?;
    // The client may be gone already.
    let _ = writer.shutdown(Shutdown::Both);
    Ok(())
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
        // Out of threads (memory, limits) under a burst of connections: drop this one and
        // keep serving the others rather than exit.
        if let Err(e) = std::thread::Builder::new()
            .name("conn".to_string())
            .stack_size(CONN_STACK)
            .spawn(move || {
                let _ = serve_connection(stream, &state);
            })
        {
            eprintln!("counter: no thread for a new connection: {e}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Stack of a connection thread: the handlers keep their buffers on the heap, and a small
/// stack lets a sandbox hold thousands of connections.
const CONN_STACK: usize = 256 * 1024;

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
            upgrade: None,
            websocket_key: None,
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

    // --- Streaming endpoints, over a real socket. ---

    /// Starts a server on 127.0.0.1:0 in the background; returns its address and state.
    fn start_server() -> (SocketAddr, Arc<State>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let st = Arc::new(state(&tempdir()));
        let server_state = Arc::clone(&st);
        std::thread::spawn(move || serve(listener, server_state));
        (addr, st)
    }

    fn connect(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        (s, r)
    }

    /// A response head: status code, lowercased header names with their values.
    struct Head {
        status: u16,
        headers: Vec<(String, String)>,
    }

    impl Head {
        fn get(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }

        fn content_length(&self) -> u64 {
            self.get("content-length").unwrap().parse().unwrap()
        }
    }

    fn read_head_of_response(r: &mut impl BufRead) -> Head {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let status = line
            .strip_prefix("HTTP/1.1 ")
            .unwrap_or_else(|| panic!("bad status line {line:?}"))[..3]
            .parse()
            .unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                return Head { status, headers };
            }
            let (n, v) = line.split_once(':').unwrap();
            headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
        }
    }

    /// Reads a whole (small) response: head and body as text.
    fn read_response(r: &mut impl BufRead) -> (Head, String) {
        let head = read_head_of_response(r);
        let mut body = vec![0; head.content_length() as usize];
        r.read_exact(&mut body).unwrap();
        (head, String::from_utf8(body).unwrap())
    }

    fn fnv(data: &[u8]) -> Fnv1a64 {
        let mut f = Fnv1a64::new();
        f.update(data);
        f
    }

    /// Checksum of bytes `0..n` of the `/bytes` pattern.
    fn pattern_sum(n: u64) -> Fnv1a64 {
        let mut f = Fnv1a64::new();
        write_pattern(&mut f, 0, n).unwrap();
        f
    }

    #[test]
    fn fnv1a64_vectors_and_documented_examples() {
        // Reference values of FNV-1a 64.
        assert_eq!(fnv(b"").hash(), 0xcbf29ce484222325);
        assert_eq!(fnv(b"a").hash(), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv(b"foobar").hash(), 0x85944171f73967e8);
        assert_eq!(fnv(b"").summary(), "0 cbf29ce484222325\n");
        // Incremental hashing is the same as one pass.
        let mut f = Fnv1a64::new();
        f.update(b"foo");
        f.write_all(b"bar").unwrap();
        assert_eq!(f, fnv(b"foobar"));
        // The example in the module documentation.
        assert_eq!(pattern_sum(1 << 20).summary(), "1048576 4c568eccaeaf6c44\n");
    }

    #[test]
    fn pattern_is_i_mod_251_from_any_offset() {
        let mut out = Vec::new();
        write_pattern(&mut out, 0, 200_000).unwrap();
        assert!(out.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        let mut tail = Vec::new();
        write_pattern(&mut tail, 70_001, 129_999).unwrap();
        assert_eq!(tail, out[70_001..]);
        assert_eq!(pattern_byte(250), 250);
        assert_eq!(pattern_byte(251), 0);
    }

    #[test]
    fn sha1_base64_and_websocket_accept_vectors() {
        let hex = |b: [u8; 20]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(hex(sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex(sha1(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        assert_eq!(
            hex(sha1(&[b'a'; 1_000_000])),
            "34aa973cd4c4daa4f61eeb2bdbad27316534016f"
        );
        // RFC 4648 §10.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        // RFC 6455 §1.3.
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_upgrade_requests() {
        let head = |raw: &str| {
            read_head(&mut Cursor::new(raw.as_bytes().to_vec()))
                .unwrap()
                .unwrap()
        };
        let h = head(
            "GET /echo HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c, WebSocket\r\nSec-WebSocket-Key:  k== \r\n\r\n",
        );
        assert_eq!(h.upgrade.as_deref(), Some("WebSocket"));
        assert_eq!(h.websocket_key.as_deref(), Some("k=="));
        let h = head("GET /echo HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: foo/2, bar\r\n\r\n");
        assert_eq!(h.upgrade.as_deref(), Some("foo/2"));
        // Upgrade needs `Connection: upgrade`, HTTP/1.1 and a valid protocol.
        let h = head("GET /echo HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(h.upgrade, None);
        let h = head("GET /echo HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(h.upgrade, None);
        let h = head("GET /echo HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: a b\rc\r\n\r\n");
        assert_eq!(h.upgrade, None);
        let h = head("POST /sink HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((h.method, h.framing), (Method::Post, Framing::Chunked));
    }

    #[test]
    fn body_limit_still_applies_outside_sink() {
        let status = |raw: &str| parse(raw).unwrap_err().response().map(|r| r.status);
        let over = MAX_BODY_BYTES + 1;
        assert_eq!(
            status(&format!(
                "PUT /file HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{over:x}\r\n"
            )),
            Some(413)
        );
        assert_eq!(
            status(
                "PUT /file HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\nffffffffffffffff\r\n"
            ),
            Some(413)
        );
    }

    #[test]
    fn bytes_streams_the_pattern_with_its_length() {
        let (addr, st) = start_server();
        let (mut s, mut r) = connect(addr);
        // Small sizes, byte by byte, on one kept-alive connection.
        for n in [0u64, 1, 250, 251, 252, 65_536, 70_000] {
            write!(s, "GET /bytes/{n} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            let head = read_head_of_response(&mut r);
            assert_eq!(head.status, 200);
            assert_eq!(head.content_length(), n);
            assert_eq!(head.get("content-type"), Some("application/octet-stream"));
            let mut body = vec![0; n as usize];
            r.read_exact(&mut body).unwrap();
            assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        }
        // A large one, hashed as it arrives.
        let n = 50 * 1024 * 1024 + 3;
        write!(s, "GET /bytes/{n} HTTP/1.1\r\n\r\n").unwrap();
        let head = read_head_of_response(&mut r);
        assert_eq!((head.status, head.content_length()), (200, n));
        let mut got = Fnv1a64::new();
        let copied = io::copy(&mut r.by_ref().take(n), &mut got).unwrap();
        assert_eq!(copied, n);
        assert_eq!(got, pattern_sum(n));
        // Bad sizes and methods; the connection is still usable and nothing was counted.
        for (req, status) in [
            ("GET /bytes/abc", 400),
            ("GET /bytes/", 400),
            ("GET /bytes/+5", 400),
            ("GET /bytes/1099511627777", 400),
            ("GET /bytes/99999999999999999999999", 400),
            ("PUT /bytes/5", 405),
            ("GET /bytes", 404),
        ] {
            write!(s, "{req} HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap();
            assert_eq!(read_response(&mut r).0.status, status, "{req}");
        }
        s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let (head, body) = read_response(&mut r);
        assert_eq!(head.get("connection"), Some("close"));
        assert!(body.starts_with("1 requests served"), "{body}");
        assert_eq!(st.served(), 1);
    }

    #[test]
    fn head_bytes_gives_the_headers_only() {
        let (addr, _) = start_server();
        let (mut s, mut r) = connect(addr);
        s.write_all(b"HEAD /bytes/17179869184 HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n")
            .unwrap();
        let head = read_head_of_response(&mut r);
        assert_eq!((head.status, head.content_length()), (200, 16 << 30));
        // The next bytes are the next response: no body was sent.
        let (head, body) = read_response(&mut r);
        assert_eq!((head.status, body.as_str()), (200, "ok\n"));
    }

    #[test]
    fn sink_counts_and_hashes_content_length_and_chunked_bodies() {
        let (addr, st) = start_server();
        let (mut s, mut r) = connect(addr);
        let mut sink = |req: &[u8]| {
            s.write_all(req).unwrap();
            let (head, body) = read_response(&mut r);
            assert_eq!(head.get("connection"), Some("keep-alive"));
            (head.status, body)
        };
        assert_eq!(
            sink(b"POST /sink HTTP/1.1\r\nContent-Length: 6\r\n\r\nfoobar"),
            (200, "6 85944171f73967e8\n".to_string())
        );
        assert_eq!(
            sink(b"POST /sink HTTP/1.1\r\n\r\n"),
            (200, "0 cbf29ce484222325\n".to_string())
        );
        assert_eq!(
            sink(b"PUT /sink?x=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nfoo\r\n1\r\nb\r\n2\r\nar\r\n0\r\nTrailer: x\r\n\r\n"),
            (200, "6 85944171f73967e8\n".to_string())
        );
        assert_eq!(
            sink(b"POST /sink HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            (200, "0 cbf29ce484222325\n".to_string())
        );
        // A chunked body of many chunks of varied sizes, bigger than the buffers.
        let total = 3 * 1024 * 1024 + 5;
        let mut raw = b"POST /sink HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let (mut pos, mut size) = (0u64, 1u64);
        while pos < total {
            let len = size.min(total - pos);
            raw.extend_from_slice(format!("{len:x}\r\n").as_bytes());
            write_pattern(&mut raw, pos, len).unwrap();
            raw.extend_from_slice(b"\r\n");
            pos += len;
            size = size * 3 + 7;
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(sink(&raw), (200, pattern_sum(total).summary()));
        assert_eq!(
            sink(b"GET /sink HTTP/1.1\r\n\r\n").0,
            405,
            "GET /sink is not allowed"
        );
        // Expect: 100-continue is answered before the body is sent.
        s.write_all(b"PUT /sink HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
            .unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
        r.read_line(&mut line).unwrap();
        s.write_all(b"abc").unwrap();
        let (head, body) = read_response(&mut r);
        assert_eq!((head.status, body), (200, fnv(b"abc").summary()));
        // A malformed chunked body is a 400, and the connection is closed.
        s.write_all(b"POST /sink HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n")
            .unwrap();
        let (head, _) = read_response(&mut r);
        assert_eq!((head.status, head.get("connection")), (400, Some("close")));
        assert_eq!(r.read(&mut [0; 1]).unwrap(), 0);
        assert_eq!(st.served(), 0);
    }

    /// Peak resident memory of this process, in bytes (Linux only).
    fn peak_rss() -> Option<u64> {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    #[test]
    fn sink_streams_200_mib_bodies_without_holding_them() {
        const N: u64 = 200 * 1024 * 1024 + 7;
        let expected = pattern_sum(N).summary();
        let (addr, _) = start_server();
        let peak_before = peak_rss();
        let (s, mut r) = connect(addr);
        // Content-Length (over MAX_BODY_BYTES), with Expect: 100-continue.
        let mut w = s.try_clone().unwrap();
        write!(
            w,
            "POST /sink HTTP/1.1\r\nContent-Length: {N}\r\nExpect: 100-continue\r\n\r\n"
        )
        .unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
        r.read_line(&mut line).unwrap();
        let sender = std::thread::spawn(move || write_pattern(&mut w, 0, N));
        let (head, body) = read_response(&mut r);
        sender.join().unwrap().unwrap();
        assert_eq!((head.status, body.as_str()), (200, expected.as_str()));
        // Chunked, in 1 MiB + 1 chunks, on the same connection.
        let mut w = s.try_clone().unwrap();
        let sender = std::thread::spawn(move || -> io::Result<()> {
            w.write_all(b"PUT /sink HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            let mut pos = 0;
            while pos < N {
                let len = (N - pos).min((1 << 20) + 1);
                write!(w, "{len:x}\r\n")?;
                write_pattern(&mut w, pos, len)?;
                w.write_all(b"\r\n")?;
                pos += len;
            }
            w.write_all(b"0\r\n\r\n")
        });
        let (head, body) = read_response(&mut r);
        sender.join().unwrap().unwrap();
        assert_eq!((head.status, body.as_str()), (200, expected.as_str()));
        // Neither body was held: the peak memory of the whole process grew far less than N.
        if let (Some(before), Some(after)) = (peak_before, peak_rss()) {
            assert!(
                after.saturating_sub(before) < N / 4,
                "peak RSS grew from {before} to {after} bytes"
            );
        }
    }

    /// Sends the upgrade request `extra` (headers) to `/echo`; returns the 101 head.
    fn upgrade(s: &mut TcpStream, r: &mut impl BufRead, extra: &str) -> Head {
        write!(
            s,
            "GET /echo HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n{extra}\r\n"
        )
        .unwrap();
        read_head_of_response(r)
    }

    #[test]
    fn echo_upgrades_and_echoes_bytes_until_close() {
        let (addr, _) = start_server();
        let (mut s, mut r) = connect(addr);
        let head = upgrade(
            &mut s,
            &mut r,
            "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        );
        assert_eq!(head.status, 101);
        assert_eq!(head.get("connection"), Some("Upgrade"));
        assert_eq!(head.get("upgrade"), Some("websocket"));
        assert_eq!(
            head.get("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert_eq!(head.get("content-length"), None);
        // A WebSocket frame comes back as is.
        let frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        s.write_all(&frame).unwrap();
        let mut back = [0; 11];
        r.read_exact(&mut back).unwrap();
        assert_eq!(back, frame);
        // Arbitrary bytes, more than the buffers hold, sent while they are read back; things
        // that look like HTTP are not interpreted.
        let mut data: Vec<u8> = (0..4 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        data.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let mut w = s.try_clone().unwrap();
        let sent = data.clone();
        let sender = std::thread::spawn(move || {
            for piece in sent.chunks(100_003) {
                w.write_all(piece).unwrap();
            }
            // Closing our side ends the echo; the server then closes its side.
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut echoed = Vec::new();
        r.read_to_end(&mut echoed).unwrap();
        sender.join().unwrap();
        assert_eq!(echoed.len(), data.len());
        assert!(echoed == data, "echoed bytes differ");
    }

    #[test]
    fn echo_upgrade_without_websocket_key_and_pipelined_bytes() {
        let (addr, _) = start_server();
        let (mut s, mut r) = connect(addr);
        // Bytes sent right behind the request head are echoed too.
        write!(
            s,
            "GET /echo HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: foo/1, bar\r\n\r\nearly bytes"
        )
        .unwrap();
        let head = read_head_of_response(&mut r);
        assert_eq!((head.status, head.get("upgrade")), (101, Some("foo/1")));
        assert_eq!(head.get("sec-websocket-accept"), None);
        s.shutdown(Shutdown::Write).unwrap();
        let mut echoed = String::new();
        r.read_to_string(&mut echoed).unwrap();
        assert_eq!(echoed, "early bytes");
    }

    #[test]
    fn echo_without_upgrade_is_426() {
        let (addr, _) = start_server();
        let (mut s, mut r) = connect(addr);
        for req in [
            "GET /echo HTTP/1.1\r\n\r\n",
            "GET /echo HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /echo HTTP/1.1\r\nConnection: upgrade\r\n\r\n",
            "GET /echo HTTP/1.0\r\nConnection: upgrade, keep-alive\r\nUpgrade: websocket\r\n\r\n",
        ] {
            s.write_all(req.as_bytes()).unwrap();
            let (head, body) = read_response(&mut r);
            assert_eq!(head.status, 426, "{req}");
            assert_eq!(head.get("upgrade"), Some("websocket"));
            assert_eq!(head.get("connection"), Some("keep-alive"));
            assert!(body.contains("Connection: Upgrade"), "{body}");
        }
        s.write_all(b"HEAD /echo HTTP/1.1\r\n\r\nPOST /echo HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert_eq!(read_head_of_response(&mut r).status, 426);
        let (head, _) = read_response(&mut r);
        assert_eq!(head.status, 405);
        assert_eq!(r.read(&mut [0; 1]).unwrap(), 0);
    }
}
