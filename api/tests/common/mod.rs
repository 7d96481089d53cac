//! What the store-level integration tests share: a database of their own.

use canopy_api::store::Store;
use canopy_core::Resources;
use canopy_core::schedule::Catalog;
use canopy_core::wire::{JoinRequest, PROTOCOL_VERSION};
use sqlx::Connection;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A fresh, migrated database, dropped when the test ends (also on failure).
pub struct TestDb {
    server: String,
    name: String,
}

impl TestDb {
    /// `prefix` names the test file's databases (`<prefix>_<uuid>`).
    pub async fn create(prefix: &str) -> (TestDb, Store) {
        let server = std::env::var("CANOPY_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let mut connection = sqlx::PgConnection::connect(&server).await.expect("postgres");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut connection)
            .await
            .expect("create");
        let db = TestDb { server, name };
        let store = Store::connect(&db.url()).await.expect("connect and migrate");
        (db, store)
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.server.rsplit_once('/').map_or(self.server.as_str(), |(base, _)| base), self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut connection = sqlx::PgConnection::connect(&server).await.ok()?;
                let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut connection).await.ok()
            })
        })
        .join();
    }
}

/// Joins a machine of 1 cpu / 1 GiB named `name` by hand, with these labels (`provider=...`
/// names its provider); returns its id.
pub async fn join(store: &Store, name: &str, labels: &[(&str, &str)]) -> uuid::Uuid {
    let token = store.create_join_token("test", chrono::Duration::hours(1)).await.expect("join token");
    let request = JoinRequest {
        protocol: PROTOCOL_VERSION,
        join_token: token,
        name: name.into(),
        address: "127.0.0.1".into(),
        agent_endpoint: "127.0.0.1:1".into(),
        capacity: Resources::new(1000, 1 << 30),
        cgroup_version: 1,
        labels: labels.iter().map(|&(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    };
    store.join(&request).await.expect("join").machine_id
}

/// Nothing to buy: placement uses only the machines there are.
pub fn no_catalog() -> Arc<Catalog> {
    Arc::new(Default::default())
}
