//! `canopy serve`: wires the store, the HTTP API and the controllers together, and shuts
//! them down gracefully on one signal.

use crate::controllers::{self, ControllerConfig};
use crate::http::{self, AppState};
use crate::store::Store;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long in-flight requests may go on after the stop signal.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct ServeConfig {
    pub heartbeat_interval: Duration,
    pub controllers: ControllerConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig { heartbeat_interval: Duration::from_secs(1), controllers: ControllerConfig::default() }
    }
}

/// Serves the API on `listener` (and the apps' entry point on `entry`, when given) until
/// `shutdown` resolves, then stops accepting, finishes in-flight requests and stops the
/// controllers.
pub async fn run(
    listener: TcpListener,
    entry: Option<TcpListener>,
    store: Store,
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let controllers = tokio::spawn(controllers::run(store.clone(), config.controllers.clone(), stop_rx.clone()));
    let entry = match entry {
        Some(listener) => {
            let router = http::entry::router(std::sync::Arc::new(
                http::entry::Entry::new(store.clone()).map_err(std::io::Error::other)?,
            ));
            let mut stop = stop_rx;
            Some(tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
            }))
        }
        None => None,
    };
    let agents = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(std::io::Error::other)?;
    let state = AppState {
        store,
        heartbeat_interval: config.heartbeat_interval,
        agents,
        buyable: config.controllers.buyable.subscribe(),
    };
    // Graceful: in-flight requests may finish, but a long one (a followed log) is cut after
    // `DRAIN`, so the service always stops.
    let (stopping_tx, mut stopping) = watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let serve = axum::serve(listener, http::router(state)).with_graceful_shutdown(signal);
    let result = tokio::select! {
        result = std::future::IntoFuture::into_future(serve) => result,
        _ = async {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(DRAIN).await;
        } => {
            tracing::warn!("requests still open {DRAIN:?} after the stop signal were cut");
            Ok(())
        }
    };
    let _ = stop_tx.send(true);
    let _ = controllers.await;
    if let Some(entry) = entry {
        let _ = entry.await;
    }
    result
}
