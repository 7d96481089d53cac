//! Deploying runs real processes inside real cgroups with the spec's limits.

use canopy_e2e::{Stack, hello_spec, running_tasks};
use reqwest::Method;
use std::time::Duration;

#[tokio::test]
async fn deployed_instances_run_in_their_cgroups_with_limits_and_answer() -> anyhow::Result<()> {
    let stack = Stack::start(2).await?;
    stack.deploy(&hello_spec("web", 2)).await?;
    let app = stack.wait_running("web", 2, Duration::from_secs(30)).await?;
    let tasks = running_tasks(&app);
    let machines: std::collections::BTreeSet<_> = tasks.iter().map(|t| t["machine"].as_str().unwrap_or("")).collect();
    assert_eq!(machines.len(), 2, "replicas spread over both machines: {tasks:?}");

    for task in &tasks {
        let machine =
            stack.machines.iter().find(|m| Some(m.spec.name.as_str()) == task["machine"].as_str()).expect("machine");
        let cgroup = machine.task_cgroup(task["id"].as_str().expect("id"));
        assert_eq!(cgroup.memory_limit(), Some(64 << 20), "memory limit from the spec");
        let pid = task["pid"].as_u64().expect("pid") as u32;
        assert!(cgroup.pids().contains(&pid), "pid {pid} is in its cgroup {:?}", cgroup.procs_files());
        let url = format!("http://{}:{}/", task["address"].as_str().expect("address"), task["ports"]["http"]);
        let body = reqwest::get(&url).await?.text().await?;
        assert!(body.contains(task["id"].as_str().expect("id")), "{url} answered {body:?}");
    }

    // Logs come from the agent through the control service.
    let reply = stack.developer.call(Method::GET, "/v1/apps/web/logs?instance=0", None).await?;
    assert!(reply.status.is_success(), "{reply:?}");
    assert!(reply.body.as_str().unwrap_or_default().contains("listening on"), "{reply:?}");

    // Scaling down stops an instance; deleting stops them all and frees their cgroups.
    stack.developer.call(Method::POST, "/v1/apps/web/scale", Some(serde_json::json!({"instances": 1}))).await?.ok()?;
    stack
        .wait("one instance left", Duration::from_secs(20), || async {
            let app = stack.developer.get("/v1/apps/web").await?;
            Ok(running_tasks(&app).len() == 1 && stack.machines.iter().map(|m| m.task_pids().len()).sum::<usize>() == 1)
        })
        .await?;
    stack.developer.call(Method::DELETE, "/v1/apps/web", None).await?.ok()?;
    stack
        .wait("every task process gone", Duration::from_secs(20), || async {
            Ok(stack.machines.iter().all(|m| m.task_pids().is_empty()))
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_task_past_its_memory_limit_is_oom_killed_and_reported_as_such() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    let spec = r#"
name = "hog"
command = "python3"
args = ["-c", "import time\nblocks = []\nwhile True:\n    blocks.append(bytearray(8 << 20))\n    time.sleep(0.01)"]
[resources]
cpu = 200
memory = "48Mi"
[restart]
policy = "never"
"#;
    stack.deploy(spec).await?;
    stack
        .wait("the task to fail", Duration::from_secs(30), || async {
            Ok(stack.developer.get("/v1/apps/hog").await?["tasks"][0]["state"] == "failed")
        })
        .await?;
    let last = stack.developer.get("/v1/apps/hog").await?;
    let task = &last["tasks"][0];
    assert_eq!(task["oom_killed"], true, "{task:#}");
    assert_eq!(task["exit_signal"], 9, "{task:#}");
    assert!(task["message"].as_str().unwrap_or_default().contains("out of memory"), "{task:#}");
    assert!(task["memory_peak"].as_i64().unwrap_or(0) <= 48 << 20, "{task:#}");
    Ok(())
}

#[tokio::test]
async fn crashing_tasks_are_restarted_with_backoff_and_count_restarts() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    let spec = r#"
name = "flaky"
command = "sh"
args = ["-c", "echo started; sleep 0.2; exit 3"]
[resources]
cpu = 100
memory = "16Mi"
[restart]
policy = "on-failure"
backoff = "100ms"
max_backoff = "400ms"
"#;
    stack.deploy(spec).await?;
    stack
        .wait("three restarts", Duration::from_secs(20), || async {
            let app = stack.developer.get("/v1/apps/flaky").await?;
            Ok(app["tasks"][0]["restarts"].as_i64().unwrap_or(0) >= 3)
        })
        .await?;
    let app = stack.developer.get("/v1/apps/flaky").await?;
    assert_eq!(app["tasks"][0]["exit_code"], 3, "{app:#}");
    Ok(())
}
