//! Comments of `…:comments` rooms: insert, read, edit, delete, and newest-first pages.
//!
//! A room's comments are ordered by `seq`, which only grows, rather than by `created_at`,
//! which repeats within a millisecond and comes from several instances' clocks. Pages
//! use the `seq` of the `before` comment as their cursor, so a page stays stable while
//! comments are added or deleted.

use anyhow::Context;

use super::{Store, new_id};

/// The columns of a [`Comment`], in [`CommentRow`]'s order.
macro_rules! columns {
    () => {
        "id, room, author_id, author_name, content, parent_id, mentions, created_at, edited_at"
    };
}

/// A stored comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    /// UUID made by the store.
    pub id: String,
    /// The `…:comments` room.
    pub room: String,
    /// The author's user id.
    pub author_id: String,
    /// The author's display name when the comment was written.
    pub author_name: String,
    /// The text, already trimmed and sanitised by the caller.
    pub content: String,
    /// The comment this one answers.
    pub parent_id: Option<String>,
    /// Mentioned user ids.
    pub mentions: Vec<String>,
    /// Creation time, epoch milliseconds.
    pub created_at: i64,
    /// Last edit, epoch milliseconds.
    pub edited_at: Option<i64>,
}

/// A comment to store; the store gives it its id.
#[derive(Debug, Clone, Copy)]
pub struct NewComment<'a> {
    /// The `…:comments` room.
    pub room: &'a str,
    /// The author's user id.
    pub author_id: &'a str,
    /// The author's display name.
    pub author_name: &'a str,
    /// The text, already trimmed and sanitised.
    pub content: &'a str,
    /// The comment this one answers (the caller checks that it exists).
    pub parent_id: Option<&'a str>,
    /// Mentioned user ids, deduplicated by the caller.
    pub mentions: &'a [String],
    /// Creation time, epoch milliseconds.
    pub created_at: i64,
}

/// A comment as read, with mentions still JSON text.
#[derive(sqlx::FromRow)]
struct CommentRow {
    id: String,
    room: String,
    author_id: String,
    author_name: String,
    content: String,
    parent_id: Option<String>,
    mentions: String,
    created_at: i64,
    edited_at: Option<i64>,
}

impl TryFrom<CommentRow> for Comment {
    type Error = anyhow::Error;

    fn try_from(row: CommentRow) -> anyhow::Result<Comment> {
        let mentions = serde_json::from_str(&row.mentions)
            .context("stored mentions are not a JSON array of strings")?;
        Ok(Comment {
            id: row.id,
            room: row.room,
            author_id: row.author_id,
            author_name: row.author_name,
            content: row.content,
            parent_id: row.parent_id,
            mentions,
            created_at: row.created_at,
            edited_at: row.edited_at,
        })
    }
}

impl Store {
    /// Stores a new comment and returns it with its id.
    pub async fn insert_comment(&self, new: &NewComment<'_>) -> anyhow::Result<Comment> {
        let id = new_id()?;
        let mentions = serde_json::to_string(new.mentions).context("cannot encode mentions")?;
        sqlx::query(
            "INSERT INTO comments \
             (id, room, author_id, author_name, content, parent_id, mentions, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id.as_str())
        .bind(new.room)
        .bind(new.author_id)
        .bind(new.author_name)
        .bind(new.content)
        .bind(new.parent_id)
        .bind(mentions.as_str())
        .bind(new.created_at)
        .execute(&self.pool)
        .await
        .context("cannot insert a comment")?;
        Ok(Comment {
            id,
            room: new.room.to_owned(),
            author_id: new.author_id.to_owned(),
            author_name: new.author_name.to_owned(),
            content: new.content.to_owned(),
            parent_id: new.parent_id.map(str::to_owned),
            mentions: new.mentions.to_vec(),
            created_at: new.created_at,
            edited_at: None,
        })
    }

    /// The comment with this id, if any.
    pub async fn get_comment(&self, id: &str) -> anyhow::Result<Option<Comment>> {
        let row: Option<CommentRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM comments WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .context("cannot read a comment")?;
        row.map(Comment::try_from).transpose()
    }

    /// Replaces a comment's content and sets its edit time; the updated comment, or
    /// `None` when there is no comment with this id.
    pub async fn update_comment(
        &self,
        id: &str,
        content: &str,
        edited_at: i64,
    ) -> anyhow::Result<Option<Comment>> {
        let row: Option<CommentRow> = sqlx::query_as(concat!(
            "UPDATE comments SET content = $1, edited_at = $2 WHERE id = $3 RETURNING ",
            columns!()
        ))
        .bind(content)
        .bind(edited_at)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .context("cannot update a comment")?;
        row.map(Comment::try_from).transpose()
    }

    /// Deletes a comment; whether there was one. Replies keep their `parent_id`.
    pub async fn delete_comment(&self, id: &str) -> anyhow::Result<bool> {
        let done = sqlx::query("DELETE FROM comments WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .context("cannot delete a comment")?;
        Ok(done.rows_affected() > 0)
    }

    /// A page of `room`'s comments, newest first: at most `limit` comments older than the
    /// comment `before` (or the newest ones without it), and whether older ones remain.
    ///
    /// `None` when `before` is not a comment of `room` (the caller answers `NOT_FOUND`).
    pub async fn list_comments(
        &self,
        room: &str,
        before: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<Option<(Vec<Comment>, bool)>> {
        let below = match before {
            None => i64::MAX,
            Some(before) => {
                let seq: Option<i64> =
                    sqlx::query_scalar("SELECT seq FROM comments WHERE id = $1 AND room = $2")
                        .bind(before)
                        .bind(room)
                        .fetch_optional(&self.pool)
                        .await
                        .context("cannot read the cursor comment of a comment page")?;
                match seq {
                    Some(seq) => seq,
                    None => return Ok(None),
                }
            }
        };
        // One more than asked tells whether more remain.
        let rows: Vec<CommentRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM comments WHERE room = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
        ))
        .bind(room)
        .bind(below)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .context("cannot list comments")?;
        let has_more = rows.len() > limit as usize;
        let comments = rows
            .into_iter()
            .take(limit as usize)
            .map(Comment::try_from)
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Some((comments, has_more)))
    }
}
