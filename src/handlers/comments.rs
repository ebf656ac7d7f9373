//! `new_comment`, `edit_comment`, `delete_comment`, `list_comments` (contract section 5).

use anyhow::Context;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use socketioxide::adapter::Adapter;
use socketioxide_core::Value;

use super::{Cx, clean_text, id_field, messages, typing};
use crate::{
    error::{AppError, Code},
    rooms::{Id, Room},
    store::{Comment, NewComment, epoch_ms, from_epoch_ms},
    time::{iso, iso_now},
};

/// Most users one comment may mention.
const MAX_MENTIONS: usize = 50;
/// Comments per page unless the client asks for fewer (never more than [`MAX_PAGE`]).
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 100;
/// Length of a mention's excerpt, in code points.
const EXCERPT: usize = 100;

/// The comment as clients see it: `{ id, room, content, user, timestamp, editedAt?,
/// mentions, parentId? }`.
pub fn comment_json(c: &Comment) -> Json {
    let mut out = json!({
        "id": c.id,
        "room": c.room,
        "content": c.content,
        "user": { "id": c.author_id, "name": c.author_name },
        "timestamp": iso(from_epoch_ms(c.created_at)),
        "mentions": c.mentions,
    });
    if let Some(at) = c.edited_at {
        out["editedAt"] = json!(iso(from_epoch_ms(at)));
    }
    if let Some(parent) = &c.parent_id {
        out["parentId"] = json!(parent);
    }
    out
}

/// A `…:comments` room the user may access; anything else is refused.
async fn comments_room<A: Adapter>(cx: &Cx<'_, A>, room: &Room) -> Result<(), AppError> {
    if !matches!(room, Room::ProjectComments(_) | Room::TaskComments(_)) {
        return Err(AppError::new(
            Code::InvalidRoom,
            "Comments go to a project:{p}:comments or task:{t}:comments room",
        ));
    }
    cx.require_room(room).await
}

/// The room a stored comment belongs to. It was stored from a [`Room`], so it parses;
/// were the row altered by hand, the comment's event is not sent.
fn stored_room(c: &Comment) -> Option<Room> {
    let room = c.room.parse().ok();
    if room.is_none() {
        tracing::warn!(comment = %c.id, "a stored comment's room is not a room name");
    }
    room
}

