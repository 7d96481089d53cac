//! canopy-provider-baremetal: hosts an operator registered (name, BMC, capacity, class,
//! amortized price), switched on and off through their BMC's Redfish API.
//!
//! Registration lives with the control service: this crate asks for what it needs through
//! the [`Inventory`] trait (hosts, atomic claims, quarantine) and does no SQL itself;
//! [`MemoryInventory`] is the in-memory implementation for tests and file-configured hosts.
//! A create claims a free host of the class (the offering's instance type), inserts the
//! bootstrap as the host's virtual CD (a `data:` URI; see [`bootstrap_uri`]), sets the boot
//! override to that CD and powers the host on. Terminate powers it off (gracefully, then by
//! force), ejects the CD, clears the override and releases the claim. A host that goes off
//! or turns Critical behind Canopy's back is reported failed, and quarantined when it is
//! terminated. There is deliberately no spot and no quota: owned hardware has only capacity.

mod inventory;
mod provider;
mod redfish;

pub use inventory::{Claim, Host, Inventory, MemoryInventory};
pub use provider::{BareMetalConfig, BareMetalProvider, bootstrap_uri, offerings};
pub use redfish::RedfishError;
