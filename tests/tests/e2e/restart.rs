//! Restarts of the control service and of agents do not disturb running tasks.

use canopy_e2e::{Stack, alive, hello_spec, running_tasks};
use std::collections::BTreeMap;
use std::time::Duration;

fn pids(app: &serde_json::Value) -> BTreeMap<String, u64> {
    running_tasks(app)
        .iter()
        .map(|t| (t["id"].as_str().unwrap_or("").to_string(), t["pid"].as_u64().unwrap_or(0)))
        .collect()
}

#[tokio::test]
async fn restarting_the_control_service_keeps_state_and_tasks() -> anyhow::Result<()> {
    let mut stack = Stack::start(2).await?;
    stack.deploy(&hello_spec("web", 2)).await?;
    let before = pids(&stack.wait_running("web", 2, Duration::from_secs(30)).await?);

    stack.restart_control().await?;
    assert!(before.values().all(|pid| alive(*pid as u32)), "tasks ran on while the control service was down");
    stack
        .wait("agents to report again", Duration::from_secs(20), || async {
            Ok(pids(&stack.developer.get("/v1/apps/web").await?) == before)
        })
        .await?;
    let app = stack.developer.get("/v1/apps/web").await?;
    assert_eq!(app["version"], 1);
    assert!(running_tasks(&app).iter().all(|t| t["restarts"] == 0), "{app:#}");
    Ok(())
}

#[tokio::test]
async fn a_restarted_agent_re_adopts_its_running_tasks() -> anyhow::Result<()> {
    let mut stack = Stack::start(1).await?;
    stack.deploy(&hello_spec("web", 2)).await?;
    let before = pids(&stack.wait_running("web", 2, Duration::from_secs(30)).await?);

    let machine = stack.machine("m1")?;
    machine.kill_agent().await;
    machine.start_agent(None)?;
    // Give the new agent time to heartbeat a few times.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let app = stack.wait_running("web", 2, Duration::from_secs(20)).await?;
    assert_eq!(pids(&app), before, "same tasks, same pids: re-adopted, not restarted");
    assert!(running_tasks(&app).iter().all(|t| t["restarts"] == 0), "{app:#}");
    let agent_log = std::fs::read_to_string(stack.machines[0].state_dir.join("agent.log"))?;
    assert_eq!(agent_log.matches("re-adopted running task").count(), 2, "{agent_log}");
    Ok(())
}
