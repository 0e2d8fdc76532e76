//! Idle suspension never cuts a request that reached the router (`router::activity`), with
//! the real operator suspending idle actors, the real router and real runsc sandboxes
//! running the `counter` demo:
//!
//! * after a `kill -9` of the router, which loses the activity it had not written, a
//!   request through the restarted router that arrives shortly before the operator's idle
//!   deadline, and lasts past it, is answered and its actor stays `Running`;
//! * a request, and an open WebSocket tunnel with no traffic, that last longer than the
//!   idle timeout are not cut;
//! * once nothing is open, the same actor is suspended for idleness (so the operator's
//!   idle suspension really ran against these actors during the test).
//!
//! Requests are written by hand on TCP sockets so nothing buffers or retries them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use e2e::{Options, System, eventually, first_int, phase};
use serde_json::json;

const ACTOR: &str = "held";
/// The actor's `spec.idleTimeout`.
const IDLE: Duration = Duration::from_secs(6);
/// Periodic activity flushes as by default.
const ROUTER_FLAGS: &[&str] = &["--activity-interval=10s", "--wake-timeout=30s"];

fn host() -> String {
    format!("{ACTOR}.team-a.actors.resources.substrate.ate.dev")
}

fn connect(router: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(router).expect("connect to the router");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    s
}

/// Reads a response head; the status code.
fn read_status(r: &mut impl BufRead) -> Result<u16, String> {
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("reading the status line: {e}"))?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)
            .map_err(|e| format!("reading a header: {e}"))?;
        if h.trim_end().is_empty() {
            return Ok(status);
        }
    }
}

/// `GET /`: status and body.
fn get(router: SocketAddr) -> (u16, String) {
    let mut s = connect(router);
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        host()
    )
    .expect("request");
    let mut r = BufReader::new(s);
    let status = read_status(&mut r).expect("response");
    let mut body = String::new();
    r.read_to_string(&mut body).ok();
    (status, body)
}

/// `POST /sink` with a body of `chunks` KiB, one KiB every `every`: a request that lasts
/// about `chunks × every`. Its status and body, or what went wrong.
fn slow_upload(
    router: SocketAddr,
    chunks: usize,
    every: Duration,
) -> Result<(u16, String), String> {
    let mut s = connect(router);
    write!(
        s,
        "POST /sink HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        host(),
        chunks * 1024
    )
    .map_err(|e| format!("sending the head: {e}"))?;
    for i in 0..chunks {
        std::thread::sleep(every);
        s.write_all(&[b'x'; 1024])
            .map_err(|e| format!("sending chunk {i}: {e}"))?;
    }
    let mut r = BufReader::new(s);
    let status = read_status(&mut r)?;
    let mut body = String::new();
    r.read_to_string(&mut body)
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok((status, body))
}

/// How old the actor's recorded activity is.
fn activity_age(sys: &System) -> Duration {
    let a = sys.actor(ACTOR);
    let t: jiff::Timestamp = a["status"]["lastActiveTime"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no lastActiveTime: {a}"));
    let ms = jiff::Timestamp::now().as_millisecond() - t.as_millisecond();
    Duration::from_millis(ms.max(0) as u64)
}

/// Idle suspends the operator has logged for the actor.
fn idle_suspends(sys: &System) -> usize {
    sys.log("operator")
        .lines()
        .filter(|l| l.contains("idle: suspending") && l.contains(&format!("actor={ACTOR} ")))
        .count()
}

fn assert_held(sys: &System, what: &str) {
    let a = sys.actor(ACTOR);
    assert_eq!(
        (phase(&a), idle_suspends(sys)),
        ("Running", 0),
        "{what}: the actor was suspended under a request\n{a}\n--- operator log\n{}\n--- router log\n{}",
        sys.log("operator"),
        sys.log("router")
    );
}

#[test]
fn an_idle_suspend_never_cuts_a_request_that_reached_the_router() {
    let Some(mut sys) = System::start(Options::new("e2e-idle", "10.221.0.0/16", 1600)) else {
        return;
    };
    sys.start_operator();
    let r = sys.start_router(ROUTER_FLAGS);
    sys.create_actor(ACTOR, json!({"idleTimeout": "6s"}));
    for n in 1..=3 {
        let (status, body) = get(r.http);
        assert_eq!(status, 200, "{body}\n{}", sys.log("router"));
        assert_eq!(first_int(&body), n);
    }

    // 1. The router crashes with activity it has not written; a new one starts.
    sys.kill9_router();
    let r = sys.start_router(ROUTER_FLAGS);
    // The recorded activity is 4 of the 6 idle seconds old: the operator will suspend the
    // actor in 2 s, and the new router would flush in 10.
    eventually("the recorded activity nears the idle deadline", || {
        assert_eq!(phase(&sys.actor(ACTOR)), "Running", "suspended too early");
        (activity_age(&sys) >= IDLE - Duration::from_secs(2)).then_some(())
    });
    // A request of 5 s through the new router, across the deadline.
    let started = Instant::now();
    let out = slow_upload(r.http, 10, Duration::from_millis(500));
    assert_eq!(
        out.as_ref()
            .map(|(s, b)| (*s, b.split_whitespace().next().map(str::to_string))),
        Ok((200, Some("10240".to_string()))),
        "{out:?}\n--- operator log\n{}\n--- router log\n{}",
        sys.log("operator"),
        sys.log("router")
    );
    assert!(started.elapsed() > Duration::from_secs(4));
    assert_held(&sys, "the first request through a restarted router");

    // 2. A request longer than the idle timeout (10 s, a KiB every 500 ms).
    let out = slow_upload(r.http, 20, Duration::from_millis(500));
    assert_eq!(
        out.as_ref()
            .map(|(s, b)| (*s, b.split_whitespace().next().map(str::to_string))),
        Ok((200, Some("20480".to_string()))),
        "{out:?}\n--- operator log\n{}",
        sys.log("operator")
    );
    assert_held(&sys, "a request longer than the idle timeout");

    // 3. A WebSocket tunnel silent for longer than the idle timeout.
    {
        let mut s = connect(r.http);
        write!(
            s,
            "GET /echo HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            host()
        )
        .unwrap();
        let mut rd = BufReader::new(s.try_clone().unwrap());
        assert_eq!(read_status(&mut rd), Ok(101));
        std::thread::sleep(IDLE + Duration::from_secs(3));
        s.write_all(b"still here").unwrap();
        let mut back = [0u8; 10];
        rd.read_exact(&mut back).expect("the tunnel still echoes");
        assert_eq!(&back, b"still here");
        assert_held(&sys, "a silent WebSocket tunnel");
    }

    // 4. With nothing open, the actor is suspended for idleness, and a request wakes it with
    // its memory: the counter continues.
    sys.wait_phase(ACTOR, "Suspended");
    assert_eq!(idle_suspends(&sys), 1, "{}", sys.log("operator"));
    let (status, body) = get(r.http);
    assert_eq!(status, 200, "{body}");
    assert_eq!(first_int(&body), 4);
}
