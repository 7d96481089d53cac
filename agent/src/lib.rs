//! canopy-agent: the node agent.
//!
//! It joins the pool with a single-use join token, then heartbeats: each heartbeat carries the
//! actual state of its tasks and brings back the desired set, which the supervisor applies.
//! Tasks run as processes in their own cgroups (v1 or v2) and keep running when the control
//! service is unreachable or the agent itself restarts. The agent makes no placement decisions
//! and keeps no state the control service does not also have, except what re-adoption needs.

pub mod api;
pub mod artifacts;
pub mod cgroup;
pub mod control;
pub mod fetch;
pub mod health;
pub mod image;
pub mod launch;
pub mod logs;
pub mod meter;
pub mod prepare;
pub mod supervisor;

use artifacts::ArtifactCache;
use canopy_core::Resources;
use canopy_core::wire::{HeartbeatRequest, JoinRequest, PROTOCOL_VERSION};
use control::{ControlClient, Credentials};
use image::ImageStore;
use image::runtime::OciRuntime;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use supervisor::{Context, Supervisor};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub name: String,
    pub control_url: String,
    pub join_token: Option<String>,
    pub state_dir: PathBuf,
    pub address: String,
    pub capacity: Resources,
    pub labels: BTreeMap<String, String>,
    pub cgroup_parent: PathBuf,
    /// Budgets of the artifact cache and the image store, and how long an unused entry stays.
    pub artifact_cache_bytes: u64,
    pub image_store_bytes: u64,
    pub cache_max_age: Duration,
    /// The OCI runtime binary; detected (crun, else runc) when unset.
    pub oci_runtime: Option<PathBuf>,
}

/// Runs the agent until `shutdown` resolves. Tasks are left running on shutdown: an agent
/// restart must not disturb them.
pub async fn run(
    config: AgentConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let cgroups = cgroup::Cgroups::detect()?;
    std::fs::create_dir_all(config.state_dir.join("tasks"))?;
    let endpoint = listener.local_addr()?.to_string();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let fetch_http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()?;
    let runtime = OciRuntime::detect(config.oci_runtime.as_deref(), config.state_dir.join("oci"));
    let agent_token = Arc::new(RwLock::new(None));
    let control = ControlClient::new(http.clone(), &config.control_url);
    let control_key = Arc::new(RwLock::new(None));
    let api_state = api::ApiState { state_dir: config.state_dir.clone(), control_key: control_key.clone() };
    let server = tokio::spawn(async move { axum::serve(listener, api::router(api_state)).await });

    let ctx = Arc::new(Context {
        cgroup_parent: config.cgroup_parent.clone(),
        state_dir: config.state_dir.clone(),
        address: config.address.clone(),
        http,
        fetch_http,
        artifacts: ArtifactCache {
            dir: config.state_dir.join("cache").join("artifacts"),
            max_bytes: config.artifact_cache_bytes,
            max_age: config.cache_max_age,
        },
        images: ImageStore {
            root: config.state_dir.join("images"),
            max_bytes: config.image_store_bytes,
            max_age: config.cache_max_age,
        },
        runtime,
        control_url: config.control_url.clone(),
        agent_token: agent_token.clone(),
        cgroups,
        ended: tokio::sync::Notify::new(),
    });
    let mut supervisor = Supervisor::new(ctx.clone());
    let adopted = supervisor.adopt_existing();
    let oci_runtime = ctx.runtime.as_ref().map(OciRuntime::name);
    tracing::info!(name = %config.name, cgroup_version = ctx.cgroups.version(), adopted, %endpoint, ?oci_runtime, "agent started");

    tokio::pin!(shutdown);
    let mut credentials: Option<Credentials> = Credentials::load(&config.state_dir)?;
    let mut interval = Duration::from_secs(1);
    loop {
        if credentials.is_none() {
            credentials = join(&control, &config, &endpoint, ctx.cgroups.version()).await;
        }
        if let Some(creds) = &credentials {
            if let Ok(mut key) = control_key.write() {
                *key = Some(creds.join.control_key.clone());
            }
            if let Ok(mut token) = agent_token.write() {
                *token = Some(creds.join.agent_token.clone());
            }
            let tasks = supervisor.reports();
            let sent: HashSet<_> = tasks.iter().filter(|t| t.state.is_final()).map(|t| t.task_id).collect();
            let request = HeartbeatRequest { protocol: PROTOCOL_VERSION, agent_endpoint: endpoint.clone(), tasks };
            match control.heartbeat(&creds.join.agent_token, &request).await {
                Ok(response) => {
                    interval = Duration::from_millis(response.heartbeat_interval_ms.max(100));
                    supervisor.reconcile(response.desired, &sent);
                }
                // Tasks keep running; the next heartbeat resends their state.
                Err(error) => tracing::warn!(%error, "heartbeat failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            // A task ended: report it now (after a moment, so tasks ending together go in
            // one heartbeat), freeing its slot for the work waiting on it.
            _ = ctx.ended.notified() => tokio::time::sleep(Duration::from_millis(25)).await,
            _ = &mut shutdown => break,
        }
    }
    server.abort();
    tracing::info!("agent stopped; its tasks keep running");
    Ok(())
}

async fn join(
    control: &ControlClient,
    config: &AgentConfig,
    endpoint: &str,
    cgroup_version: u8,
) -> Option<Credentials> {
    let Some(join_token) = &config.join_token else {
        tracing::error!("not joined yet and no join token given");
        return None;
    };
    let request = JoinRequest {
        protocol: PROTOCOL_VERSION,
        join_token: join_token.clone(),
        name: config.name.clone(),
        address: config.address.clone(),
        agent_endpoint: endpoint.to_string(),
        capacity: config.capacity,
        cgroup_version,
        labels: config.labels.clone(),
    };
    match control.join(&request).await {
        Ok(join) => {
            tracing::info!(machine = %join.machine_id, "joined the pool");
            let credentials = Credentials { control_url: config.control_url.clone(), join };
            if let Err(error) = credentials.save(&config.state_dir) {
                tracing::error!(%error, "cannot save credentials; a restart will need a new join token");
            }
            Some(credentials)
        }
        Err(error) => {
            tracing::warn!(%error, "join failed");
            None
        }
    }
}
