//! Shutdown with a request in flight: the request is answered in full once its upstream
//! answers, new connections are refused from the signal on, and hello stops after.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::helpers::{Greeting, Hello, eventually, hello_config};

/// A `name` stand-in whose `GET /` answers only once released; `/healthz` answers at once.
struct HeldName {
    addr: SocketAddr,
    asked: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

#[derive(Clone)]
struct Held {
    asked: Arc<AtomicUsize>,
    released: watch::Receiver<bool>,
}

impl HeldName {
    async fn start() -> Self {
        let (release, released) = watch::channel(false);
        let asked = Arc::new(AtomicUsize::new(0));
        let held = Held {
            asked: Arc::clone(&asked),
            released,
        };
        let router = Router::new()
            .route("/", get(answer_when_released))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(held);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            addr,
            asked,
            release,
        }
    }

    /// Requests for `/` received so far, answered or held.
    fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }

    /// Lets every held request, and every later one, have its answer.
    fn release(&self) {
        self.release.send_replace(true);
    }
}

async fn answer_when_released(State(mut held): State<Held>) -> axum::Json<common::NameAnswer> {
    held.asked.fetch_add(1, Ordering::SeqCst);
    let _ = held.released.wait_for(|released| *released).await;
    axum::Json(common::NameAnswer {
        name: "Olivia".into(),
        instance: "held".into(),
    })
}

#[tokio::test]
async fn a_request_in_flight_at_shutdown_is_answered_and_then_hello_stops() {
    let name = HeldName::start().await;
    let mut config = hello_config();
    config.upstream.name_service_url = format!("http://{}", name.addr).parse().unwrap();
    // One attempt, no hedge, and time enough for all of them: only the release ends the
    // request, and only the request holds shutdown back.
    config.calls.hedge = false;
    config.calls.max_attempts = 1;
    config.calls.attempt_timeout = Duration::from_secs(60);
    config.calls.request_timeout = Duration::from_secs(60);
    config.listen.shutdown_timeout = Duration::from_secs(60);
    let hello = Hello::start(config).await;
    assert!(hello.wait_ready(Duration::from_secs(5)).await);
    let addr = hello.addr();
    let request = hello
        .http
        .get(&hello.base)
        .header("accept", "application/json")
        .send();
    let in_flight = tokio::spawn(async move {
        let response = request.await?;
        let status = response.status().as_u16();
        Ok::<_, reqwest::Error>((status, response.text().await?))
    });
    let held = eventually(Duration::from_secs(5), || async { name.asked() == 1 }).await;
    assert!(held, "the request never reached the upstream");

    let stopping = tokio::spawn(hello.stop());
    let refusing = eventually(Duration::from_secs(5), || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(refusing, "hello still accepts connections after the signal");
    assert!(
        !stopping.is_finished(),
        "hello stopped with a request in flight"
    );
    name.release();

    let (status, body) = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("no answer to the request in flight")
        .unwrap()
        .expect("the request in flight was cut");
    assert_eq!(status, 200, "{body}");
    let greeting: Greeting = serde_json::from_str(&body).unwrap();
    assert_eq!(greeting.name_instance, "held");
    assert_eq!(greeting.attempts, 1);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("hello did not stop once its last request was answered")
        .unwrap()
        .unwrap();
    assert_eq!(name.asked(), 1);
}
