//! The admin API under `/api/v1`: a version's status, failed entries and their retry, targets
//! and their pause. Reads come from ferry's topics, so any instance answers for all of them;
//! mutating routes need the bearer token when `admin.token` is set.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::Admin;
use crate::model::{self, EntryState, TargetPause, TargetResult};
use crate::stages::status::failed::{self, FailedFilter};
use crate::stages::status::query;

/// Most failed entries one page returns: a page stays a few hundred KiB of JSON.
const MAX_PAGE: usize = 1000;
/// Failed entries per page when the request does not say.
const DEFAULT_PAGE: usize = 100;

/// An error answer: `{"error": "..."}` with its status code.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<crate::bus::BusError> for ApiError {
    fn from(e: crate::bus::BusError) -> Self {
        Self(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

type Answer = Result<Json<Value>, ApiError>;

/// Refuses a mutating request sent by a web page ([`cross_site`]) or without the configured
/// bearer token.
fn authorize(admin: &Admin, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(why) = cross_site(headers, admin.config.admin.token.is_some()) {
        return Err(ApiError(StatusCode::FORBIDDEN, why));
    }
    let Some(token) = &admin.config.admin.token else {
        return Ok(());
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if same(given.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError(StatusCode::FORBIDDEN, "wrong admin token".into())),
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "this route needs `Authorization: Bearer <admin.token>`".into(),
        )),
    }
}

/// Why a mutating request looks sent by a browser for another site, if it does: the CLI and
/// scripts send no `Origin`; a page's request carries its own origin (or `Sec-Fetch-Site`).
/// A page that rebinds its host name to this machine is same-origin for the browser: without
/// a token, only an address (or `localhost`) in `Host` is taken.
fn cross_site(headers: &HeaderMap, has_token: bool) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = header("host").unwrap_or_default();
    if let Some(origin) = header("origin") {
        let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if authority != host {
            return Some(format!(
                "a cross-site request (Origin {origin:?}, Host {host:?}) may not change anything"
            ));
        }
    }
    if header("sec-fetch-site").is_some_and(|site| site != "same-origin" && site != "none") {
        return Some("a request from another site may not change anything".into());
    }
    let name = host
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name);
    let address = name.trim_start_matches('[').trim_end_matches(']');
    if !has_token && address.parse::<std::net::IpAddr>().is_err() && address != "localhost" {
        return Some(format!(
            "without admin.token, changes are taken only at an address, not the host name {name:?}"
        ));
    }
    None
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
pub struct VersionQuery {
    version_id: Option<String>,
}

/// `GET /api/v1/objects/{bucket}/{key}?version_id=`: every version ferry knows of the key
/// (newest first), or the one asked for, with its overall and per-target status.
pub async fn object(
    State(admin): State<Arc<Admin>>,
    Path((bucket, key)): Path<(String, String)>,
    Query(q): Query<VersionQuery>,
) -> Answer {
    let wanted = |version: Option<&str>| {
        q.version_id
            .as_deref()
            .is_none_or(|v| version.unwrap_or("null") == v)
    };
    let states: Vec<EntryState> = admin
        .views
        .read(|status, _| {
            status
                .versions(&bucket, &key)
                .into_iter()
                .filter(|s| wanted(s.entry.version_id.as_deref()))
                .cloned()
                .collect()
        })
        .await?;
    // Versions whose records are gone (completed and retired): the targets' copies say.
    let live: Vec<String> = states
        .iter()
        .map(|s| s.entry.version_id.clone().unwrap_or_else(|| "null".into()))
        .collect();
    // One version asked for and live: its record answers, the targets need not be asked.
    let held = if q.version_id.is_some() && !live.is_empty() {
        BTreeMap::new()
    } else {
        query::held_by_targets(&admin.config, &admin.stores, &bucket, &key)
            .await
            .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e.to_string()))?
    };
    let mut versions: Vec<(i64, Value)> = states
        .iter()
        .map(|s| (s.entry.last_modified_ms, version_json(s)))
        .collect();
    for (version, copies) in held {
        if live.contains(&version) || !wanted(Some(&version)) {
            continue;
        }
        versions.push((
            copies.last_modified_ms.unwrap_or(0),
            held_json(&admin.config, &version, &copies),
        ));
    }
    if versions.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "no replication status for {bucket}/{key}{}: not enqueued yet, not reached \
                 by the replication processor yet, or no target holds a copy",
                q.version_id
                    .as_deref()
                    .map(|v| format!(" version {v}"))
                    .unwrap_or_default()
            ),
        ));
    }
    versions.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    Ok(Json(json!({
        "bucket": bucket,
        "key": key,
        "versions": versions.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    })))
}

