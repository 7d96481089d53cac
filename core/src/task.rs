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

    /// Whether a task in this state still occupies its instance slot. Tasks that ended on
    /// their own under their restart policy keep the slot (they are not silently replaced);
    /// lost and stopped tasks free it.
    pub fn holds_slot(self) -> bool {
        !matches!(self, TaskState::Lost | TaskState::Stopped)
    }
}

/// Machine lifecycle. Later providers add the provisioning states in front of `Ready`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    Ready,
    /// Missed heartbeats for longer than the liveness TTL; its tasks were replaced.
    Lost,
}

impl MachineState {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Ready => "ready",
            MachineState::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Option<MachineState> {
        [MachineState::Ready, MachineState::Lost].into_iter().find(|s| s.as_str() == text)
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
    }
}
