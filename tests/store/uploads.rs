//! Uploads (the cap, advancing, claims) and published documents.

use super::*;

pub fn upload(id: &str, user: &str, size: i64) -> Upload {
    Upload {
        id: id.into(),
        user_id: user.into(),
        project_id: "p1".into(),
        filename: "plan.pdf".into(),
        document_type: "drawing".into(),
        size,
        sha256: None,
        chunk_size: 65_536,
        received_bytes: 0,
        next_index: 0,
        created_at: 1_000,
        updated_at: 1_000,
    }
}

pub async fn uploads_cap_advance_and_claims(store: &Store) {
    for id in ["a", "b", "c"] {
        assert!(
            store
                .upload_create(&upload(id, "u1", 100_000), 3)
                .await
                .unwrap()
        );
    }
    assert!(
        !store.upload_create(&upload("d", "u1", 1), 3).await.unwrap(),
        "the fourth is refused"
    );
    assert!(
        store.upload_create(&upload("e", "u2", 1), 3).await.unwrap(),
        "per user"
    );
    let mut with_sha = upload("f", "u2", 5);
    with_sha.sha256 = Some("ab".repeat(32));
    store.upload_create(&with_sha, 3).await.unwrap();
    assert_eq!(store.upload_get("f").await.unwrap().unwrap(), with_sha);
    assert_eq!(store.upload_get("e").await.unwrap().unwrap().sha256, None);

    // Chunk 0 moves the upload on once; a second writer of chunk 0 loses the race.
    assert!(store.upload_advance("a", 0, 65_536, 2_000).await.unwrap());
    assert!(!store.upload_advance("a", 0, 65_536, 2_001).await.unwrap());
    assert!(
        !store.upload_advance("a", 5, 1, 2_001).await.unwrap(),
        "out of order"
    );
    let a = store.upload_get("a").await.unwrap().unwrap();
    assert_eq!(
        (a.next_index, a.received_bytes, a.updated_at),
        (1, 65_536, 2_000)
    );

    // One completion at a time; an expired hold can be taken again.
    assert!(
        store
            .upload_claim_completion("a", 3_000, 9_000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .upload_claim_completion("a", 4_000, 10_000)
            .await
            .unwrap()
    );
    assert!(
        store
            .upload_claim_completion("a", 9_500, 20_000)
            .await
            .unwrap()
    );
    store.upload_release_completion("a").await.unwrap();
    assert!(
        store
            .upload_claim_completion("a", 9_600, 20_000)
            .await
            .unwrap()
    );

    // Abandoned: nothing since `before`, and not being completed.
    let mut old = store.uploads_abandoned(2_500, 9_700, 10).await.unwrap();
    old.sort();
    assert_eq!(old, ["b", "c", "e", "f"], "a is held by its completion");
    assert!(store.upload_delete("b").await.unwrap());
    assert!(!store.upload_delete("b").await.unwrap());
    assert!(store.upload_get("b").await.unwrap().is_none());
}

pub async fn documents_publish_and_list(store: &Store) {
    store
        .upload_create(&upload("up", "u1", 10), 3)
        .await
        .unwrap();
    let doc = |id: &str, project: &str, at: i64| Document {
        id: id.into(),
        project_id: project.into(),
        filename: "plan.pdf".into(),
        document_type: "drawing".into(),
        size: 10,
        sha256: "00".repeat(32),
        uploaded_by: "u1".into(),
        created_at: at,
    };
    store
        .document_publish(&doc("d1", "p1", 5), "up")
        .await
        .unwrap();
    assert!(
        store.upload_get("up").await.unwrap().is_none(),
        "the upload ends with it"
    );
    store
        .document_publish(&doc("d2", "p1", 5), "none")
        .await
        .unwrap();
    store
        .document_publish(&doc("d3", "p2", 6), "none")
        .await
        .unwrap();
    assert_eq!(
        store.document_get("d1").await.unwrap().unwrap(),
        doc("d1", "p1", 5)
    );
    assert!(store.document_get("zz").await.unwrap().is_none());
    let ids = |v: Vec<Document>| v.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.documents_list("p1", 10).await.unwrap()),
        ["d2", "d1"],
        "newest first"
    );
    assert_eq!(ids(store.documents_list("p1", 1).await.unwrap()), ["d2"]);
    assert!(
        store
            .document_publish(&doc("d1", "p1", 7), "none")
            .await
            .is_err(),
        "ids are unique"
    );
}