/// A version known from the targets' copies only: COMPLETED where a target holds it; the
/// others of its rule hold no copy of it now.
fn held_json(config: &crate::config::Config, version: &str, copies: &query::HeldVersion) -> Value {
    let rule = config.rules.iter().find(|r| r.name == copies.rule);
    let all = rule.map(|r| r.targets.clone()).unwrap_or_default();
    let targets: BTreeMap<&String, Value> = all
        .iter()
        .map(|t| {
            let state = match copies.targets.get(t) {
                Some(copy) => json!({"status": model::ReplicationStatus::Completed, "target_version_id": copy}),
                None => json!({"status": "MISSING", "error": "the target holds no copy of this version"}),
            };
            (t, state)
        })
        .collect();
    let complete = all.iter().all(|t| copies.targets.contains_key(t));
    json!({
        "version_id": (version != "null").then_some(version),
        "kind": "object",
        "size": copies.size,
        "etag": copies.etag,
        "rule": copies.rule,
        "source": rule.map(|r| r.source.clone()),
        "status": if complete { json!(model::ReplicationStatus::Completed) } else { json!("MISSING") },
        "last_modified_ms": copies.last_modified_ms,
        "from": "target copies (the status record was retired after completion)",
        "targets": targets,
    })
}

fn version_json(state: &EntryState) -> Value {
    let e = &state.entry;
    json!({
        "version_id": e.version_id,
        "kind": e.kind,
        "size": e.size,
        "etag": e.etag,
        "rule": e.rule,
        "source": e.source,
        "status": state.overall,
        "last_modified_ms": e.last_modified_ms,
        "enqueued_at_ms": e.enqueued_at_ms,
        "completed_at_ms": state.completed_at_ms,
        "targets": state.targets,
    })
}

#[derive(Deserialize)]
pub struct FailedQuery {
    target: Option<String>,
    prefix: Option<String>,
    limit: Option<usize>,
    /// The id of the last entry of the previous page.
    after: Option<String>,
}

/// `GET /api/v1/failed?target=&prefix=&limit=&after=`: failed entries in id order, a page at
/// a time; `next` is the `after` of the next page, absent on the last one.
pub async fn failed_list(State(admin): State<Arc<Admin>>, Query(q): Query<FailedQuery>) -> Answer {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let filter = FailedFilter {
        target: q.target,
        prefix: q.prefix,
        ids: Vec::new(),
    };
    let matching: Vec<(String, TargetResult)> = admin
        .views
        .read(|_, failed| {
            failed
                .after(q.after.as_deref())
                .filter(|(id, r)| filter.matches(id, r))
                .take(limit + 1)
                .map(|(id, r)| (id.clone(), r.clone()))
                .collect()
        })
        .await?;
    let more = matching.len() > limit;
    let page: Vec<Value> = matching
        .iter()
        .take(limit)
        .map(|(id, r)| {
            json!({
                "id": id,
                "bucket": r.entry.bucket,
                "key": r.entry.key,
                "version_id": r.entry.version_id,
                "target": r.target,
                "error": r.error,
                "attempts": r.attempts,
                "failed_at_ms": r.at_ms,
                "enqueued_at_ms": r.entry.enqueued_at_ms,
            })
        })
        .collect();
    let next = more.then(|| page.last().map(|p| p["id"].clone())).flatten();
    Ok(Json(json!({ "entries": page, "next": next })))
}

/// The body of `POST /api/v1/failed/retry`: at least one criterion, or `all`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    #[serde(default)]
    all: bool,
    target: Option<String>,
    prefix: Option<String>,
    #[serde(default)]
    ids: Vec<String>,
}

/// `POST /api/v1/failed/retry`: sends the matching failed entries back for another round of
/// attempts; answers how many.
pub async fn failed_retry(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    body: Option<Json<RetryRequest>>,
) -> Answer {
    authorize(&admin, &headers)?;
    let Some(Json(request)) = body else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "send a JSON body: {\"all\": true}, or any of \"target\", \"prefix\", \"ids\"".into(),
        ));
    };
    let narrowed = request.target.is_some() || request.prefix.is_some() || !request.ids.is_empty();
    if !narrowed && !request.all {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "no filter given: name a target, a prefix or ids, or say \"all\": true".into(),
        ));
    }
    let filter = FailedFilter {
        target: request.target,
        prefix: request.prefix,
        ids: request.ids,
    };
    let retried = failed::retry(&admin.bus, &admin.topics, &filter).await?;
    Ok(Json(json!({ "retried": retried })))
}

