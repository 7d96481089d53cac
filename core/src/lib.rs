//! canopy-core: the domain and the decisions of Canopy.
//!
//! This crate holds the types every other crate speaks (resources, app specs, the agent wire
//! protocol) and the pure functions that decide things (placement). It deliberately does no
//! I/O: no async runtime, no database, no HTTP, no clock and no random source. Time and seeds
//! are parameters, so every decision is reproducible in tests and benchmarks.

pub mod artifact;
pub mod cost;
pub mod cron;
pub mod dag;
pub mod image;
pub mod policy;
pub mod quantity;
pub mod resources;
pub mod schedule;
pub mod spec;
pub mod task;
pub mod wire;

pub use resources::Resources;
