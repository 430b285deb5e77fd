//! Human-readable tables for the admin API's answers.

use serde_json::Value;

use crate::stages::board::{StageReport, StageState};

/// A column-aligned table: the header, then one line per row.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// A JSON value as a cell: strings bare, null as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Milliseconds since the epoch as an RFC 3339 time (UTC, to the second).
fn time(v: &Value) -> String {
    match v.as_i64().and_then(|ms| u64::try_from(ms).ok()) {
        Some(ms) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string(),
        None => "-".into(),
    }
}

/// `ferry status BUCKET/KEY`: each version and its status on each target.
pub fn render_object(answer: &Value) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    for version in answer["versions"].as_array().unwrap_or(&empty) {
        out.push_str(&format!(
            "{}/{} version {}: {} ({} bytes, written {}, completed {})\n",
            cell(&answer["bucket"]),
            cell(&answer["key"]),
            cell(&version["version_id"]),
            cell(&version["status"]),
            cell(&version["size"]),
            time(&version["last_modified_ms"]),
            time(&version["completed_at_ms"]),
        ));
        let rows: Vec<Vec<String>> = version["targets"]
            .as_object()
            .map(|targets| {
                targets
                    .iter()
                    .map(|(name, t)| {
                        vec![
                            format!("  {name}"),
                            cell(&t["status"]),
                            cell(&t["attempts"]),
                            time(&t["updated_at_ms"]),
                            cell(&t["error"]),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push_str(&table(
            &["  TARGET", "STATUS", "ATTEMPTS", "UPDATED", "LAST ERROR"],
            &rows,
        ));
    }
    out
}

/// `ferry failed list`: one line per failed entry, then how to get the next page.
pub fn render_failed(answer: &Value) -> String {
    let empty = Vec::new();
    let entries = answer["entries"].as_array().unwrap_or(&empty);
    if entries.is_empty() {
        return "no failed entries\n".into();
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                cell(&e["target"]),
                format!("{}/{}", cell(&e["bucket"]), cell(&e["key"])),
                cell(&e["version_id"]),
                cell(&e["attempts"]),
                time(&e["failed_at_ms"]),
                cell(&e["error"]),
            ]
        })
        .collect();
    let mut out = table(
        &["TARGET", "OBJECT", "VERSION", "ATTEMPTS", "FAILED", "ERROR"],
        &rows,
    );
    if let Some(next) = answer["next"].as_str() {
        out.push_str(&format!("more: --after '{next}'\n"));
    }
    out
}

/// `ferry dead-letter list`.
pub fn render_dead_letters(answer: &Value) -> String {
    let empty = Vec::new();
    let letters = answer["dead_letters"].as_array().unwrap_or(&empty);
    if letters.is_empty() {
        return "no dead letters\n".into();
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|d| {
            vec![
                cell(&d["offset"]),
                time(&d["at_ms"]),
                cell(&d["stage"]),
                cell(&d["origin"]),
                cell(&d["reason"]),
            ]
        })
        .collect();
    let mut out = table(&["OFFSET", "AT", "STAGE", "FROM", "REASON"], &rows);
    if let Some(next) = answer["next"].as_i64() {
        out.push_str(&format!("more: --from {next}\n"));
    }
    out
}

/// `ferry targets list`.
pub fn render_targets(answer: &Value) -> String {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = answer["targets"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|t| {
            let state = match t["resume_at_ms"].as_i64() {
                Some(_) => format!("{} until {}", cell(&t["state"]), time(&t["resume_at_ms"])),
                None => cell(&t["state"]),
            };
            vec![
                cell(&t["name"]),
                state,
                cell(&t["backlog"]),
                cell(&t["failed"]),
                cell(&t["replicated_objects"]),
                cell(&t["replicated_bytes"]),
                cell(&t["reason"]),
            ]
        })
        .collect();
    table(
        &[
            "TARGET", "STATE", "BACKLOG", "FAILED", "COPIED", "BYTES", "REASON",
        ],
        &rows,
    )
}

/// The stages of the answering process: state, counts, the last error.
pub fn render_stages(stages: &[StageReport]) -> String {
    let rows: Vec<Vec<String>> = stages
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                match s.state {
                    StageState::Running => "running".into(),
                    StageState::Stopped => "STOPPED".into(),
                },
                s.received.to_string(),
                s.in_flight.to_string(),
                s.processed.to_string(),
                s.dead_letters.to_string(),
                s.errors.to_string(),
                s.last_error.as_ref().map_or("-".into(), |e| {
                    format!("{} {}", time(&Value::from(e.at_ms)), e.message)
                }),
            ]
        })
        .collect();
    table(
        &[
            "STAGE",
            "STATE",
            "RECEIVED",
            "IN FLIGHT",
            "PROCESSED",
            "DEAD LETTERS",
            "ERRORS",
            "LAST ERROR",
        ],
        &rows,
    )
}

/// `ferry status`: readiness, the targets, then this process's stages.
pub fn render_overview(ready: &Value, targets: &Value, stages: &[StageReport]) -> String {
    let mut out = format!(
        "ready: {}\n",
        if ready["ready"] == Value::Bool(true) {
            "yes"
        } else {
            "NO"
        }
    );
    if let Some(failed) = ready["failed"].as_object() {
        for (check, problem) in failed {
            out.push_str(&format!("  {check}: {}\n", cell(problem)));
        }
    }
    out.push('\n');
    out.push_str(&render_targets(targets));
    out.push('\n');
    out.push_str(&render_stages(stages));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_show_missing_values_as_dashes() {
        let out = render_targets(&json!({"targets": [
            {"name": "site-a", "state": "active", "backlog": 0, "failed": 0,
             "replicated_objects": 12, "replicated_bytes": 3400, "reason": null},
            {"name": "b", "state": "paused", "resume_at_ms": 0, "backlog": 7, "failed": 1,
             "replicated_objects": 0, "replicated_bytes": 0, "reason": "maintenance"},
        ]}));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("TARGET  STATE"), "{out}");
        assert!(lines[1].starts_with("site-a  active"), "{out}");
        assert!(lines[1].ends_with('-'), "{out}");
        assert!(
            lines[2].contains("paused until 1970-01-01T00:00:00Z"),
            "{out}"
        );
        assert!(lines[2].ends_with("maintenance"), "{out}");
        assert_eq!(
            render_failed(&json!({"entries": []})),
            "no failed entries\n"
        );
    }

    #[test]
    fn the_stage_table_shows_counts_and_the_last_error() {
        let stages = [StageReport {
            name: "gc".into(),
            state: StageState::Stopped,
            received: 3,
            in_flight: 1,
            processed: 2,
            dead_letters: 0,
            errors: 1,
            last_error: Some(crate::stages::board::LastError {
                message: "k: not deleted".into(),
                at_ms: 0,
            }),
        }];
        let out = render_stages(&stages);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("STAGE  STATE"), "{out}");
        assert!(lines[1].starts_with("gc     STOPPED  3"), "{out}");
        assert!(
            lines[1].ends_with("1970-01-01T00:00:00Z k: not deleted"),
            "{out}"
        );
    }
}
