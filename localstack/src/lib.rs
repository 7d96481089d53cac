//! canopy-localstack: the whole world on one machine.
//!
//! Starts the control service and "machines" on this host: each machine is a cgroup slice
//! sized like a real machine, with a real `canopy-agent` inside and its own loopback address.
//! Killing a slice is a machine failure. The demo and the end-to-end tests both run on this;
//! it holds no logic of the control service or the agent, only their processes.

pub mod booter;
pub mod emulator;
pub mod machine;
pub mod process;

pub use database::TempDatabase;
pub use machine::{LocalMachine, MachineSpec, Slice};
pub use process::{Binaries, ControlService};
pub mod database;
