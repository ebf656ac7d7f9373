//! Comments: create, read, edit, delete, and pages of a room's comments.

use super::*;

/// A comment in `room` by u1 with the given content.
pub async fn add(store: &Store, room: &str, content: &str, at: i64) -> Comment {
    store
        .insert_comment(&NewComment {
            room,
            author_id: "u1",
            author_name: "User One",
            content,
            parent_id: None,
            mentions: &[],
            created_at: at,
        })
        .await
        .unwrap()
}

pub fn contents(comments: &[Comment]) -> Vec<&str> {
    comments.iter().map(|c| c.content.as_str()).collect()
}

pub async fn comment_crud(store: &Store) {
    let mentions = vec!["u2".to_owned(), "u.3@x".to_owned()];
    let content = "héllo 'quotes' \"double\" 🚧 $1 ?1 -- ;";
    let c = store
        .insert_comment(&NewComment {
            room: ROOM,
            author_id: "u1",
            author_name: "User One",
            content,
            parent_id: None,
            mentions: &mentions,
            created_at: 1_700_000_000_123,
        })
        .await
        .unwrap();
    assert_eq!(c.id.len(), 36, "a UUID: {}", c.id);
    assert_eq!(c.room, ROOM);
    assert_eq!(c.content, content);
    assert_eq!(c.mentions, mentions);
    assert_eq!(c.edited_at, None);
    assert_eq!(store.get_comment(&c.id).await.unwrap().as_ref(), Some(&c));

    let reply = store
        .insert_comment(&NewComment {
            room: ROOM,
            author_id: "u2",
            author_name: "u2",
            content: "reply",
            parent_id: Some(&c.id),
            mentions: &[],
            created_at: 1_700_000_000_200,
        })
        .await
        .unwrap();
    assert_ne!(reply.id, c.id);
    let read = store.get_comment(&reply.id).await.unwrap().unwrap();
    assert_eq!(read, reply);
    assert_eq!(read.parent_id.as_deref(), Some(c.id.as_str()));
    assert!(read.mentions.is_empty());

    assert_eq!(store.get_comment("no-such-id").await.unwrap(), None);

    let edited = store
        .update_comment(&c.id, "edited", 1_700_000_001_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        edited,
        Comment {
            content: "edited".into(),
            edited_at: Some(1_700_000_001_000),
            ..c.clone()
        }
    );
    assert_eq!(store.get_comment(&c.id).await.unwrap(), Some(edited));
    assert_eq!(
        store.update_comment("no-such-id", "x", 1).await.unwrap(),
        None
    );

    assert!(store.delete_comment(&c.id).await.unwrap());
    assert_eq!(store.get_comment(&c.id).await.unwrap(), None);
    assert!(!store.delete_comment(&c.id).await.unwrap());
    // The reply stays, still naming its parent.
    assert_eq!(store.get_comment(&reply.id).await.unwrap(), Some(reply));
}

pub async fn comment_pages(store: &Store) {
    // Equal timestamps everywhere: the order must come from insertion alone.
    let mut room = Vec::new();
    let mut other = Vec::new();
    for i in 0..5 {
        room.push(add(store, ROOM, &format!("c{i}"), 1000).await);
        other.push(add(store, OTHER_ROOM, &format!("o{i}"), 1000).await);
    }

    let (page, more) = store.list_comments(ROOM, None, 2).await.unwrap().unwrap();
    assert_eq!(contents(&page), ["c4", "c3"]);
    assert!(more);
    assert_eq!(page[0], room[4], "whole comments are returned");

    let (page, more) = store
        .list_comments(ROOM, Some(&room[3].id), 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contents(&page), ["c2", "c1"]);
    assert!(more);

    let (page, more) = store
        .list_comments(ROOM, Some(&room[1].id), 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contents(&page), ["c0"]);
    assert!(!more);

    let (page, more) = store
        .list_comments(ROOM, Some(&room[0].id), 2)
        .await
        .unwrap()
        .unwrap();
    assert!(page.is_empty());
    assert!(!more);

    // Exactly the rest: no more.
    let (page, more) = store.list_comments(ROOM, None, 5).await.unwrap().unwrap();
    assert_eq!(contents(&page), ["c4", "c3", "c2", "c1", "c0"]);
    assert!(!more);
    let (page, more) = store.list_comments(ROOM, None, 100).await.unwrap().unwrap();
    assert_eq!(page.len(), 5);
    assert!(!more);
    let (page, more) = store.list_comments(ROOM, None, 0).await.unwrap().unwrap();
    assert!(page.is_empty());
    assert!(more);

    // An unknown `before`, or one of another room: NOT_FOUND for the caller.
    assert_eq!(
        store
            .list_comments(ROOM, Some("no-such-id"), 10)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .list_comments(ROOM, Some(&other[2].id), 10)
            .await
            .unwrap(),
        None
    );
    let (page, more) = store
        .list_comments("task:empty:comments", None, 10)
        .await
        .unwrap()
        .unwrap();
    assert!(page.is_empty());
    assert!(!more);

    // Deleted comments leave the pages; a deleted cursor is unknown.
    assert!(store.delete_comment(&room[3].id).await.unwrap());
    assert_eq!(
        store
            .list_comments(ROOM, Some(&room[3].id), 10)
            .await
            .unwrap(),
        None
    );
    let (page, more) = store
        .list_comments(ROOM, Some(&room[4].id), 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contents(&page), ["c2", "c1", "c0"]);
    assert!(!more);

    // A comment added later with an older timestamp is still the newest.
    add(store, ROOM, "late", 1).await;
    let (page, _) = store.list_comments(ROOM, None, 1).await.unwrap().unwrap();
    assert_eq!(contents(&page), ["late"]);

    let (page, more) = store
        .list_comments(OTHER_ROOM, None, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contents(&page), ["o4", "o3", "o2", "o1", "o0"]);
    assert!(!more);
}
