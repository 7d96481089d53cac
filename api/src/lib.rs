//! canopy-api: the control service and the `canopy` CLI.
//!
//! The control service is an axum HTTP API over a Postgres store, plus controllers
//! (level-triggered reconcile loops) that turn desired state into placements. It keeps no
//! state in memory that a restart would lose. It does not run workloads (agents do) and does
//! not decide placements itself (canopy-core does).

pub mod auth;
pub mod cli;
pub mod controllers;
pub mod http;
pub mod policy;
pub mod prices;
pub mod server;
pub mod store;
pub mod ui;
