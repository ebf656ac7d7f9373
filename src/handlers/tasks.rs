//! `task_update` and `time_tracking`.

use anyhow::Context;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use socketioxide::adapter::Adapter;
use socketioxide_core::Value;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::Cx;
use crate::{
    error::AppError,
    rooms::{Id, Room},
    time::{iso, iso_now},
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskUpdatePayload {
    task_id: Id,
    #[serde(default)]
    project_id: Option<Id>,
    changes: Json,
}

/// `task_update`: `task:{t}` gets `task_updated`; with a `projectId` the user may access,
/// `project:{p}:activity` gets `user_activity` (an inaccessible one is skipped silently).
pub async fn task_update<A: Adapter>(cx: &Cx<'_, A>, value: &mut Value) -> Result<Json, AppError> {
    let p: TaskUpdatePayload = cx.payload(value)?;
    let task = p.task_id;
    if !p.changes.is_object() {
        return Err(AppError::invalid("changes must be an object"));
    }
    let user = &cx.conn.user;
    let room = Room::Task(task.clone());
    cx.require_room(&room)
        .await
        .map_err(|_| AppError::forbidden("Not allowed to update this task"))?;
    let timestamp = iso_now();
    let update = json!({ "taskId": task, "changes": p.changes, "updatedBy": user.id, "timestamp": timestamp });
    cx.within(&room)
        .emit("task_updated", &update)
        .await
        .context("relaying a task update")?;
    if let Some(project) = p.project_id
        && cx
            .require_room(&Room::Project(project.clone()))
            .await
            .is_ok()
    {
        let activity = json!({
            "type": "task_updated",
            "userId": user.id,
            "userName": &*user.name,
            "taskId": task,
            "projectId": project,
            "changes": p.changes,
            "timestamp": timestamp,
        });
        let room = Room::ProjectActivity(project);
        if let Err(e) = cx.within(&room).emit("user_activity", &activity).await {
            tracing::warn!(error = %e, "could not relay project activity");
        }
    }
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimeTrackingPayload {
    task_id: Id,
    action: String,
    #[serde(default)]
    at: Option<Json>,
}

/// `at` as an ISO 8601 string or epoch milliseconds.
fn parse_at(v: &Json) -> Option<OffsetDateTime> {
    match v {
        Json::String(s) => OffsetDateTime::parse(s, &Rfc3339).ok(),
        Json::Number(n) => {
            let ms = n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))?;
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
        }
        _ => None,
    }
}

/// `time_tracking`: `task:{t}:time` gets `time_tracking_updated { taskId, userId, action, at }`.
pub async fn time_tracking<A: Adapter>(
    cx: &Cx<'_, A>,
    value: &mut Value,
) -> Result<Json, AppError> {
    let p: TimeTrackingPayload = cx.payload(value)?;
    let task = p.task_id;
    if p.action != "start" && p.action != "stop" {
        return Err(AppError::invalid("action must be start or stop"));
    }
    let at = match p.at.as_ref().filter(|v| !v.is_null()) {
        Some(v) => iso(parse_at(v).ok_or_else(|| {
            AppError::invalid("at must be an ISO 8601 time or epoch milliseconds")
        })?),
        None => iso_now(),
    };
    let user = &cx.conn.user;
    let room = Room::TaskTime(task.clone());
    cx.require_room(&room)
        .await
        .map_err(|_| AppError::forbidden("Not allowed to track time on this task"))?;
    let notice = json!({ "taskId": task, "userId": user.id, "action": p.action, "at": at });
    cx.within(&room)
        .emit("time_tracking_updated", &notice)
        .await
        .context("relaying time tracking")?;
    Ok(json!({ "at": at }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_accepts_iso_and_epoch_ms() {
        let t = parse_at(&json!("2026-01-02T03:04:05.678Z")).unwrap();
        assert_eq!(iso(t), "2026-01-02T03:04:05.678Z");
        assert_eq!(
            iso(parse_at(&json!(1_700_000_000_123_i64)).unwrap()),
            "2023-11-14T22:13:20.123Z"
        );
        assert!(parse_at(&json!("yesterday")).is_none());
        assert!(parse_at(&json!(true)).is_none());
    }
}
