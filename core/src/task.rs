//! Task lifecycle as the control service records it.
//!
//! ```text
//! Pending -> Assigned -> Running -> Exited | Failed | Stopped
//!     any non-terminal state -> Lost (its machine was declared lost)
//! ```
//! A task never leaves a terminal state: a replacement is a new task.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for a machine.
    Pending,
    /// Placed on a machine; its agent has not reported it running yet.
    Assigned,
    Running,
    /// Ended with exit status 0 and is not restarted.
    Exited,
    /// Ended badly (non-zero exit, signal, OOM, failed to start) and is not restarted.
    Failed,
    /// Its machine was declared lost; a replacement takes its place.
    Lost,
    /// Stopped on purpose (scaled down, replaced by a new version, app deleted).
    Stopped,
}

impl TaskState {
    pub const ALL: [TaskState; 7] = [
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Running,
        TaskState::Exited,
        TaskState::Failed,
        TaskState::Lost,
        TaskState::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Running => "running",
            TaskState::Exited => "exited",
            TaskState::Failed => "failed",
            TaskState::Lost => "lost",
            TaskState::Stopped => "stopped",
        }
    }

    pub fn parse(text: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Exited | TaskState::Failed | TaskState::Lost | TaskState::Stopped)
    }
}

/// Machine lifecycle. Bought machines start at `Requested` (recorded before any provider
/// call) and go through `Booting` (the provider has it; its agent has not joined); machines
/// joined by hand start at `Ready`.
///
/// ```text
/// Requested -> Booting -> Ready -> Draining -> Terminating -> Terminated
///                  \-> Failed (boot timeout, interrupted) -> Terminated
///                          Ready <-> Lost (missed heartbeats)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    Requested,
    Booting,
    Ready,
    /// Receives no new work; terminated once empty.
    Draining,
    Terminating,
    Terminated,
    /// Did not boot in time, or the provider interrupted it; its tasks were replaced.
    Failed,
    /// Missed heartbeats for longer than the liveness TTL; its tasks were replaced.
    Lost,
}

impl MachineState {
    pub const ALL: [MachineState; 8] = [
        MachineState::Requested,
        MachineState::Booting,
        MachineState::Ready,
        MachineState::Draining,
        MachineState::Terminating,
        MachineState::Terminated,
        MachineState::Failed,
        MachineState::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Requested => "requested",
            MachineState::Booting => "booting",
            MachineState::Ready => "ready",
            MachineState::Draining => "draining",
            MachineState::Terminating => "terminating",
            MachineState::Terminated => "terminated",
            MachineState::Failed => "failed",
            MachineState::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Option<MachineState> {
        MachineState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(TaskState::parse(state.as_str()), Some(state));
            let json = serde_json::to_string(&state).expect("serialize");
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        for state in MachineState::ALL {
            assert_eq!(MachineState::parse(state.as_str()), Some(state));
        }
    }
}
