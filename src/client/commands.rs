//! One function per admin command: ask the server, return the text to print.

use serde_json::{json, Value};

use super::{encode, encode_key, render, AdminClient, ClientError};
use crate::stages::board::StageReport;

/// The answer as pretty JSON (for `--json`) or as `table` renders it.
fn output(answer: &Value, json: bool, table: impl Fn(&Value) -> String) -> String {
    if json {
        format!("{answer:#}\n")
    } else {
        table(answer)
    }
}

/// A query string from the parameters that are set.
fn query(params: &[(&str, Option<&str>)]) -> String {
    let set: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(v))))
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("?{}", set.join("&"))
    }
}

/// `ferry status [BUCKET/KEY]`.
pub async fn status(
    client: &AdminClient,
    json: bool,
    object: Option<&str>,
    version_id: Option<&str>,
) -> Result<String, ClientError> {
    let Some(object) = object else {
        let ready = client.readiness().await?;
        let targets = client.get("/api/v1/targets").await?;
        let stages = client.get("/api/v1/stages").await?;
        if json {
            return Ok(format!(
                "{:#}\n",
                json!({ "ready": ready, "targets": targets["targets"], "stages": stages["stages"] })
            ));
        }
        let stages: Vec<StageReport> =
            serde_json::from_value(stages["stages"].clone()).map_err(|e| ClientError::NotJson {
                method: hyper::http::Method::GET,
                path: "/api/v1/stages".into(),
                reason: format!("not a list of stages: {e}"),
            })?;
        return Ok(render::render_overview(&ready, &targets, &stages));
    };
    let (bucket, key) = object.split_once('/').unwrap_or((object, ""));
    let path = format!(
        "/api/v1/objects/{}/{}{}",
        encode(bucket),
        encode_key(key),
        query(&[("version_id", version_id)])
    );
    let answer = client.get(&path).await?;
    Ok(output(&answer, json, render::render_object))
}

/// `ferry failed list`.
pub async fn failed_list(
    client: &AdminClient,
    json: bool,
    target: Option<&str>,
    prefix: Option<&str>,
    limit: usize,
    after: Option<&str>,
) -> Result<String, ClientError> {
    let limit = limit.to_string();
    let path = format!(
        "/api/v1/failed{}",
        query(&[
            ("target", target),
            ("prefix", prefix),
            ("limit", Some(&limit)),
            ("after", after),
        ])
    );
    let answer = client.get(&path).await?;
    Ok(output(&answer, json, render::render_failed))
}

/// `ferry failed retry`.
pub async fn failed_retry(
    client: &AdminClient,
    json: bool,
    all: bool,
    target: Option<&str>,
    prefix: Option<&str>,
    ids: &[String],
) -> Result<String, ClientError> {
    let body = json!({ "all": all, "target": target, "prefix": prefix, "ids": ids });
    let answer = client.post("/api/v1/failed/retry", Some(&body)).await?;
    Ok(output(&answer, json, |a| {
        format!("{} failed entries sent back for retry\n", a["retried"])
    }))
}

/// `ferry dead-letter list`.
pub async fn dead_letters(
    client: &AdminClient,
    json: bool,
    from: i64,
    limit: usize,
) -> Result<String, ClientError> {
    let path = format!("/api/v1/dead-letters?from={from}&limit={limit}");
    let answer = client.get(&path).await?;
    Ok(output(&answer, json, render::render_dead_letters))
}

/// `ferry dead-letter replay (OFFSET... | --all)`.
pub async fn replay_dead_letters(
    client: &AdminClient,
    json: bool,
    all: bool,
    offsets: &[i64],
) -> Result<String, ClientError> {
    let body = json!({ "all": all, "offsets": offsets });
    let answer = client
        .post("/api/v1/dead-letters/replay", Some(&body))
        .await?;
    Ok(output(&answer, json, |a| {
        let mut out = String::new();
        for r in a["replayed"].as_array().into_iter().flatten() {
            let what = match (r["sent_to"].as_str(), r["skipped"].as_str()) {
                (Some(topic), _) => format!("sent to {topic}"),
                (_, Some(why)) => format!("skipped: {why}"),
                _ => "?".into(),
            };
            out.push_str(&format!("{}: {what}\n", r["offset"]));
        }
        if out.is_empty() {
            out.push_str("no dead letters\n");
        }
        out
    }))
}

/// `ferry targets list`.
pub async fn targets_list(client: &AdminClient, json: bool) -> Result<String, ClientError> {
    let answer = client.get("/api/v1/targets").await?;
    Ok(output(&answer, json, render::render_targets))
}

/// `ferry targets pause NAME [--for D] [--reason R]`.
pub async fn pause(
    client: &AdminClient,
    json: bool,
    name: &str,
    duration: Option<&str>,
    reason: Option<&str>,
) -> Result<String, ClientError> {
    let path = format!(
        "/api/v1/targets/{}/pause{}",
        encode(name),
        query(&[("after", duration), ("reason", reason)])
    );
    let answer = client.post(&path, None).await?;
    Ok(output(&answer, json, changed))
}

/// `ferry targets resume NAME [--after D]`.
pub async fn resume(
    client: &AdminClient,
    json: bool,
    name: &str,
    after: Option<&str>,
) -> Result<String, ClientError> {
    let path = format!(
        "/api/v1/targets/{}/resume{}",
        encode(name),
        query(&[("after", after)])
    );
    let answer = client.post(&path, None).await?;
    Ok(output(&answer, json, changed))
}

/// A pause or resume answer: `site-b: paused until …`.
fn changed(answer: &Value) -> String {
    let until = match answer["resume_at_ms"].as_i64() {
        Some(ms) if ms > 0 => format!(
            " until {}",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64)
            )
        ),
        _ => String::new(),
    };
    format!(
        "{}: {}{until}\n",
        answer["target"].as_str().unwrap_or("?"),
        answer["state"].as_str().unwrap_or("?")
    )
}