/// The query of `GET /api/v1/dead-letters`.
#[derive(Deserialize)]
pub struct DeadLetterQuery {
    /// The offset the page starts at (the previous page's `next`).
    #[serde(default)]
    from: i64,
    limit: Option<usize>,
}

/// `GET /api/v1/dead-letters?from=&limit=`: the messages no stage could read, oldest first, a
/// page at a time, each with its offset, origin and reason.
pub async fn dead_letters(
    State(admin): State<Arc<Admin>>,
    Query(q): Query<DeadLetterQuery>,
) -> Answer {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let (page, next) = super::dead_letters::list(&admin, q.from.max(0), limit).await?;
    Ok(Json(json!({ "dead_letters": page, "next": next })))
}

/// The body of `POST /api/v1/dead-letters/replay`: offsets, or `all`.
#[derive(Deserialize)]
pub struct ReplayRequest {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    offsets: Vec<i64>,
}

/// `POST /api/v1/dead-letters/replay`: publishes dead letters again to the topics they came
/// from; answers what became of each.
pub async fn dead_letters_replay(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    body: Option<Json<ReplayRequest>>,
) -> Answer {
    authorize(&admin, &headers)?;
    let request = match body {
        Some(Json(r)) if r.all == r.offsets.is_empty() => r,
        _ => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "send a JSON body: {\"offsets\": [N, ...]} or {\"all\": true}".into(),
            ))
        }
    };
    let offsets = (!request.all).then_some(request.offsets.as_slice());
    let done = super::dead_letters::replay(&admin, offsets).await?;
    let replayed: Vec<Value> = done
        .into_iter()
        .map(|(offset, outcome)| match outcome {
            super::dead_letters::Replayed::Sent { topic } => {
                json!({ "offset": offset, "sent_to": topic })
            }
            super::dead_letters::Replayed::Skipped(why) => {
                json!({ "offset": offset, "skipped": why })
            }
        })
        .collect();
    Ok(Json(json!({ "replayed": replayed })))
}

/// `GET /api/v1/targets`: every target with its state, backlog and what this process copied.
pub async fn targets(State(admin): State<Arc<Admin>>) -> Answer {
    let names = target_names(&admin);
    let counts: BTreeMap<String, (u64, u64)> = admin
        .views
        .read(|status, failed| {
            names
                .iter()
                .map(|n| (n.clone(), (status.backlog(n), failed.count(n))))
                .collect()
        })
        .await?;
    let decisions = admin.pauses.snapshot();
    let m = crate::metrics::metrics();
    let list: Vec<Value> = names
        .into_iter()
        .map(|name| {
            let paused = admin.pauses.holding(&name);
            let by_error = admin.gates.get(&name).and_then(|g| g.paused());
            let state = match (&paused, &by_error) {
                (Some(_), _) => "paused",
                (None, Some(_)) => "paused-by-error",
                (None, None) => "active",
            };
            let label = m.target(&name);
            json!({
                "name": name,
                "state": state,
                "reason": paused.as_ref().and_then(|p| p.reason.clone()).or(by_error),
                "resume_at_ms": paused.as_ref().and_then(|p| p.resume_at_ms),
                "paused_at_ms": decisions.get(&name).filter(|d| d.paused).map(|d| d.at_ms),
                "backlog": counts.get(&name).map_or(0, |c| c.0),
                "failed": counts.get(&name).map_or(0, |c| c.1),
                "replicated_objects": m.objects_replicated.get_or_create(&label).get(),
                "replicated_bytes": m.bytes_replicated.get_or_create(&label).get(),
            })
        })
        .collect();
    Ok(Json(json!({ "targets": list })))
}

