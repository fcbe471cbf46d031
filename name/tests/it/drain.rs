//! The drain of the real binary: after SIGTERM, `/readyz` answers 503 at once while `/` keeps
//! answering, every answer carries `Connection: close`, and the process exits 0 once
//! `DRAIN_SECONDS` have passed.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{ask, closed_by_peer, get, poll};

/// The drain the binary is started with.
const DRAIN: Duration = Duration::from_secs(2);

/// The `name` binary on a port of its choosing, killed when dropped.
struct Name {
    child: Child,
    addr: SocketAddr,
}

impl Name {
    /// Starts the binary with `DRAIN_SECONDS` set and waits for the address it logs.
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_name"))
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("INSTANCE_ID", "n1")
            .env("DRAIN_SECONDS", DRAIN.as_secs().to_string())
            .env("RUST_LOG", "name=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The log goes on being read, so that a full pipe never blocks the process.
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (addr_tx, addr_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if event["message"] == "name is serving" {
                    let _ = addr_tx.send(event["addr"].as_str().unwrap_or_default().to_owned());
                }
            }
        });
        // Held before the address comes, so that the process is killed if it never does.
        let mut name = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let logged = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("name never logged the address it serves on");
        name.addr = logged.parse().unwrap();
        name
    }

    /// Sends SIGTERM, as ECS does to stop a task.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// The exit status once the process has exited, if it has.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn after_sigterm_name_is_not_ready_keeps_answering_and_exits_0_after_the_drain() {
    let mut name = Name::start();
    let addr = name.addr;
    let ready = get(addr, "/readyz").unwrap();
    assert_eq!(ready.status, 200, "{ready:?}");
    assert!(!ready.closes(), "{ready:?}");
    // A caller's pooled connection, opened before the signal.
    let mut pooled = TcpStream::connect(addr).unwrap();
    let before = ask(&mut pooled, "/").unwrap();
    assert!(before.status == 200 && !before.closes(), "{before:?}");

    let signalled = Instant::now();
    name.terminate();

    let not_ready = poll(Duration::from_secs(10), || {
        let answer = get(addr, "/readyz").unwrap_or_else(|err| {
            panic!("name stopped answering before it reported not ready: {err}")
        });
        (answer.status == 503).then_some(answer)
    })
    .expect("/readyz never answered 503 after SIGTERM");
    assert!(not_ready.closes(), "{not_ready:?}");
    // Still serving, from the signal to the end of the drain, on new connections and pooled
    // ones; each answer asks the caller to close.
    let fresh = get(addr, "/").expect("a new connection during the drain");
    assert!(fresh.status == 200 && fresh.closes(), "{fresh:?}");
    let last = ask(&mut pooled, "/").expect("a pooled connection during the drain");
    assert!(last.status == 200 && last.closes(), "{last:?}");
    assert!(closed_by_peer(&mut pooled), "pooled connection kept open");

    let status = poll(Duration::from_secs(20), || name.exited())
        .expect("name still running long after SIGTERM");
    assert_eq!(status.code(), Some(0), "{status}");
    let ran = signalled.elapsed();
    assert!(
        ran >= DRAIN,
        "exited {ran:?} after SIGTERM, before the drain ended"
    );
}
