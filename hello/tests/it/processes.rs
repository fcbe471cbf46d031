//! The real `hello` and `name` binaries as processes, with their stdout kept line by line: what
//! CloudWatch Logs would receive from each container.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a process may take to start serving, or to stop after SIGTERM.
const PROCESS_LIMIT: Duration = Duration::from_secs(20);

/// The `name` binary, built beside `hello` by a workspace build (`scripts/test` and
/// `cargo nextest run --workspace` build every binary).
fn name_binary() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_hello")).with_file_name("name");
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// A running service process.
pub struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Process {
    /// Starts `name` on a free loopback port with `vars` beside the defaults.
    pub fn name(vars: &[(&str, &str)]) -> Self {
        Self::start(name_binary(), &[&[("INSTANCE_ID", "n1")], vars].concat())
    }

    /// Starts `hello` on a free loopback port, calling `name`, with `vars` beside the
    /// defaults.
    pub fn hello(name: SocketAddr, vars: &[(&str, &str)]) -> Self {
        let url = format!("http://{name}");
        let defaults = [("INSTANCE_ID", "h1"), ("NAME_SERVICE_URL", url.as_str())];
        Self::start(
            env!("CARGO_BIN_EXE_hello").into(),
            &[&defaults, vars].concat(),
        )
    }

    /// Starts `binary` with only `vars` and the listener's settings in its environment, and
    /// waits until it logs that it serves.
    fn start(binary: PathBuf, vars: &[(&str, &str)]) -> Self {
        let mut child = Command::new(&binary)
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut process = Self {
            child,
            lines,
            reader: Some(reader),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let serving = process
            .wait_for(|line| {
                line["message"]
                    .as_str()
                    .is_some_and(|message| message.ends_with("is serving"))
            })
            .unwrap_or_else(|| panic!("{} never served: {:?}", binary.display(), process.lines()));
        process.addr = serving["addr"].as_str().unwrap().parse().unwrap();
        process
    }

    /// Every line written so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every line written so far that is a JSON object; the services write no other kind.
    pub fn json(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
            .collect()
    }

    /// The first line matching `check`, waiting for it up to the process limit.
    pub fn wait_for(&self, check: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + PROCESS_LIMIT;
        loop {
            if let Some(found) = self.json().into_iter().find(&check) {
                return Some(found);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The access line of the request in trace `trace_id`, waiting for it.
    pub fn access_line(&self, trace_id: &str) -> Value {
        self.wait_for(|line| line["message"] == "request" && line["trace_id"] == trace_id)
            .unwrap_or_else(|| panic!("no access line for {trace_id}: {:?}", self.lines()))
    }

    /// Sends SIGTERM, waits for the process to exit 0 and returns every line it wrote.
    pub fn stop(mut self) -> Vec<Value> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + PROCESS_LIMIT;
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            assert!(Instant::now() < deadline, "still running after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(exit.success(), "{exit}");
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.json()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `binary` with `vars` until it exits, for settings that must stop it; returns its exit
/// code and standard error.
pub fn refused(binary: &str, vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let binary = match binary {
        "name" => name_binary(),
        _ => env!("CARGO_BIN_EXE_hello").into(),
    };
    let mut child = Command::new(binary)
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .envs(vars.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{vars:?} were accepted: still running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A GET of `path` with `headers`: the status, the headers and the body.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut request = client.get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

/// The trace id of a `traceresponse` header.
pub fn answered_trace(headers: &reqwest::header::HeaderMap) -> String {
    let value = headers["traceresponse"].to_str().unwrap();
    let fields: Vec<&str> = value.split('-').collect();
    assert_eq!(fields.len(), 4, "{value}");
    assert_eq!(fields[0], "00", "{value}");
    fields[1].to_owned()
}
