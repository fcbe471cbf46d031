//! Who this instance is, for answers and logs: `INSTANCE_ID` when set; on ECS, the short task
//! id and availability zone from the task metadata endpoint v4; otherwise the hostname.

use std::time::Duration;

use serde::Deserialize;

/// The variable ECS sets in every container to the task metadata endpoint v4.
pub const ECS_METADATA_VARIABLE: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// The metadata endpoint is link-local and answers in milliseconds; do not delay start-up for
/// long when it does not.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// How many characters of the 32-character task id name the task, as the ECS console does.
const SHORT_TASK_ID_LEN: usize = 8;

/// The part of `${ECS_CONTAINER_METADATA_URI_V4}/task` this needs.
#[derive(Debug, Deserialize)]
struct TaskMetadata {
    #[serde(rename = "TaskARN")]
    task_arn: String,
    #[serde(rename = "AvailabilityZone")]
    availability_zone: Option<String>,
}

/// Resolves the instance identity. `configured` is `INSTANCE_ID`; `metadata_uri` is the value
/// of [`ECS_METADATA_VARIABLE`], passed in so that only the config module reads the
/// environment.
pub async fn instance_id(configured: Option<&str>, metadata_uri: Option<&str>) -> String {
    if let Some(id) = configured.filter(|id| !id.is_empty()) {
        return id.to_owned();
    }
    if let Some(uri) = metadata_uri {
        match from_task_metadata(uri).await {
            Ok(id) => return id,
            Err(err) => {
                tracing::warn!(error = %err, uri, "task metadata unavailable; using the hostname")
            }
        }
    }
    hostname::get()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Reads `<uri>/task` and names the task `<short task id>@<availability zone>`.
async fn from_task_metadata(uri: &str) -> Result<String, reqwest::Error> {
    Ok(name_task(&task_metadata(uri).await?))
}

/// The task's availability zone, from the task metadata endpoint at `metadata_uri`; `None`
/// (logged) when it cannot be read.
pub async fn availability_zone(metadata_uri: &str) -> Option<String> {
    match task_metadata(metadata_uri).await {
        Ok(task) => task.availability_zone,
        Err(err) => {
            tracing::warn!(error = %err, uri = metadata_uri, "task metadata unavailable; no zone");
            None
        }
    }
}

/// Reads `<uri>/task`.
async fn task_metadata(uri: &str) -> Result<TaskMetadata, reqwest::Error> {
    let client = reqwest::Client::builder()
        .timeout(METADATA_TIMEOUT)
        .no_proxy()
        .build()?;
    client
        .get(format!("{}/task", uri.trim_end_matches('/')))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

fn name_task(task: &TaskMetadata) -> String {
    // arn:aws:ecs:<region>:<account>:task/<cluster>/<task id>
    let task_id = task.task_arn.rsplit('/').next().unwrap_or(&task.task_arn);
    let short: String = task_id.chars().take(SHORT_TASK_ID_LEN).collect();
    match &task.availability_zone {
        Some(zone) => format!("{short}@{zone}"),
        None => short,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::Router;
    use axum::routing::get;

    /// Serves a task metadata document on a loopback port and returns the endpoint's URI.
    async fn metadata_endpoint(document: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/v4/abc/task", get(move || async move { document }));
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}/v4/abc")
    }

    #[tokio::test]
    async fn configured_id_wins() {
        let id = instance_id(Some("blue-1"), Some("http://127.0.0.1:9/none")).await;
        assert_eq!(id, "blue-1");
    }

    #[tokio::test]
    async fn ecs_task_is_named_by_short_id_and_zone() {
        let uri = metadata_endpoint(
            r#"{"Cluster":"c","TaskARN":"arn:aws:ecs:eu-west-1:111122223333:task/demo/3f2a9c1e0b1d4e5fa6b7c8d9e0f1a2b3","AvailabilityZone":"eu-west-1b","Family":"name"}"#,
        )
        .await;
        assert_eq!(instance_id(None, Some(&uri)).await, "3f2a9c1e@eu-west-1b");
        assert_eq!(availability_zone(&uri).await.as_deref(), Some("eu-west-1b"));
    }

    #[tokio::test]
    async fn unreachable_metadata_falls_back_to_hostname() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let expected = hostname::get().unwrap().into_string().unwrap();
        assert_eq!(instance_id(None, Some(&closed)).await, expected);
    }
}
