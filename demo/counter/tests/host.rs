//! Runs the real `counter` binary on the host (loopback only) and talks HTTP/1.1 to it over
//! real sockets: the counter, keep-alive, `Connection: close`, chunked and `Expect` uploads, and
//! the file round trip.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    addr: SocketAddr,
    data_file: PathBuf,
    dir: PathBuf,
}

impl Server {
    fn start() -> Server {
        let dir = std::env::temp_dir().join(format!("counter-host-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data_file = dir.join("data/file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_counter"))
            .env("PORT", "0")
            .env("LISTEN_HOST", "127.0.0.1")
            .env("DATA_FILE", &data_file)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .strip_prefix("counter: listening on ")
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("unexpected first log line {line:?}"))
            .parse()
            .unwrap();
        Server {
            child,
            addr,
            data_file,
            dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

/// Reads one response (with `Content-Length`) from a connection.
fn read_response(r: &mut BufReader<TcpStream>) -> Resp {
    let mut status_line = String::new();
    r.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':').unwrap();
        headers.push((n.to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    Resp {
        status,
        headers,
        body,
    }
}

fn connect(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

fn first_integer(s: &str) -> u64 {
    s.split(|c: char| !c.is_ascii_digit())
        .find(|t| !t.is_empty())
        .unwrap_or_else(|| panic!("no integer in {s:?}"))
        .parse()
        .unwrap()
}

#[test]
fn counter_binary_serves_http_on_loopback() {
    let server = Server::start();
    let (mut w, mut r) = connect(server.addr);

    // Two GET / on one kept-alive connection: 1 then 2.
    w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let a = read_response(&mut r);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("connection"), Some("keep-alive"));
    assert_eq!(first_integer(&a.text()), 1, "{}", a.text());
    assert!(
        a.text().contains("requests served since boot at "),
        "{}",
        a.text()
    );
    w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(first_integer(&read_response(&mut r).text()), 2);

    // Health checks are not counted.
    w.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let h = read_response(&mut r);
    assert_eq!((h.status, h.text().as_str()), (200, "ok\n"));

    // No file yet.
    w.write_all(b"GET /file HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut r).status, 404);

    // PUT with Expect: 100-continue (what curl -T sends): the interim answer comes first.
    w.write_all(
        b"PUT /file HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n",
    )
    .unwrap();
    let cont = read_response(&mut r);
    assert_eq!(cont.status, 100);
    w.write_all(b"hello world").unwrap();
    assert_eq!(read_response(&mut r).status, 200);
    assert_eq!(std::fs::read(&server.data_file).unwrap(), b"hello world");

    w.write_all(b"GET /file HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let f = read_response(&mut r);
    assert_eq!((f.status, f.body.as_slice()), (200, &b"hello world"[..]));

    // A chunked upload replaces it.
    w.write_all(
        b"PUT /file HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut r).status, 200);

    // Connection: close is honoured: the answer says so and the server closes.
    w.write_all(b"GET /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let last = read_response(&mut r);
    assert_eq!((last.status, last.body.as_slice()), (200, &b"abc"[..]));
    assert_eq!(last.header("connection"), Some("close"));
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "server sent more after close: {rest:?}");

    // A new connection sees the same in-memory counter.
    let (mut w2, mut r2) = connect(server.addr);
    w2.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let c = read_response(&mut r2);
    assert_eq!(first_integer(&c.text()), 3);
    assert_eq!(c.header("connection"), Some("close"));

    // Garbage gets a 400 and the connection is closed.
    let (mut w3, mut r3) = connect(server.addr);
    w3.write_all(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r3).status, 400);
}
