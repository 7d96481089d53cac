//! End-to-end tests: each runs a whole Canopy (Postgres database, control service, machines as
//! cgroup slices with real agents, real task processes) and checks what a user would see.

mod api;
mod autoscale;
mod deploy;
mod entry;
mod evacuate;
mod failure;
mod images;
mod jobs;
mod logs;
mod policies;
mod pool;
mod provisioning;
mod restart;
mod rollout;
mod ui;
