//! Running `nzela run` in a test: the child process (killed when dropped,
//! even when the test panics), its log lines, a small HTTP/1.1 client to
//! post to it, and a scripted HTTP peer for it to deliver to. Standard
//! library only: plain blocking sockets and threads.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a test waits for something that should happen within seconds.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(50);

/// Calls `f` until it returns `Some`, for at most `deadline`; panics naming
/// `what` (and `context()`, for diagnostics) after that.
pub fn poll_until<T>(
    what: &str,
    deadline: Duration,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > deadline {
            panic!(
                "timed out after {deadline:?} waiting for {what}\n{}",
                context()
            );
        }
        thread::sleep(POLL);
    }
}

/// What a running nzela wrote, one entry per line.
#[derive(Debug, Default)]
pub struct Logs {
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

/// Reads `pipe` line by line into `logs` until the process closes it.
fn collect<R: Read + Send + 'static>(
    pipe: R,
    logs: Arc<Mutex<Logs>>,
    stderr: bool,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    let mut logs = logs.lock().unwrap();
                    if stderr {
                        logs.stderr.push(line);
                    } else {
                        logs.stdout.push(line);
                    }
                }
            }
        }
    })
}

/// The `nzela` command, with an environment free of the caller's nzela
/// settings (`NZELA__*`, `RUST_LOG`), of `NO_COLOR` (nzela must not colour
/// a pipe by itself) and of `NOTIFY_SOCKET` (tests run under systemd must
/// not notify it), plus `env`.
pub fn nzela_command(dir: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nzela"));
    cmd.current_dir(dir)
        .env_remove("NO_COLOR")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NZELA") {
            cmd.env_remove(key);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// What a bounded run of a command gave.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `nzela ARGS` in `dir` with `env` to completion; kills it and panics
/// if it runs longer than `deadline`.
pub fn run_bounded(
    dir: &Path,
    env: &[(String, String)],
    args: &[&str],
    deadline: Duration,
) -> Finished {
    let mut child = nzela_command(dir, env)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the nzela binary");
    let logs = Arc::new(Mutex::new(Logs::default()));
    let readers = [
        collect(child.stdout.take().unwrap(), logs.clone(), false),
        collect(child.stderr.take().unwrap(), logs.clone(), true),
    ];
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot wait for nzela") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let logs = logs.lock().unwrap();
            panic!(
                "nzela {args:?} still running after {deadline:?}\n--- stdout\n{}\n--- stderr\n{}",
                logs.stdout.join("\n"),
                logs.stderr.join("\n")
            );
        }
        thread::sleep(POLL);
    };
    for r in readers {
        let _ = r.join();
    }
    let logs = logs.lock().unwrap();
    Finished {
        status,
        stdout: logs.stdout.join("\n"),
        stderr: logs.stderr.join("\n"),
    }
}

/// A running `nzela run --config FILE`, started in `dir`. Dropping it kills
/// the process.
pub struct Daemon {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    child: Option<Child>,
    logs: Arc<Mutex<Logs>>,
    /// What earlier runs (before a restart) wrote, for diagnostics.
    earlier: Vec<String>,
    /// The address the HTTP endpoints listen on, from the "listening" line.
    pub addr: Option<SocketAddr>,
}

impl Daemon {
    /// Starts nzela and waits until it says it is running.
    pub fn start(dir: &Path, config: &Path, env: &[(&str, &str)], args: &[&str]) -> Daemon {
        let mut d = Daemon {
            dir: dir.to_owned(),
            config: config.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
            logs: Arc::new(Mutex::new(Logs::default())),
            earlier: Vec::new(),
            addr: None,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "nzela is already running");
        let mut child = nzela_command(&self.dir, &self.env)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the nzela binary");
        {
            let mut logs = self.logs.lock().unwrap();
            self.earlier.append(&mut logs.stderr);
            self.earlier.append(&mut logs.stdout);
            self.earlier.push("--- (restart)".to_owned());
        }
        collect(child.stdout.take().unwrap(), self.logs.clone(), false);
        collect(child.stderr.take().unwrap(), self.logs.clone(), true);
        self.child = Some(child);
        self.addr = None;
        let start = Instant::now();
        loop {
            if self.stderr().iter().any(|l| l.contains("nzela is running")) {
                break;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nzela exited at start with {status}\n{}", self.dump());
            }
            if start.elapsed() > DEADLINE {
                panic!("nzela did not start within {DEADLINE:?}\n{}", self.dump());
            }
            thread::sleep(POLL);
        }
        self.addr = self.stderr().iter().find_map(|l| listening_address(l));
    }

