//! Uploaded artifacts: content-addressed files in Postgres large objects, written in chunks
//! inside one transaction that commits only when the bytes hash to the digest they were
//! uploaded under, and read back in chunks for agents.

use super::{Result, Store, StoreError, record};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::postgres::types::Oid;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ArtifactRow {
    pub sha256: String,
    pub size: i64,
}

/// An upload in progress: dropping it without `finish` stores nothing.
pub struct ArtifactUpload {
    tx: Transaction<'static, Postgres>,
    sha256: String,
    content: Oid,
    size: i64,
    hasher: Sha256,
}

impl Store {
    pub async fn artifact(&self, sha256: &str) -> Result<ArtifactRow> {
        sqlx::query_as::<_, ArtifactRow>("SELECT sha256, size FROM artifacts WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no uploaded artifact sha256:{sha256}")))
    }

    /// The digests among `digests` that have not been uploaded.
    pub async fn missing_artifacts(&self, digests: &[String]) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT d FROM unnest($1::text[]) AS d WHERE NOT EXISTS (SELECT 1 FROM artifacts WHERE sha256 = d)",
        )
        .bind(digests)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Starts storing the file with this digest.
    pub async fn begin_artifact(&self, sha256: &str) -> Result<ArtifactUpload> {
        let mut tx = self.begin().await?;
        let content: Oid = sqlx::query_scalar("SELECT lo_create(0)").fetch_one(&mut *tx).await?;
        Ok(ArtifactUpload { tx, sha256: sha256.to_string(), content, size: 0, hasher: Sha256::new() })
    }

    /// `len` bytes of the artifact's content from `offset` (fewer at its end).
    pub async fn artifact_chunk(&self, sha256: &str, offset: i64, len: i32) -> Result<Vec<u8>> {
        sqlx::query_scalar("SELECT lo_get(content, $2, $3) FROM artifacts WHERE sha256 = $1")
            .bind(sha256)
            .bind(offset)
            .bind(len)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no uploaded artifact sha256:{sha256}")))
    }
}

impl ArtifactUpload {
    pub fn size(&self) -> i64 {
        self.size
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        sqlx::query("SELECT lo_put($1, $2, $3)")
            .bind(self.content)
            .bind(self.size)
            .bind(chunk)
            .execute(&mut *self.tx)
            .await?;
        self.hasher.update(chunk);
        self.size += chunk.len() as i64;
        Ok(())
    }

    /// Stores the artifact if the bytes match its digest; an artifact already stored (same
    /// digest, so the same bytes) is kept and this copy dropped. True when it is new.
    pub async fn finish(mut self, actor: &str, team: Option<Uuid>) -> Result<bool> {
        let actual = hex::encode(self.hasher.finalize());
        if actual != self.sha256 {
            return Err(StoreError::Invalid(format!(
                "sha256: the body's SHA-256 is {actual}, not {} as the URL says",
                self.sha256
            )));
        }
        let inserted = sqlx::query(
            "INSERT INTO artifacts (sha256, size, content) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(&self.sha256)
        .bind(self.size)
        .bind(self.content)
        .execute(&mut *self.tx)
        .await?
        .rows_affected()
            == 1;
        if !inserted {
            // Rolling back also drops the large object written by this upload.
            self.tx.rollback().await?;
            return Ok(false);
        }
        let detail = serde_json::json!({"size": self.size});
        record(&mut self.tx, actor, "artifact.uploaded", &self.sha256, team, detail).await?;
        self.tx.commit().await?;
        Ok(true)
    }
}
