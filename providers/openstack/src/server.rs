//! Nova's wire shapes (at the pinned microversion) and how they become provider-neutral
//! machines.

use canopy_providers::{Interruption, MachineStatus, ProviderError, ProviderMachine};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;

/// The fault message with which Nova's scheduler reports that no host can take a server.
const NO_VALID_HOST: &str = "No valid host was found";

/// `body[field]` as `T`, with an error naming the call when the shape is not Nova's.
pub fn parse<T: DeserializeOwned>(body: &Value, call: &str, field: &str) -> Result<T, ProviderError> {
    let value = body.get(field).cloned().unwrap_or(Value::Null);
    serde_json::from_value(value).map_err(|e| ProviderError::Other(format!("nova {call}: unexpected {field}: {e}")))
}

#[derive(Clone, Debug, Deserialize)]
pub struct Flavor {
    pub id: String,
    pub name: String,
    pub vcpus: u64,
    /// MiB.
    pub ram: u64,
}

#[derive(Debug, Default, Deserialize)]
pub struct ServerFlavor {
    /// Since 2.47 the flavor is embedded in the server; this is its name.
    pub original_name: Option<String>,
    /// Before 2.47, only the id.
    pub id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Fault {
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Deserialize)]
pub struct Address {
    pub addr: String,
    #[serde(default)]
    pub version: u8,
    #[serde(rename = "OS-EXT-IPS:type", default)]
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Server {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub flavor: ServerFlavor,
    #[serde(rename = "OS-EXT-AZ:availability_zone", default)]
    pub zone: Option<String>,
    #[serde(rename = "OS-EXT-STS:task_state", default)]
    pub task_state: Option<String>,
    #[serde(default)]
    pub fault: Option<Fault>,
    #[serde(default)]
    pub addresses: BTreeMap<String, Vec<Address>>,
}

impl Server {
    /// Still being placed by the scheduler.
    pub fn is_scheduling(&self) -> bool {
        self.status == "BUILD" && self.task_state.as_deref().is_none_or(|t| t == "scheduling")
    }

    /// Neither failed nor deleted (a candidate for the idempotency look-up).
    pub fn is_live(&self) -> bool {
        !matches!(self.status.as_str(), "ERROR" | "DELETED" | "SOFT_DELETED")
            && self.task_state.as_deref() != Some("deleting")
    }

    /// The scheduler's fault, when the server went ERROR because no host could take it.
    pub fn no_valid_host(&self) -> Option<String> {
        let fault = self.fault.as_ref()?;
        (self.status == "ERROR" && fault.message.contains(NO_VALID_HOST)).then(|| fault.message.clone())
    }

    fn status(&self) -> MachineStatus {
        if self.task_state.as_deref() == Some("deleting") {
            return MachineStatus::Stopping;
        }
        match self.status.as_str() {
            "BUILD" => MachineStatus::Pending,
            "ERROR" | "DELETED" | "SOFT_DELETED" => MachineStatus::Terminated,
            "SHUTOFF" | "SUSPENDED" | "PAUSED" | "SHELVED" | "SHELVED_OFFLOADED" => MachineStatus::Stopped,
            // ACTIVE, and the transient states of a server that exists and runs (REBOOT,
            // RESIZE, MIGRATING, ...). UNKNOWN (its host is unreachable) is not yet a loss.
            _ => MachineStatus::Running,
        }
    }

    pub fn into_machine(self, region: &str, flavors: &[Flavor]) -> ProviderMachine {
        let status = self.status();
        let interruption = (self.status == "ERROR").then(|| {
            Interruption::Failed(
                self.fault
                    .as_ref()
                    .map(|f| f.message.clone())
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| "server is in ERROR".into()),
            )
        });
        let instance_type = match (&self.flavor.original_name, &self.flavor.id) {
            (Some(name), _) => name.clone(),
            (None, Some(id)) => flavors.iter().find(|f| &f.id == id).map(|f| f.name.clone()).unwrap_or(id.clone()),
            (None, None) => String::new(),
        };
        let private_ip = self
            .addresses
            .values()
            .flatten()
            .find(|a| a.version == 4 && a.kind.as_deref() != Some("floating"))
            .map(|a| a.addr.clone());
        ProviderMachine {
            provider_id: self.id,
            region: region.to_string(),
            zone: self.zone.unwrap_or_default(),
            instance_type,
            status,
            spot: false,
            interruption,
            tags: self.metadata,
            private_ip,
        }
    }
}

/// The project's compute limits (`None`: unlimited) and what is in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    pub max_instances: Option<u64>,
    pub max_cores: Option<u64>,
    pub max_ram_mib: Option<u64>,
    pub used_instances: u64,
    pub used_cores: u64,
    pub used_ram_mib: u64,
}

impl Quota {
    pub fn from_limits(body: &Value) -> Result<Quota, ProviderError> {
        let absolute = body
            .pointer("/limits/absolute")
            .ok_or_else(|| ProviderError::Other("nova /limits: no limits.absolute".into()))?;
        // Nova reports an unlimited quota as -1.
        let max = |key: &str| absolute.get(key).and_then(Value::as_i64).and_then(|v| u64::try_from(v).ok());
        let used = |key: &str| absolute.get(key).and_then(Value::as_u64).unwrap_or(0);
        Ok(Quota {
            max_instances: max("maxTotalInstances"),
            max_cores: max("maxTotalCores"),
            max_ram_mib: max("maxTotalRAMSize"),
            used_instances: used("totalInstancesUsed"),
            used_cores: used("totalCoresUsed"),
            used_ram_mib: used("totalRAMUsed"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server(body: Value) -> Server {
        serde_json::from_value(body).expect("server")
    }

    #[test]
    fn an_unplaced_server_is_a_capacity_failure_and_gone() {
        let s = server(json!({"id": "a", "status": "ERROR", "flavor": {"original_name": "m1.small"},
            "fault": {"code": 500, "message": "No valid host was found. There are not enough hosts available."}}));
        assert!(s.no_valid_host().is_some());
        let machine = s.into_machine("RegionOne", &[]);
        assert_eq!(machine.status, MachineStatus::Terminated);
        assert_eq!(machine.instance_type, "m1.small");
        assert!(matches!(machine.interruption, Some(Interruption::Failed(m)) if m.starts_with("No valid host")));
    }

    #[test]
    fn build_states_and_flavor_ids_map() {
        let flavors = [Flavor { id: "2".into(), name: "m1.small".into(), vcpus: 1, ram: 2048 }];
        let s = server(json!({"id": "a", "status": "BUILD", "OS-EXT-STS:task_state": "spawning",
            "flavor": {"id": "2"}, "addresses": {"private": [{"addr": "10.0.0.5", "version": 4}]}}));
        assert!(!s.is_scheduling());
        let machine = s.into_machine("RegionOne", &flavors);
        assert_eq!((machine.status, machine.instance_type.as_str()), (MachineStatus::Pending, "m1.small"));
        assert_eq!(machine.private_ip.as_deref(), Some("10.0.0.5"));
    }

    #[test]
    fn unlimited_quota_is_none() {
        let q = Quota::from_limits(&json!({"limits": {"absolute": {"maxTotalInstances": -1, "maxTotalCores": 20,
            "totalCoresUsed": 3}}}))
        .expect("limits");
        assert_eq!((q.max_instances, q.max_cores, q.used_cores), (None, Some(20), 3));
    }
}
