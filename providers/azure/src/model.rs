//! ARM's Microsoft.Compute wire shapes (the fields Canopy reads) and how a virtual machine
//! becomes a [`ProviderMachine`].

use canopy_providers::{Interruption, MachineStatus, ProviderMachine};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct VirtualMachine {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub zones: Vec<String>,
    #[serde(default)]
    pub properties: VmProperties,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VmProperties {
    #[serde(default)]
    pub hardware_profile: HardwareProfile,
    #[serde(default)]
    pub provisioning_state: String,
    pub priority: Option<String>,
    pub instance_view: Option<InstanceView>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HardwareProfile {
    #[serde(default)]
    pub vm_size: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct InstanceView {
    #[serde(default)]
    pub statuses: Vec<InstanceViewStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct InstanceViewStatus {
    #[serde(default)]
    pub code: String,
    pub message: Option<String>,
}

/// The `Azure-AsyncOperation` resource.
#[derive(Debug, Deserialize)]
pub(crate) struct AsyncOperation {
    pub status: String,
    pub error: Option<crate::arm::ArmErrorBody>,
}

impl VirtualMachine {
    fn power_state(&self) -> Option<&str> {
        self.statuses().find_map(|s| s.code.strip_prefix("PowerState/"))
    }

    fn statuses(&self) -> impl Iterator<Item = &InstanceViewStatus> {
        self.properties.instance_view.iter().flat_map(|view| view.statuses.iter())
    }

    /// The failure Azure reports: the `ProvisioningState/failed/<code>` status and its message.
    fn failure(&self) -> String {
        self.statuses()
            .find_map(|s| {
                let code = s.code.strip_prefix("ProvisioningState/failed")?.trim_start_matches('/');
                Some(match &s.message {
                    Some(message) if !code.is_empty() => format!("{code}: {message}"),
                    Some(message) => message.clone(),
                    None => code.to_string(),
                })
            })
            .unwrap_or_else(|| "provisioning failed".to_string())
    }

    pub fn is_spot(&self) -> bool {
        self.properties.priority.as_deref() == Some("Spot")
    }

    /// The machine as Canopy sees it. Canopy never stops or deallocates a VM (it deletes), so a
    /// Spot VM found deallocated (or stopped) was evicted: Azure's eviction with the
    /// `Deallocate` policy leaves exactly that, `PowerState/deallocated` on a Spot VM.
    pub fn machine(&self, region: &str) -> ProviderMachine {
        let power = self.power_state();
        let (status, interruption) = match self.properties.provisioning_state.as_str() {
            "Deleting" => (MachineStatus::Terminated, None),
            "Failed" => (MachineStatus::Stopped, Some(Interruption::Failed(self.failure()))),
            _ => {
                let status = match power {
                    Some("running") => MachineStatus::Running,
                    Some("stopping" | "deallocating") => MachineStatus::Stopping,
                    Some("stopped" | "deallocated") => MachineStatus::Stopped,
                    _ => MachineStatus::Pending,
                };
                let evicted = self.is_spot() && matches!(power, Some("stopped" | "deallocating" | "deallocated"));
                (status, evicted.then_some(Interruption::SpotReclaimed))
            }
        };
        ProviderMachine {
            provider_id: self.name.clone(),
            region: if self.location.is_empty() { region.to_string() } else { self.location.clone() },
            zone: self.zones.first().cloned().unwrap_or_default(),
            instance_type: self.properties.hardware_profile.vm_size.clone(),
            status,
            spot: self.is_spot(),
            interruption,
            tags: self.tags.clone(),
            // The address belongs to the network interface (Microsoft.Network), not the VM.
            private_ip: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vm(provisioning: &str, power: Option<&str>, priority: &str) -> VirtualMachine {
        let mut statuses = vec![json!({"code": format!("ProvisioningState/{}", provisioning.to_lowercase())})];
        if provisioning == "Failed" {
            statuses[0] = json!({"code": "ProvisioningState/failed/AllocationFailed", "message": "no room"});
        }
        if let Some(power) = power {
            statuses.push(json!({"code": format!("PowerState/{power}")}));
        }
        serde_json::from_value(json!({
            "name": "vm-1", "location": "eastus", "zones": ["2"], "tags": {"canopy:cluster": "c"},
            "properties": {"hardwareProfile": {"vmSize": "Standard_B1s"}, "provisioningState": provisioning,
                           "priority": priority, "instanceView": {"statuses": statuses}}
        }))
        .expect("vm json")
    }

    #[test]
    fn power_states_map_to_machine_statuses() {
        let cases = [
            ("Creating", Some("starting"), "Regular", MachineStatus::Pending, None),
            ("Creating", None, "Regular", MachineStatus::Pending, None),
            ("Succeeded", Some("running"), "Regular", MachineStatus::Running, None),
            ("Succeeded", Some("deallocated"), "Spot", MachineStatus::Stopped, Some(Interruption::SpotReclaimed)),
            ("Succeeded", Some("deallocated"), "Regular", MachineStatus::Stopped, None),
            ("Deleting", Some("stopping"), "Regular", MachineStatus::Terminated, None),
            (
                "Failed",
                None,
                "Regular",
                MachineStatus::Stopped,
                Some(Interruption::Failed("AllocationFailed: no room".into())),
            ),
        ];
        for (provisioning, power, priority, status, interruption) in cases {
            let machine = vm(provisioning, power, priority).machine("eastus");
            assert_eq!((machine.status, machine.interruption), (status, interruption), "{provisioning} {power:?}");
            assert_eq!((machine.zone.as_str(), machine.instance_type.as_str()), ("2", "Standard_B1s"));
        }
    }
}
