//! Databases for one demo or one test: created fresh, dropped afterwards.

use anyhow::{Context, Result};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use std::str::FromStr;

/// A database created on the server of `server_url`; `url` points at it.
pub struct TempDatabase {
    server: PgConnectOptions,
    pub name: String,
    pub url: String,
    keep: bool,
}

impl TempDatabase {
    /// Creates database `name` (dropping an older one of that name first).
    pub async fn create(server_url: &str, name: &str) -> Result<TempDatabase> {
        let server =
            PgConnectOptions::from_str(server_url).with_context(|| format!("bad database URL {server_url:?}"))?;
        let mut connection = PgConnection::connect_with(&server)
            .await
            .with_context(|| format!("cannot reach PostgreSQL at {server_url}"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
            .execute(&mut connection)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).execute(&mut connection).await?;
        connection.close().await?;
        let url = match server_url.rsplit_once('/') {
            Some((base, last)) if !last.contains(':') && !last.contains('@') => format!("{base}/{name}"),
            _ => format!("{}/{name}", server_url.trim_end_matches('/')),
        };
        Ok(TempDatabase { server, name: name.to_string(), url, keep: false })
    }

    /// Keep the database after drop (the demo keeps its state for inspection).
    pub fn keep(mut self) -> Self {
        self.keep = true;
        self
    }

    pub async fn drop_now(self) -> Result<()> {
        let mut connection = PgConnection::connect_with(&self.server).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name)))
            .execute(&mut connection)
            .await?;
        Ok(())
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // Drop runs outside async code paths too (test panics): use a short-lived runtime on
        // its own thread so cleanup happens even on failure.
        let server = self.server.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut connection = PgConnection::connect_with(&server).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
                    .execute(&mut connection)
                    .await
                    .ok()
            })
        })
        .join();
    }
}