/// Every location some rule copies to, in name order.
fn target_names(admin: &Admin) -> Vec<String> {
    let mut names: Vec<String> = admin
        .config
        .rules
        .iter()
        .flat_map(|r| r.targets.iter().cloned())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[derive(Deserialize)]
pub struct PauseQuery {
    /// pause: resume by itself after this long; resume: resume after this long, not now.
    after: Option<String>,
    reason: Option<String>,
}

/// `POST /api/v1/targets/{name}/pause?after=&reason=`: no copies to the target until resumed
/// (or until `after` has passed); its copies wait in the retry topic, on every instance.
pub async fn pause(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<PauseQuery>,
) -> Answer {
    authorize(&admin, &headers)?;
    known_target(&admin, &name)?;
    let after = parse_after(q.after.as_deref())?;
    let now = model::now_ms();
    let pause = TargetPause {
        schema: model::SCHEMA,
        target: name,
        paused: true,
        resume_at_ms: after.map(|d| now + d.as_millis() as i64),
        reason: q.reason,
        at_ms: now,
    };
    admin
        .pauses
        .record(&admin.publisher, &admin.topics, pause.clone())
        .await?;
    Ok(Json(
        json!({ "target": pause.target, "state": "paused", "resume_at_ms": pause.resume_at_ms }),
    ))
}

/// `POST /api/v1/targets/{name}/resume?after=`: copies to the target go on now, or after
/// `after` (a paused target stays paused until then).
pub async fn resume(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<PauseQuery>,
) -> Answer {
    authorize(&admin, &headers)?;
    known_target(&admin, &name)?;
    let after = parse_after(q.after.as_deref())?;
    let now = model::now_ms();
    let current = admin.pauses.holding(&name);
    let pause = match (after, current) {
        (Some(after), Some(current)) => TargetPause {
            resume_at_ms: Some(now + after.as_millis() as i64),
            at_ms: now,
            ..current
        },
        (Some(_), None) => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("target {name} is not paused: nothing to resume later"),
            ))
        }
        (None, _) => TargetPause {
            schema: model::SCHEMA,
            target: name.clone(),
            paused: false,
            resume_at_ms: None,
            reason: None,
            at_ms: now,
        },
    };
    admin
        .pauses
        .record(&admin.publisher, &admin.topics, pause.clone())
        .await?;
    let state = if pause.holds_at(now) {
        "paused"
    } else {
        "active"
    };
    Ok(Json(
        json!({ "target": name, "state": state, "resume_at_ms": pause.resume_at_ms }),
    ))
}

fn known_target(admin: &Admin, name: &str) -> Result<(), ApiError> {
    if target_names(admin).iter().any(|t| t == name) {
        return Ok(());
    }
    Err(ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "no target {name:?}: the targets are {}",
            target_names(admin).join(", ")
        ),
    ))
}

fn parse_after(after: Option<&str>) -> Result<Option<Duration>, ApiError> {
    after
        .map(|a| {
            let d = humantime::parse_duration(a).map_err(|e| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("after={a:?} is not a duration like 90s, 15m or 1h: {e}"),
                )
            })?;
            if d > MAX_AFTER {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("after={a:?} is longer than a year; pause without `after` instead"),
                ));
            }
            Ok(d)
        })
        .transpose()
}

/// The longest timed pause: a year (so `now + after` is always a valid time).
const MAX_AFTER: Duration = Duration::from_secs(366 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, axum::http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn cross_site_requests_are_told_apart() {
        let cli = headers(&[("host", "127.0.0.1:9410")]);
        assert_eq!(cross_site(&cli, false), None);
        let v6 = headers(&[("host", "[::1]:9410")]);
        assert_eq!(cross_site(&v6, false), None);
        let same = headers(&[
            ("host", "localhost:9410"),
            ("origin", "http://localhost:9410"),
        ]);
        assert_eq!(cross_site(&same, false), None);
        let page = headers(&[
            ("host", "127.0.0.1:9410"),
            ("origin", "https://evil.example"),
        ]);
        assert!(cross_site(&page, true).is_some());
        let fetch = headers(&[("host", "127.0.0.1:9410"), ("sec-fetch-site", "cross-site")]);
        assert!(cross_site(&fetch, true).is_some());
        // DNS rebinding: same origin for the browser, a host name in Host.
        let rebound = headers(&[
            ("host", "evil.example:9410"),
            ("origin", "http://evil.example:9410"),
        ]);
        assert!(cross_site(&rebound, false).is_some());
        assert_eq!(cross_site(&rebound, true), None, "the token decides then");
        let named = headers(&[("host", "ferry.internal:9410")]);
        assert_eq!(cross_site(&named, true), None);
    }

    #[test]
    fn token_comparison() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(parse_after(Some("1h")).is_ok_and(|d| d == Some(Duration::from_secs(3600))));
        assert!(parse_after(Some("soon")).is_err());
        assert!(parse_after(Some("400days")).is_err());
        assert!(parse_after(Some("99999999999999999999years")).is_err());
        assert!(parse_after(None).is_ok_and(|d| d.is_none()));
    }
}
