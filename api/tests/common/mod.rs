//! What the store-level integration tests share: a database of their own.

use canopy_api::store::Store;
use sqlx::Connection;

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
