//! Shutdown in-process: a request whose head has begun when the signal comes is answered in
//! full, new connections are refused from the signal on, and `run` returns once the request
//! is answered.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::support::{closed_by_peer, config, eventually, poll, read_answer, unread_bytes};

/// `name::run` on a runtime of its own, on a thread, until told to stop.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn start(config: name::Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                name::run(config, listener, async {
                    let _ = stopped.await;
                })
                .await
            })
        });
        Self {
            addr,
            stop: Some(stop),
            thread,
        }
    }

    /// Sends the shutdown signal, as SIGTERM does.
    fn signal(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// What `run` returned, once it has returned within `limit`.
    fn returned(self, limit: Duration) -> Option<anyhow::Result<()>> {
        let thread = self.thread;
        poll(limit, || thread.is_finished().then_some(()))?;
        Some(thread.join().unwrap())
    }
}

#[test]
fn a_request_begun_before_the_signal_is_answered_and_then_name_stops() {
    // Head and shutdown deadlines far beyond the test's own waits: only the request ends the
    // wait.
    let mut name = Running::start(config(&[
        "--instance-id",
        "n1",
        "--header-read-timeout",
        "60s",
        "--shutdown-timeout",
        "60s",
    ]));
    let addr = name.addr;
    let mut client = TcpStream::connect(addr).unwrap();
    client.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    // The signal comes once name has read those bytes: until then the connection has sent
    // name nothing, and a connection that has sent nothing is closed at shutdown.
    let client_addr = client.local_addr().unwrap();
    let read = eventually(Duration::from_secs(5), || {
        unread_bytes(addr, client_addr) == Some(0)
    });
    assert!(read, "name never read the first part of the request");

    name.signal();
    let refusing = eventually(Duration::from_secs(5), || TcpStream::connect(addr).is_err());
    assert!(refusing, "name still accepts connections after the signal");
    assert!(
        !name.thread.is_finished(),
        "name stopped with a request in flight"
    );
    client.write_all(b"st: name\r\n\r\n").unwrap();
    let answer = read_answer(&mut client).expect("the request in flight was not answered");

    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.ends_with(" (from n1)\n"), "{answer:?}");
    assert!(closed_by_peer(&mut client), "connection kept open");
    name.returned(Duration::from_secs(5))
        .expect("name did not stop once its last request was answered")
        .unwrap();
}
