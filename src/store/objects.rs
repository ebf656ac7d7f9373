//! Document bytes, through the object_store crate: a local folder by default
//! (`DOCUMENTS_DIR`), or any store object_store can open from a URL (`DOCUMENTS_URL`,
//! such as `s3://bucket/prefix` with the usual `AWS_*` variables).
//!
//! Layout: `uploads/{uploadId}/{index}` holds each received chunk of an upload in
//! progress, written as it arrives, so that any instance can continue the upload and no
//! instance holds a document in memory; `documents/{documentId}` holds a complete
//! document, assembled from the chunks at completion.

use std::{ops::Range, path::Path as FsPath, sync::Arc};

use anyhow::Context;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::{
    ObjectStore, WriteMultipart, local::LocalFileSystem, path::Path, prefix::PrefixStore,
};
use sha2::{Digest, Sha256};

/// Bytes buffered per part while a document is assembled (S3's smallest part size).
const PART_SIZE: usize = 5 * 1024 * 1024;

/// Where document bytes are kept.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    /// What `/ready` and logs call it.
    name: String,
}

impl Objects {
    /// Where `config` keeps documents: `DOCUMENTS_URL`, else `DOCUMENTS_DIR`, else
    /// `DATA_DIR/documents`.
    pub fn from_config(config: &crate::config::Config) -> anyhow::Result<Objects> {
        match &config.documents_url {
            Some(url) if !url.trim().is_empty() => Objects::from_url(url),
            _ => Objects::local(
                &config
                    .documents_dir
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("documents")),
            ),
        }
    }

    /// The local folder `dir` (created when missing).
    pub fn local(dir: &FsPath) -> anyhow::Result<Objects> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the documents folder {}", dir.display()))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .with_context(|| format!("cannot open the documents folder {}", dir.display()))?;
        Ok(Objects {
            store: Arc::new(store),
            name: format!("folder {}", dir.display()),
        })
    }

    /// The store a URL names; `AWS_*`, `GOOGLE_*` and `AZURE_*` variables are passed to it
    /// as options.
    pub fn from_url(url: &str) -> anyhow::Result<Objects> {
        let parsed = url::Url::parse(url).context("DOCUMENTS_URL is not a URL")?;
        let options = std::env::vars().filter_map(|(k, v)| {
            let lower = k.to_ascii_lowercase();
            ["aws_", "google_", "azure_"]
                .iter()
                .any(|p| lower.starts_with(p))
                .then_some((lower, v))
        });
        let (store, prefix) = object_store::parse_url_opts(&parsed, options)
            .context("cannot open the document store DOCUMENTS_URL")?;
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            Arc::from(store)
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        };
        Ok(Objects {
            store,
            name: format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or("")),
        })
    }

    /// A description for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn chunk_path(upload_id: &str, index: i64) -> Path {
        // Zero-padded, so that listing order is chunk order.
        Path::from(format!("uploads/{upload_id}/{index:010}"))
    }

    fn document_path(document_id: &str) -> Path {
        Path::from(format!("documents/{document_id}"))
    }

    /// Whether the store answers: a lookup of an object that does not exist.
    pub async fn ping(&self) -> anyhow::Result<()> {
        match self.store.head(&Path::from("ready-check")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e).context("the document store does not answer"),
        }
    }

    /// Stores chunk `index` of an upload (replacing an earlier copy of it).
    pub async fn put_chunk(&self, upload_id: &str, index: i64, data: Bytes) -> anyhow::Result<()> {
        self.store
            .put(&Self::chunk_path(upload_id, index), data.into())
            .await
            .context("cannot store an upload chunk")?;
        Ok(())
    }

    /// Assembles chunks `0..chunks` of an upload into the document `document_id`, one
    /// chunk in memory at a time; returns the SHA-256 (lower-case hex) and the size.
    pub async fn assemble(
        &self,
        upload_id: &str,
        chunks: i64,
        document_id: &str,
    ) -> anyhow::Result<(String, u64)> {
        let target = Self::document_path(document_id);
        let upload = self
            .store
            .put_multipart(&target)
            .await
            .context("cannot start writing a document")?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut hash = Sha256::new();
        let mut size = 0u64;
        for index in 0..chunks {
            let read = async {
                self.store
                    .get(&Self::chunk_path(upload_id, index))
                    .await?
                    .bytes()
                    .await
            };
            let bytes = match read.await {
                Ok(b) => b,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(e).context("cannot read an upload chunk");
                }
            };
            hash.update(&bytes);
            size += bytes.len() as u64;
            writer
                .wait_for_capacity(2)
                .await
                .context("cannot write a document")?;
            writer.put(bytes);
        }
        writer
            .finish()
            .await
            .context("cannot finish writing a document")?;
        Ok((hex::encode(hash.finalize()), size))
    }

    /// Removes every chunk of an upload.
    pub async fn delete_upload(&self, upload_id: &str) -> anyhow::Result<()> {
        let prefix = Path::from(format!("uploads/{upload_id}"));
        let paths = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .boxed();
        self.store
            .delete_stream(paths)
            .try_collect::<Vec<_>>()
            .await
            .context("cannot remove an upload's chunks")?;
        Ok(())
    }

    /// Removes a document's bytes (a missing one is not an error).
    pub async fn delete_document(&self, document_id: &str) -> anyhow::Result<()> {
        match self.store.delete(&Self::document_path(document_id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e).context("cannot remove a document"),
        }
    }

    /// Bytes `range` of a document.
    pub async fn read(&self, document_id: &str, range: Range<u64>) -> anyhow::Result<Bytes> {
        self.store
            .get_range(&Self::document_path(document_id), range)
            .await
            .context("cannot read a document")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_assemble_into_a_document_and_uploads_clean_up() {
        let dir = std::env::temp_dir().join(format!("trestle-objects-{}", std::process::id()));
        let o = Objects::local(&dir).unwrap();
        o.ping().await.unwrap();
        o.put_chunk("u1", 0, Bytes::from_static(b"hello "))
            .await
            .unwrap();
        o.put_chunk("u1", 1, Bytes::from_static(b"world"))
            .await
            .unwrap();
        let (sha, size) = o.assemble("u1", 2, "d1").await.unwrap();
        assert_eq!(size, 11);
        assert_eq!(sha, hex::encode(Sha256::digest(b"hello world")));
        assert_eq!(&o.read("d1", 6..11).await.unwrap()[..], b"world");
        o.delete_upload("u1").await.unwrap();
        assert!(o.assemble("u1", 1, "d2").await.is_err(), "chunks are gone");
        o.delete_document("d1").await.unwrap();
        o.delete_document("d1").await.unwrap();
        assert!(o.read("d1", 0..1).await.is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
