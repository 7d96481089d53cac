//! Autoscaling on CPU: real tasks burning real CPU in their cgroups, measured from the agents'
//! reports, scale an app up, and back down once they idle.

use canopy_e2e::{Stack, running_tasks};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

/// Spins while the file named by its first argument exists, sleeps otherwise.
const BURNER: &str = "import os, sys, time
flag = sys.argv[1]
while True:
    if os.path.exists(flag):
        end = time.time() + 0.1
        while time.time() < end:
            pass
    else:
        time.sleep(0.2)
";

/// The autoscaler's events for `app`, oldest first, as (from, to, utilization).
async fn autoscaled(stack: &Stack, app: &str) -> anyhow::Result<Vec<(i64, i64, Option<f64>)>> {
    let events = stack.admin.get("/v1/events?limit=200").await?;
    let mut found: Vec<(i64, i64, Option<f64>)> = events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "app.autoscaled" && e["subject"] == app)
        .inspect(|e| assert_eq!(e["actor"], "autoscaler", "{e}"))
        .map(|e| {
            let detail = &e["detail"];
            (detail["from"].as_i64().unwrap_or(-1), detail["to"].as_i64().unwrap_or(-1), detail["utilization"].as_f64())
        })
        .collect();
    found.reverse();
    Ok(found)
}

async fn instances(stack: &Stack, app: &str) -> anyhow::Result<i64> {
    Ok(stack.developer.get(&format!("/v1/apps/{app}")).await?["instances"].as_i64().unwrap_or(-1))
}

#[tokio::test]
async fn an_app_scales_up_while_its_tasks_burn_cpu_and_back_down_after_the_cooldown_once_idle() -> anyhow::Result<()> {
    let stack = Stack::start(3).await?;
    let flag = stack.dir.join("burn");
    std::fs::write(&flag, b"")?;
    let spec = format!(
        r#"
name = "burner"
command = "python3"
args = ["-c", {BURNER:?}, {flag:?}]
instances = 1
stop_grace = "1s"

[resources]
cpu = 200
memory = "32Mi"

[autoscale]
min = 1
max = 3
target_cpu = 50
cooldown = "3s"
window = "4s"
"#,
        flag = flag.display().to_string()
    );
    let deployed = stack.deploy(&spec).await?;
    assert_eq!(deployed["spec"]["autoscale"]["target_cpu"], 50, "{deployed:#}");
    stack.wait_running("burner", 1, Duration::from_secs(30)).await?;

    // One task at its 200m cap is 100% of its request against a target of 50%: more instances.
    stack.wait("a scale-up", Duration::from_secs(40), || async { Ok(instances(&stack, "burner").await? >= 2) }).await?;
    let ups = autoscaled(&stack, "burner").await?;
    let (from, to, utilization) = *ups.first().expect("an app.autoscaled event");
    assert!(from == 1 && to >= 2, "{ups:?}");
    assert!(utilization.is_some_and(|u| u > 55.0), "measured above the target's tolerance: {ups:?}");
    stack.wait_running("burner", 2, Duration::from_secs(30)).await?;

    // Scaling by hand is brought within min..max; the autoscaler goes on from there.
    let scaled =
        stack.developer.call(Method::POST, "/v1/apps/burner/scale", Some(json!({"instances": 10}))).await?.ok()?;
    assert_eq!(scaled["instances"], 3, "clamped to autoscale.max: {:#}", scaled["instances"]);

    // Idle tasks: back to min, but only after the cooldown.
    std::fs::remove_file(&flag)?;
    stack
        .wait("a scale-down to 1", Duration::from_secs(45), || async { Ok(instances(&stack, "burner").await? == 1) })
        .await?;
    let events = autoscaled(&stack, "burner").await?;
    let downs: Vec<_> = events.iter().filter(|(from, to, _)| to < from).collect();
    assert!(!downs.is_empty(), "the autoscaler scaled down: {events:?}");
    assert!(downs.iter().all(|(_, to, u)| *to >= 1 && u.is_some_and(|u| u < 45.0)), "{events:?}");
    stack
        .wait("one running instance", Duration::from_secs(20), || async {
            let app: Value = stack.developer.get("/v1/apps/burner").await?;
            Ok(running_tasks(&app).len() == 1)
        })
        .await?;
    Ok(())
}
