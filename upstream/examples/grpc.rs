//! gRPC over the upstream's discovery: tonic's balanced channel fed by
//! [`Upstream::discover`], so that calls go to the instances Cloud Map lists (DNS or its
//! API), proven by HTTP/2 probes and without the ejected ones.
//!
//! ```text
//! cargo run -p upstream --example grpc                                    # a local server
//! cargo run -p upstream --example grpc -- http://greeter.internal:50051   # Cloud Map's DNS
//! ```
//!
//! The Greeter needs no protoc and no build script: its messages are prost derives written
//! by hand, and the two halves of what tonic-build would generate (the server's route and
//! the client's call) are a few lines each. A real service would generate them instead.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::transport::channel::Change as TonicChange;
use tonic::transport::{Channel, Endpoint};
use upstream::{Change, Options, ProbeKind, Upstream};

/// Longest wait for a connection to one instance.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest one call may take once sent to an instance.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a whole call may take, the wait for a ready instance included.
const CALL_DEADLINE: Duration = Duration::from_secs(5);

/// The Greeter service: its messages, its server and a client call.
pub mod greeter {
    use std::convert::Infallible;
    use std::future::Future;
    use std::sync::Arc;

    use http::uri::PathAndQuery;
    use tokio::net::TcpListener;
    use tonic::body::Body;
    use tonic::transport::Server;
    use tonic::transport::server::TcpIncoming;
    use tonic::{Request, Response, Status};
    use tonic_prost::ProstCodec;

    /// `message HelloRequest { string name = 1; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HelloRequest {
        /// Who to greet.
        #[prost(string, tag = "1")]
        pub name: String,
    }

    /// `message HelloReply { string message = 1; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HelloReply {
        /// The greeting.
        #[prost(string, tag = "1")]
        pub message: String,
    }

    /// `rpc SayHello(HelloRequest) returns (HelloReply)` of `service Greeter` in package
    /// `helloworld`: gRPC's path is `/<package>.<service>/<method>`.
    pub const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

    /// The server half: route by path, decode, answer `Hello <name> from <server>`, encode.
    /// Unknown methods answer UNIMPLEMENTED, as generated servers do.
    async fn route(
        server: Arc<str>,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, Infallible> {
        if request.uri().path() != SAY_HELLO {
            return Ok(Status::unimplemented("unknown method").into_http());
        }
        let say_hello = tower::service_fn(move |request: Request<HelloRequest>| {
            let message = format!("Hello {} from {server}", request.into_inner().name);
            async move { Ok::<_, Status>(Response::new(HelloReply { message })) }
        });
        let codec = ProstCodec::<HelloReply, HelloRequest>::default();
        Ok(tonic::server::Grpc::new(codec)
            .unary(say_hello, request)
            .await)
    }

    /// Serves the Greeter as `server` on `listener` until `shutdown` completes, then
    /// finishes the calls in flight.
    pub async fn serve(
        listener: TcpListener,
        server: &str,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let server: Arc<str> = Arc::from(server);
        let service = tower::service_fn(move |request| route(Arc::clone(&server), request));
        Server::builder()
            .serve_with_incoming_shutdown(service, TcpIncoming::from(listener), shutdown)
            .await
    }

    /// The client half: waits for a ready instance, then one call.
    pub async fn say_hello(
        channel: tonic::transport::Channel,
        name: &str,
    ) -> Result<String, Status> {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|err| Status::unavailable(format!("channel not ready: {err}")))?;
        let request = Request::new(HelloRequest { name: name.into() });
        let codec = ProstCodec::<HelloRequest, HelloReply>::default();
        let reply = grpc
            .unary(request, PathAndQuery::from_static(SAY_HELLO), codec)
            .await?;
        Ok(reply.into_inner().message)
    }
}

/// How tonic reaches one instance. Its balanced channel neither bounds a connection attempt
/// nor a call sent into an instance that hangs, so each endpoint carries both timeouts.
pub fn endpoint(addr: SocketAddr) -> Endpoint {
    // An address and port always make a valid authority (IPv6 in brackets).
    let uri = http::Uri::try_from(format!("http://{addr}")).expect("an address is a valid URI");
    Endpoint::from(uri)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
}

/// Forwards the upstream's changes into tonic's balanced channel (tonic has its own
/// `Change` type) until the channel is dropped.
pub async fn feed_balance_channel(
    changes: impl Stream<Item = Result<Change<SocketAddr, Endpoint>, Infallible>>,
    sender: mpsc::Sender<TonicChange<SocketAddr, Endpoint>>,
) {
    let mut changes = std::pin::pin!(changes);
    loop {
        let change = tokio::select! {
            () = sender.closed() => return,
            Some(Ok(change)) = changes.next() => change,
        };
        let change = match change {
            Change::Insert(addr, endpoint) => TonicChange::Insert(addr, endpoint),
            Change::Remove(addr) => TonicChange::Remove(addr),
        };
        if sender.send(change).await.is_err() {
            return;
        }
    }
}

/// A Greeter on 127.0.0.1, for running the example alone: its URL and its server.
async fn local_server() -> anyhow::Result<(String, impl Future<Output = ()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = async move {
        if let Err(err) = greeter::serve(listener, "local", std::future::pending()).await {
            eprintln!("the local server stopped: {err}");
        }
    };
    Ok((url, server))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = match std::env::args().nth(1) {
        Some(url) => url,
        None => {
            let (url, server) = local_server().await?;
            tokio::spawn(server);
            url
        }
    };
    let mut options = Options::default();
    // tonic's servers speak only HTTP/2: an HTTP/1.1 probe would never prove them.
    options.probe.kind = ProbeKind::Http2;
    let target = url.parse().map_err(anyhow::Error::msg)?;
    let upstream = Upstream::start(target, options, &mut Registry::default())?;

    let (channel, sender) = Channel::balance_channel(16);
    tokio::spawn(feed_balance_channel(upstream.discover(endpoint), sender));

    for _ in 0..3 {
        let call = greeter::say_hello(channel.clone(), "world");
        let reply = tokio::time::timeout(CALL_DEADLINE, call).await??;
        println!("{reply}");
    }
    Ok(())
}
