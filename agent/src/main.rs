//! `canopy-agent`: run on each machine of the pool.

use canopy_core::Resources;
use canopy_core::quantity::{Bytes, Millis};
use clap::Parser;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "canopy-agent", version, about = "Canopy node agent")]
struct Args {
    /// This machine's name in the pool.
    #[arg(long, env = "CANOPY_AGENT_NAME")]
    name: String,
    /// Control service URL.
    #[arg(long, env = "CANOPY_CONTROL_URL")]
    control_url: String,
    /// Single-use join token (only needed until the agent has joined).
    #[arg(long, env = "CANOPY_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// Directory for credentials, task records and task sandboxes.
    #[arg(long, env = "CANOPY_STATE_DIR")]
    state_dir: PathBuf,
    /// Address tasks bind to and are reached at.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
    /// Where the agent's own API listens (default: the address, any free port).
    #[arg(long)]
    listen: Option<String>,
    /// Milli-cpus offered to tasks.
    #[arg(long)]
    cpu: u64,
    /// Memory offered to tasks, e.g. 2Gi.
    #[arg(long, value_parser = |s: &str| Bytes::parse(s))]
    memory: Bytes,
    /// Labels as key=value, repeatable (provider=..., zone=...).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Parent cgroup of task cgroups, relative to the cgroup root. (Not named `tasks`: that is a
    /// control file in cgroup v1.)
    #[arg(long, default_value = "canopy/workloads")]
    cgroup_parent: PathBuf,
    /// Size budget of the artifact cache (downloaded files shared by tasks).
    #[arg(long, default_value = "1Gi", value_parser = |s: &str| Bytes::parse(s))]
    artifact_cache_size: Bytes,
    /// Size budget of the image store (layers of images no task runs are evicted beyond it).
    #[arg(long, default_value = "10Gi", value_parser = |s: &str| Bytes::parse(s))]
    image_store_size: Bytes,
    /// How long an unused artifact or image stays cached, e.g. 24h.
    #[arg(long, default_value = "24h", value_parser = |s: &str| Millis::parse(s))]
    cache_max_age: Millis,
    /// OCI runtime for image tasks (default: crun, else runc, from PATH).
    #[arg(long, env = "CANOPY_OCI_RUNTIME")]
    oci_runtime: Option<PathBuf>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not key=value"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let listen = args.listen.clone().unwrap_or_else(|| format!("{}:0", args.address));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let config = canopy_agent::AgentConfig {
        name: args.name,
        control_url: args.control_url,
        join_token: args.join_token,
        state_dir: args.state_dir,
        address: args.address,
        capacity: Resources::new(args.cpu, args.memory.0),
        labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
        cgroup_parent: args.cgroup_parent,
        artifact_cache_bytes: args.artifact_cache_size.0,
        image_store_bytes: args.image_store_size.0,
        cache_max_age: args.cache_max_age.as_std(),
        oci_runtime: args.oci_runtime,
    };
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    canopy_agent::run(config, listener, shutdown).await
}
