//! Machine failures: tasks move to the surviving machines, and a machine that comes back
//! after being declared lost stops its stale copies.

use canopy_e2e::{Stack, alive, hello_spec, running_tasks};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_failed_machines_tasks_run_elsewhere_within_15_seconds() -> anyhow::Result<()> {
    let mut stack = Stack::start(3).await?;
    stack.deploy(&hello_spec("web", 2)).await?;
    let app = stack.wait_running("web", 2, Duration::from_secs(30)).await?;
    let victim = running_tasks(&app)[0]["machine"].as_str().expect("machine").to_string();

    // kill -9 the agent and every process in its machine's slice.
    let failed_at = Instant::now();
    stack.machine(&victim)?.fail().await?;
    stack
        .wait("both instances running off the failed machine", Duration::from_secs(15), || async {
            let app = stack.developer.get("/v1/apps/web").await?;
            let running = running_tasks(&app);
            Ok(running.len() == 2 && running.iter().all(|t| t["machine"] != victim.as_str()))
        })
        .await?;
    let recovered = failed_at.elapsed();
    let app = stack.developer.get("/v1/apps/web").await?;
    let machines: BTreeSet<_> =
        running_tasks(&app).iter().map(|t| t["machine"].as_str().unwrap_or("").to_string()).collect();
    assert!(!machines.contains(&victim), "nothing runs on the failed machine: {machines:?}");
    assert_eq!(machines.len(), 2, "still spread: {machines:?}");
    assert!(recovered < Duration::from_secs(15), "recovered in {recovered:?}");
    eprintln!("recovered from the machine failure in {recovered:?}");
    let lost = stack.admin.get("/v1/machines").await?;
    let victim_state =
        lost.as_array().expect("machines").iter().find(|m| m["name"] == victim.as_str()).map(|m| m["state"].clone());
    assert_eq!(victim_state, Some(serde_json::json!("lost")));
    Ok(())
}

#[tokio::test]
async fn a_machine_that_returns_after_being_lost_stops_its_stale_copies() -> anyhow::Result<()> {
    let mut stack = Stack::start(2).await?;
    stack.deploy(&hello_spec("web", 1)).await?;
    let app = stack.wait_running("web", 1, Duration::from_secs(30)).await?;
    let task = running_tasks(&app)[0].clone();
    let victim = task["machine"].as_str().expect("machine").to_string();
    let stale_pid = task["pid"].as_u64().expect("pid") as u32;

    // A partition: the agent is frozen (no heartbeats) while its task keeps running.
    let agent_pid = stack.machine(&victim)?.agent_pid().expect("agent pid");
    // SAFETY: signals to a child process this test started.
    unsafe { libc::kill(agent_pid as libc::pid_t, libc::SIGSTOP) };
    let app = stack
        .wait("a replacement elsewhere", Duration::from_secs(20), || async {
            let app = stack.developer.get("/v1/apps/web").await?;
            Ok(running_tasks(&app).iter().any(|t| t["machine"] != victim.as_str()))
        })
        .await;
    assert!(alive(stale_pid), "the stale copy kept running during the partition");
    // SAFETY: as above.
    unsafe { libc::kill(agent_pid as libc::pid_t, libc::SIGCONT) };
    app?;

    // Back from the partition, the agent learns its task is no longer wanted and stops it.
    stack.wait("the stale copy to stop", Duration::from_secs(15), || async { Ok(!alive(stale_pid)) }).await?;
    let app = stack.developer.get("/v1/apps/web").await?;
    let running = running_tasks(&app);
    assert_eq!(running.len(), 1, "exactly one copy runs: {app:#}");
    assert_ne!(running[0]["machine"], victim.as_str());
    let machines = stack.admin.get("/v1/machines").await?;
    assert!(machines.as_array().expect("machines").iter().all(|m| m["state"] == "ready"), "{machines:#}");
    Ok(())
}
