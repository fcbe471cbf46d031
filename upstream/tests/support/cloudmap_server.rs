//! A fake Cloud Map discovery API inside the test: the awsJson1.1 protocol (`POST /` with
//! `X-Amz-Target: Route53AutoNaming_v20170314.<Operation>`, errors as `{"__type": ...}`),
//! `DiscoverInstances` and `DiscoverInstancesRevision` only, with instances, health and
//! failures a test changes while the caller runs. Every call is counted, with the `Host`
//! header it came with. Shared by the upstream crate's tests and hello's (`#[path]`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

const TARGET_PREFIX: &str = "Route53AutoNaming_v20170314.";

/// One registered instance.
#[derive(Debug, Clone)]
pub struct Registered {
    pub id: String,
    pub addr: SocketAddr,
    pub zone: Option<String>,
    pub family: String,
    pub healthy: bool,
}

#[derive(Debug, Default)]
struct Script {
    namespace: String,
    service: String,
    instances: Vec<Registered>,
    revision: i64,
    /// Errors to answer with next, as `(status, __type)`, one per call.
    failures: VecDeque<(u16, String)>,
    /// `(operation, host)` of each call, in order.
    calls: Vec<(String, String)>,
}

/// The fake API; cloning shares it.
#[derive(Clone)]
pub struct CloudMapServer {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
}

impl CloudMapServer {
    /// Serves `<service>.<namespace>` on a free loopback port, with no instances.
    pub async fn start(namespace: &str, service: &str) -> Self {
        let script = Arc::new(Mutex::new(Script {
            namespace: namespace.into(),
            service: service.into(),
            revision: 1,
            ..Script::default()
        }));
        let router = Router::new()
            .route("/", post(handle))
            .with_state(Arc::clone(&script));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, script }
    }

    /// The endpoint to configure in the SDK.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Registers the instance `id` at `addr` in `zone`, healthy, with ECS's attributes for
    /// task definition family `name`; moves the revision.
    pub fn register(&self, id: &str, addr: SocketAddr, zone: Option<&str>) {
        self.register_family(id, addr, zone, "name");
    }

    /// Registers an instance as [`CloudMapServer::register`] does, in task definition
    /// `family`.
    pub fn register_family(&self, id: &str, addr: SocketAddr, zone: Option<&str>, family: &str) {
        let mut script = self.script.lock().unwrap();
        script.instances.push(Registered {
            id: id.to_owned(),
            addr,
            zone: zone.map(str::to_owned),
            family: family.to_owned(),
            healthy: true,
        });
        script.revision += 1;
    }

    /// Deregisters the instance `id`; moves the revision.
    pub fn deregister(&self, id: &str) {
        let mut script = self.script.lock().unwrap();
        script.instances.retain(|instance| instance.id != id);
        script.revision += 1;
    }

    /// Sets the health of instance `id`. As in Cloud Map, the revision does not move.
    pub fn set_healthy(&self, id: &str, healthy: bool) {
        let mut script = self.script.lock().unwrap();
        for instance in &mut script.instances {
            if instance.id == id {
                instance.healthy = healthy;
            }
        }
    }

    /// Answers the next `count` calls with `status` and error `kind`.
    pub fn fail_next(&self, count: usize, status: u16, kind: &str) {
        let mut script = self.script.lock().unwrap();
        script
            .failures
            .extend(std::iter::repeat_n((status, kind.to_owned()), count));
    }

    /// Calls of `operation` so far.
    pub fn calls(&self, operation: &str) -> usize {
        let script = self.script.lock().unwrap();
        script
            .calls
            .iter()
            .filter(|(op, _)| op == operation)
            .count()
    }

    /// The `Host` headers the calls came with.
    pub fn hosts(&self) -> Vec<String> {
        let script = self.script.lock().unwrap();
        script.calls.iter().map(|(_, host)| host.clone()).collect()
    }
}

async fn handle(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let operation = header("x-amz-target")
        .strip_prefix(TARGET_PREFIX)
        .unwrap_or_default()
        .to_owned();
    let mut script = script.lock().unwrap();
    script.calls.push((operation.clone(), header("host")));
    if let Some((status, kind)) = script.failures.pop_front() {
        return error(status, &kind, "scripted failure");
    }
    let request: Value = serde_json::from_str(&body).unwrap_or_default();
    if request["NamespaceName"] != script.namespace.as_str() {
        return error(
            400,
            "NamespaceNotFound",
            "No namespace exists with that name",
        );
    }
    if request["ServiceName"] != script.service.as_str() {
        return error(400, "ServiceNotFound", "No service exists with that name");
    }
    match operation.as_str() {
        "DiscoverInstancesRevision" => ok(json!({ "InstancesRevision": script.revision })),
        "DiscoverInstances" => discover_instances(&script, &request),
        _ => error(400, "UnknownOperationException", "unknown operation"),
    }
}

/// `DiscoverInstances`: the healthy instances (all when none is healthy) of the family the
/// query names, with ECS's attributes.
fn discover_instances(script: &Script, request: &Value) -> Response {
    assert_eq!(request["HealthStatus"], "HEALTHY_OR_ELSE_ALL");
    assert_eq!(request["MaxResults"], 1000);
    // QueryParameters filter on attributes; this fake knows the family's.
    let family = request["QueryParameters"]["ECS_TASK_DEFINITION_FAMILY"].as_str();
    let matching: Vec<&Registered> = script
        .instances
        .iter()
        .filter(|i| family.is_none_or(|family| i.family == family))
        .collect();
    let healthy: Vec<&Registered> = matching.iter().copied().filter(|i| i.healthy).collect();
    let listed = if healthy.is_empty() {
        matching
    } else {
        healthy
    };
    let instances: Vec<Value> = listed
        .into_iter()
        .map(|instance| {
            let mut attributes = json!({
                "AWS_INSTANCE_IPV4": instance.addr.ip().to_string(),
                "AWS_INSTANCE_PORT": instance.addr.port().to_string(),
                "ECS_TASK_DEFINITION_FAMILY": instance.family,
            });
            if let Some(zone) = &instance.zone {
                attributes["AVAILABILITY_ZONE"] = json!(zone);
            }
            json!({
                "InstanceId": instance.id,
                "NamespaceName": script.namespace,
                "ServiceName": script.service,
                "HealthStatus": if instance.healthy { "HEALTHY" } else { "UNHEALTHY" },
                "Attributes": attributes,
            })
        })
        .collect();
    ok(json!({ "Instances": instances, "InstancesRevision": script.revision }))
}

fn ok(body: Value) -> Response {
    (
        [("content-type", "application/x-amz-json-1.1")],
        body.to_string(),
    )
        .into_response()
}

fn error(status: u16, kind: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/x-amz-json-1.1")],
        json!({ "__type": kind, "message": message }).to_string(),
    )
        .into_response()
}