/// Mentioned user ids: deduplicated, the author removed, at most [`MAX_MENTIONS`].
fn mention_ids(mentions: Option<&Json>, author: &Id) -> Result<Vec<Id>, AppError> {
    let items = match mentions {
        None | Some(Json::Null) => return Ok(Vec::new()),
        Some(Json::Array(items)) if items.len() <= MAX_MENTIONS => items,
        Some(_) => {
            return Err(AppError::invalid(format!(
                "mentions must be an array of at most {MAX_MENTIONS} user ids"
            )));
        }
    };
    let mut out: Vec<Id> = Vec::with_capacity(items.len());
    for item in items {
        let id = id_field("mentions", item)?;
        if id != *author && !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewCommentPayload {
    room: Room,
    content: String,
    #[serde(default)]
    mentions: Option<Json>,
    #[serde(default)]
    parent_id: Option<Json>,
}

/// `new_comment`: stored; the room, the sending socket excluded, gets `new_comment`;
/// mentioned users get `mention`, live or on their next connect.
pub async fn new_comment<A: Adapter>(cx: &Cx<'_, A>, value: &mut Value) -> Result<Json, AppError> {
    let p: NewCommentPayload = cx.payload(value)?;
    let room = p.room;
    comments_room(cx, &room).await?;
    let name = room.to_string();
    let user = &cx.conn.user;
    let content = clean_text("content", &p.content)?;
    let mentions = mention_ids(p.mentions.as_ref(), &user.id)?;
    let store = &cx.app.state.store;
    let parent_id = match p.parent_id.as_ref().filter(|v| !v.is_null()) {
        Some(v) => {
            let id = id_field("parentId", v)?;
            let parent = store
                .get_comment(id.as_str())
                .await
                .context("reading a parent comment")?;
            if parent.is_none_or(|c| c.room != name) {
                return Err(AppError::new(Code::NotFound, "Parent comment not found"));
            }
            Some(id)
        }
        None => None,
    };
    // Mentions may wait for offline users: past the sender's offline quota the comment is
    // refused now, before it exists, rather than stored with its mentions lost. (1 KiB:
    // about the largest mention notice, a 100-character excerpt with its ids.)
    messages::check_quota(cx.app, &user.id, mentions.len(), 1024).await?;
    let mention_strings: Vec<String> = mentions.iter().map(|m| m.to_string()).collect();
    let comment = store
        .insert_comment(&NewComment {
            room: &name,
            author_id: user.id.as_str(),
            author_name: &user.name,
            content: &content,
            parent_id: parent_id.as_ref().map(Id::as_str),
            mentions: &mention_strings,
            created_at: epoch_ms(time::OffsetDateTime::now_utc()),
        })
        .await
        .context("storing a comment")?;
    let body = comment_json(&comment);
    typing::stop(cx, &room).await;
    if let Err(e) = cx.to(&room).emit("new_comment", &body).await {
        tracing::warn!(room = %name, error = %e, "could not relay a new comment");
    }
    if !mentions.is_empty() {
        let excerpt: String = content.chars().take(EXCERPT).collect();
        let notice = json!({
            "commentId": comment.id,
            "room": comment.room,
            "by": { "id": user.id, "name": &*user.name },
            "excerpt": excerpt,
            "timestamp": body["timestamp"],
        });
        let checked = messages::Quota::Checked;
        messages::deliver(cx.app, &user.id, &mentions, "mention", &notice, checked).await?;
    }
    Ok(json!({ "comment": body }))
}

/// The comment `id`, or `NOT_FOUND`.
async fn find_comment<A: Adapter>(cx: &Cx<'_, A>, id: &Id) -> Result<Comment, AppError> {
    cx.app
        .state
        .store
        .get_comment(id.as_str())
        .await
        .context("reading a comment")?
        .ok_or_else(|| AppError::new(Code::NotFound, "Comment not found"))
}

#[derive(Deserialize)]
struct EditPayload {
    id: Id,
    content: String,
}

/// `edit_comment`: the author only (not even `admin` edits another's comment); the room
/// gets `comment_updated`. Mentions are not sent again.
pub async fn edit_comment<A: Adapter>(cx: &Cx<'_, A>, value: &mut Value) -> Result<Json, AppError> {
    let p: EditPayload = cx.payload(value)?;
    let id = p.id;
    let store = &cx.app.state.store;
    let existing = find_comment(cx, &id).await?;
    if existing.author_id != cx.conn.user.id.as_str() {
        return Err(AppError::forbidden("Only the author may edit a comment"));
    }
    let content = clean_text("content", &p.content)?;
    let now = epoch_ms(time::OffsetDateTime::now_utc());
    let updated = store
        .update_comment(id.as_str(), &content, now)
        .await
        .context("updating a comment")?
        .ok_or_else(|| AppError::new(Code::NotFound, "Comment not found"))?;
    let body = comment_json(&updated);
    if let Some(room) = stored_room(&updated)
        && let Err(e) = cx.within(&room).emit("comment_updated", &body).await
    {
        tracing::warn!(room = %updated.room, error = %e, "could not relay a comment edit");
    }
    Ok(json!({ "comment": body }))
}

#[derive(Deserialize)]
struct DeletePayload {
    id: Id,
}

/// `delete_comment`: the author or `admin`; the room gets `comment_deleted`.
pub async fn delete_comment<A: Adapter>(
    cx: &Cx<'_, A>,
    value: &mut Value,
) -> Result<Json, AppError> {
    let p: DeletePayload = cx.payload(value)?;
    let id = p.id;
    let user = &cx.conn.user;
    let store = &cx.app.state.store;
    let existing = find_comment(cx, &id).await?;
    if existing.author_id != user.id.as_str() && !user.admin {
        return Err(AppError::forbidden(
            "Only the author or an admin may delete a comment",
        ));
    }
    if !store
        .delete_comment(id.as_str())
        .await
        .context("deleting a comment")?
    {
        return Err(AppError::new(Code::NotFound, "Comment not found"));
    }
    let notice = json!({
        "id": existing.id,
        "room": existing.room,
        "deletedBy": user.id,
        "timestamp": iso_now(),
    });
    if let Some(room) = stored_room(&existing)
        && let Err(e) = cx.within(&room).emit("comment_deleted", &notice).await
    {
        tracing::warn!(room = %existing.room, error = %e, "could not relay a comment deletion");
    }
    Ok(json!({ "id": existing.id }))
}

#[derive(Deserialize)]
struct ListPayload {
    room: Room,
    #[serde(default)]
    before: Option<Json>,
    #[serde(default)]
    limit: Option<Json>,
}

/// `list_comments`: newest first, `before` a comment id, `limit` 1 to 100 (capped).
pub async fn list_comments<A: Adapter>(
    cx: &Cx<'_, A>,
    value: &mut Value,
) -> Result<Json, AppError> {
    let p: ListPayload = cx.payload(value)?;
    comments_room(cx, &p.room).await?;
    let limit = match p.limit.as_ref().filter(|v| !v.is_null()) {
        None => DEFAULT_PAGE,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => n.min(u64::from(MAX_PAGE)) as u32,
            _ => return Err(AppError::invalid("limit must be a positive integer")),
        },
    };
    let before = match p.before.as_ref().filter(|v| !v.is_null()) {
        Some(v) => Some(id_field("before", v)?),
        None => None,
    };
    let page = cx
        .app
        .state
        .store
        .list_comments(&p.room.to_string(), before.as_ref().map(Id::as_str), limit)
        .await
        .context("listing comments")?;
    let (comments, has_more) = page.ok_or_else(|| {
        AppError::new(Code::NotFound, "The comment named by before was not found")
    })?;
    let comments: Vec<Json> = comments.iter().map(comment_json).collect();
    Ok(json!({ "comments": comments, "hasMore": has_more }))
}
