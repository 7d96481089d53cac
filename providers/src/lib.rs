//! canopy-providers: one trait for every source of machines (AWS, Azure, OpenStack, bare metal).
//!
//! The trait covers what provisioning needs and no more: the offerings with prices, create a
//! machine idempotently, describe it, list the machines that are ours (for reconciliation after
//! a crash), terminate. Interruptions (spot reclaims, failures) show up in what describe and
//! list report. Errors are provider-neutral kinds the provisioning controller can act on. Each
//! implementation lives in its own crate so that its SDK compiles only there.

pub mod conformance;

use canopy_core::schedule::{Offering, Quota};
use std::collections::BTreeMap;
use std::time::Duration;

/// Tag keys every provider puts on the machines Canopy creates.
pub const TAG_CLUSTER: &str = "canopy:cluster";
pub const TAG_MACHINE: &str = "canopy:machine";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateMachine {
    /// Stable across retries: the same key never yields two machines.
    pub idempotency_key: String,
    pub name: String,
    pub region: String,
    /// Empty lets the provider choose.
    pub zone: String,
    pub instance_type: String,
    pub spot: bool,
    /// The bootstrap (cloud-init user data) the control service rendered.
    pub user_data: String,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachineStatus {
    Pending,
    Running,
    Stopping,
    Stopped,
    Terminated,
}

impl MachineStatus {
    pub fn is_gone(self) -> bool {
        matches!(self, MachineStatus::Stopping | MachineStatus::Stopped | MachineStatus::Terminated)
    }
}

/// Why a machine went away without being asked to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interruption {
    /// The provider reclaimed spot capacity.
    SpotReclaimed,
    /// The machine failed (hardware, hypervisor, boot).
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderMachine {
    pub provider_id: String,
    pub region: String,
    pub zone: String,
    pub instance_type: String,
    pub status: MachineStatus,
    pub spot: bool,
    pub interruption: Option<Interruption>,
    pub tags: BTreeMap<String, String>,
    pub private_ip: Option<String>,
}

impl ProviderMachine {
    pub fn idempotency_key(&self) -> Option<&str> {
        self.tags.get(TAG_MACHINE).map(String::as_str)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("throttled by the provider; retry after {retry_after:?}")]
    Throttled { retry_after: Duration },
    #[error("insufficient capacity for {instance_type} in {zone}: {message}")]
    InsufficientCapacity { instance_type: String, zone: String, message: String },
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("provider error: {0}")]
    Other(String),
}

pub type Result<T, E = ProviderError> = std::result::Result<T, E>;

#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// `aws`, `azure`, `openstack` or `baremetal`.
    fn name(&self) -> &str;

    /// What can be bought, with prices.
    async fn offerings(&self) -> Result<Vec<Offering>>;

    /// Whether `offerings` changes while the control service runs (hosts an operator
    /// registers); such a provider is asked again before every plan, the others once.
    fn dynamic_offerings(&self) -> bool {
        false
    }

    /// The most this provider lets Canopy hold at once (the planner counts Canopy's machines
    /// against it); `None` when it sets no limit the planner can know in advance.
    async fn quota(&self) -> Result<Option<Quota>> {
        Ok(None)
    }

    /// Creates a machine, or returns the one already created with the same idempotency key.
    async fn create(&self, request: &CreateMachine) -> Result<ProviderMachine>;

    /// One machine by its provider id; `NotFound` when it does not exist.
    async fn describe(&self, region: &str, provider_id: &str) -> Result<ProviderMachine>;

    /// Every machine tagged with this cluster, in every state the provider still reports.
    async fn list_ours(&self, cluster: &str) -> Result<Vec<ProviderMachine>>;

    /// Terminates a machine; terminating one that is gone is not an error.
    async fn terminate(&self, region: &str, provider_id: &str) -> Result<()>;
}