    /// Starts nzela again (same configuration, folder and environment),
    /// after it stopped.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// The HTTP address; panics when there is none.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("nzela logged no listening address")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("nzela is not running").id()
    }

    /// The lines written to stderr (the logs) by the current run.
    pub fn stderr(&self) -> Vec<String> {
        self.logs.lock().unwrap().stderr.clone()
    }

    /// The lines written to stdout by the current run.
    pub fn stdout(&self) -> Vec<String> {
        self.logs.lock().unwrap().stdout.clone()
    }

    /// Everything the runs wrote, for a failure message.
    pub fn dump(&self) -> String {
        let logs = self.logs.lock().unwrap();
        format!(
            "--- nzela output (earlier runs)\n{}\n--- stdout\n{}\n--- stderr\n{}",
            self.earlier.join("\n"),
            logs.stdout.join("\n"),
            logs.stderr.join("\n")
        )
    }

    /// Polls `f` until it returns `Some`, up to [`DEADLINE`]; on timeout
    /// the panic shows the daemon's output.
    pub fn wait_for<T>(&self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        poll_until(what, DEADLINE, || self.dump(), f)
    }

    /// `kill -9`: the process stops at once, whatever it was doing.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("nzela is not running");
        child.kill().expect("cannot kill nzela");
        child.wait().expect("cannot wait for nzela");
    }

    /// Sends `signal` (such as `-TERM`) and waits up to `deadline` for the
    /// process to exit; returns its status and how long it took.
    pub fn signal_and_wait(&mut self, signal: &str, deadline: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        self.signal(signal);
        let status = self.wait_exit(&format!("kill {signal}"), start, deadline);
        (status, start.elapsed())
    }

    /// Sends `signal` (such as `-TERM`) without waiting.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let sent = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("cannot run kill");
        assert!(sent.success(), "kill {signal} {pid} failed");
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        let child = self.child.as_mut().expect("nzela is not running");
        child.try_wait().expect("cannot wait for nzela").is_none()
    }

    /// Waits until the process exits, up to `deadline` after `start`;
    /// panics naming `after` when it does not.
    pub fn wait_exit(&mut self, after: &str, start: Instant, deadline: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("nzela is not running");
        loop {
            if let Some(status) = child.try_wait().expect("cannot wait for nzela") {
                self.child = None;
                return status;
            }
            if start.elapsed() > deadline {
                panic!(
                    "nzela did not exit within {deadline:?} of {after}\n{}",
                    self.dump()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nzela ARGS --config FILE` beside the daemon, with its environment.
    pub fn nzela(&self, args: &[&str]) -> Finished {
        let config = self.config.to_str().expect("UTF-8 path");
        let mut all = args.to_vec();
        all.extend(["--config", config]);
        run_bounded(&self.dir, &self.env, &all, DEADLINE)
    }

    /// `nzela messages show KEY --json`, parsed; `None` when nothing is found.
    pub fn show(&self, key: &str) -> Option<serde_json::Value> {
        let out = self.nzela(&["messages", "show", key, "--json"]);
        if !out.status.success() {
            return None;
        }
        Some(
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
                panic!("messages show --json is not JSON ({e}):\n{}", out.stdout)
            }),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The address of a "listening" log line (text or JSON).
fn listening_address(line: &str) -> Option<SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    let at = line.find("127.0.0.1:")?;
    let rest = &line[at..];
    let end = rest
        .char_indices()
        .skip("127.0.0.1:".len())
        .find(|(_, c)| !c.is_ascii_digit())
        .map_or(rest.len(), |(i, _)| i);
    rest[..end].parse().ok()
}

// ---------------------------------------------------------------------------
// HTTP client

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (showing it) when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the answer ({}) is not JSON ({e}):\n{}",
                self.status,
                self.text()
            )
        })
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// How a request body is sent.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    None,
    /// With `Content-Length`.
    Length(&'a [u8]),
    /// With `Transfer-Encoding: chunked` (no length announced).
    Chunked(&'a [u8]),
    /// With `Content-Length` and `Expect: 100-continue`: the body is sent
    /// only if the server asks for it.
    ExpectContinue(&'a [u8]),
}

/// One HTTP/1.1 request on a new connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Body<'_>,
) -> io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.set_write_timeout(Some(DEADLINE))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match body {
        Body::None => {}
        Body::Length(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
        Body::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n"),
        Body::ExpectContinue(b) => head.push_str(&format!(
            "Content-Length: {}\r\nExpect: 100-continue\r\n",
            b.len()
        )),
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut reader = BufReader::new(stream.try_clone()?);
    // A server may answer before it has read the whole body (a refusal):
    // errors writing the body are left for the answer to explain.
    match body {
        Body::None => {}
        Body::Length(b) => {
            let _ = stream.write_all(b);
        }
        Body::Chunked(b) => {
            for chunk in b.chunks(8192) {
                let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
                if stream.write_all(&framed).is_err() {
                    break;
                }
            }
            let _ = stream.write_all(b"0\r\n\r\n");
        }
        Body::ExpectContinue(b) => {
            let first = read_answer(&mut reader)?;
            if first.status != 100 {
                return Ok(first);
            }
            let _ = stream.write_all(b);
        }
    }
    loop {
        let answer = read_answer(&mut reader)?;
        if answer.status != 100 {
            return Ok(answer);
        }
    }
}

/// `POST` with a body and its content type.
pub fn post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Answer> {
    let mut headers = vec![("Content-Type", content_type)];
    headers.extend_from_slice(extra);
    request(addr, "POST", path, &headers, Body::Length(body))
}

/// `POST` of a JSON body.
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Answer> {
    post(addr, path, "application/json", extra, body)
}

/// Reads a head (status line and headers) and the body it announces.
fn read_answer(reader: &mut impl BufRead) -> io::Result<Answer> {
    let (status, headers) = read_head(reader, true)?;
    let body = if status == 100 || status == 204 || status == 304 {
        Vec::new()
    } else {
        read_body(reader, &headers, true)?
    };
    Ok(Answer {
        status: status as u16,
        headers,
        body,
    })
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// The first line's number (the status of an answer; 0 for a request) and
/// the headers. For a request, the first line is returned as the header
/// `:request`.
fn read_head(reader: &mut impl BufRead, answer: bool) -> io::Result<(u32, Vec<(String, String)>)> {
    let mut first = String::new();
    if reader.read_line(&mut first)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the connection closed before an answer",
        ));
    }
    let first = first.trim_end().to_owned();
    let mut headers = Vec::new();
    let status = if answer {
        first
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("not an HTTP status line: {first:?}")))?
    } else {
        headers.push((":request".to_owned(), first));
        0
    };
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(bad("the connection closed inside the headers"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Ok((status, headers));
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("not a header: {line:?}")))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
}

/// The body after a head: by `Content-Length`, chunked, or (answers only)
/// up to the end of the connection.
fn read_body(
    reader: &mut impl BufRead,
    headers: &[(String, String)],
    answer: bool,
) -> io::Result<Vec<u8>> {
    if header(headers, "transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = size.trim().split(';').next().unwrap_or_default();
            let n = usize::from_str_radix(size, 16)
                .map_err(|_| bad(format!("bad chunk size {size:?}")))?;
            if n == 0 {
                let mut trailer = String::new();
                while reader.read_line(&mut trailer)? > 2 {
                    trailer.clear();
                }
                return Ok(body);
            }
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..n]);
        }
    }
    if let Some(len) = header(headers, "content-length") {
        let n: usize = len
            .parse()
            .map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
        let mut body = vec![0; n];
        reader.read_exact(&mut body)?;
        return Ok(body);
    }
    let mut body = Vec::new();
    if answer {
        reader.read_to_end(&mut body)?;
    }
    Ok(body)
}

// ---------------------------------------------------------------------------
// HTTP peer

/// How the peer answers one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// This status, with this text as the body.
    Status(u16, String),
    /// No answer: the connection is held until the client gives up (or the
    /// peer stops).
    Hang,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Status(200, "{\"status\":\"received\"}".to_owned())
    }
}

/// A request the peer received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status answered; `None` when the peer did not answer.
    pub answered: Option<u16>,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct PeerState {
    script: VecDeque<Reply>,
    default: Reply,
    received: Vec<Received>,
}

/// An HTTP server on 127.0.0.1 answering from a script: each request takes
/// the next scripted reply, then the default one.
pub struct Peer {
    addr: SocketAddr,
    state: Arc<Mutex<PeerState>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Peer {
    pub fn start(script: Vec<Reply>, default: Reply) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the test peer");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(PeerState {
            script: script.into(),
            default,
            received: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (state, stop) = (state.clone(), stop.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let (state, stop) = (state.clone(), stop.clone());
                    thread::spawn(move || serve(conn, &state, &stop));
                }
            })
        };
        Peer {
            addr,
            state,
            stop,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The reply for every request once the script is used up.
    pub fn set_default(&self, reply: Reply) {
        self.state.lock().unwrap().default = reply;
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Serves one connection: one request, one answer, then closes.
fn serve(conn: TcpStream, state: &Mutex<PeerState>, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(clone) = conn.try_clone() else { return };
    let mut reader = BufReader::new(clone);
    let Ok((_, headers)) = read_head(&mut reader, false) else {
        return;
    };
    let Ok(body) = read_body(&mut reader, &headers, false) else {
        return;
    };
    let request_line = header(&headers, ":request").unwrap_or_default().to_owned();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let reply = {
        let mut s = state.lock().unwrap();
        let reply = s.script.pop_front().unwrap_or_else(|| s.default.clone());
        s.received.push(Received {
            method,
            path,
            headers: headers
                .into_iter()
                .filter(|(k, _)| k != ":request")
                .collect(),
            body,
            answered: match &reply {
                Reply::Status(code, _) => Some(*code),
                Reply::Hang => None,
            },
            at: Instant::now(),
        });
        reply
    };
    let mut conn = conn;
    match reply {
        Reply::Status(code, text) => {
            let answer = format!(
                "HTTP/1.1 {code} Test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = conn.write_all(answer.as_bytes());
            let _ = conn.flush();
        }
        Reply::Hang => {
            // Held until the client closes the connection or the peer stops.
            let _ = conn.set_read_timeout(Some(POLL));
            let mut buf = [0u8; 1024];
            while !stop.load(Ordering::SeqCst) {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
        }
    }
}
