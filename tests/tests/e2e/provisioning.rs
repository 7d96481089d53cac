//! Real provisioning through the emulated EC2: Canopy buys machines for work that does not
//! fit, their bootstrap starts real agents, and machines are given back or replaced.

use canopy_e2e::{Stack, hello_spec, running_tasks};
use std::collections::BTreeSet;
use std::time::Duration;

async fn live_instances(stack: &Stack) -> anyhow::Result<Vec<canopy_localstack::emulator::EmulatedInstance>> {
    Ok(stack.moto()?.instances().await?.into_iter().filter(|i| i.state == "pending" || i.state == "running").collect())
}

#[tokio::test]
async fn a_deploy_that_needs_capacity_buys_an_ec2_machine_and_returns_it_when_idle() -> anyhow::Result<()> {
    let stack = Stack::start_with_cloud(3).await?;
    stack.deploy(&hello_spec("web", 1)).await?;
    let app = stack.wait_running("web", 1, Duration::from_secs(60)).await?;
    let task = &running_tasks(&app)[0];
    let url = format!("http://{}:{}/", task["address"].as_str().unwrap_or_default(), task["ports"]["http"]);
    let body = reqwest::get(&url).await?.text().await?;
    assert!(body.contains("hello from canopy"), "{url}: {body}");

    let machines = stack.admin.get("/v1/machines").await?;
    let machine =
        machines.as_array().and_then(|m| m.iter().find(|m| m["name"] == task["machine"])).cloned().expect("machine");
    assert_eq!(machine["provider"], "aws", "{machine:#}");
    assert_eq!(machine["state"], "ready");
    let instances = live_instances(&stack).await?;
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(machine["provider_id"].as_str(), Some(instances[0].instance_id.as_str()));
    assert!(instances[0].user_data.contains("canopy-agent"), "bootstrap rendered into user data");

    // Deleting the app leaves the machine idle; after the idle period it is terminated.
    stack.developer.call(reqwest::Method::DELETE, "/v1/apps/web", None).await?.ok()?;
    stack
        .wait("the idle machine to be terminated", Duration::from_secs(30), || async {
            Ok(live_instances(&stack).await?.is_empty())
        })
        .await?;
    stack
        .wait("the machine record to say terminated", Duration::from_secs(10), || async {
            let machines = stack.admin.get("/v1/machines").await?;
            Ok(machines.as_array().is_some_and(|m| m.iter().all(|m| m["state"] == "terminated")))
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_spot_interruption_reschedules_tasks_onto_a_replacement() -> anyhow::Result<()> {
    let stack = Stack::start_with_cloud(60).await?;
    let spec = hello_spec("batchy", 1).replace("stop_grace = \"2s\"", "stop_grace = \"2s\"\ninterruptible = true");
    stack.deploy(&spec).await?;
    let app = stack.wait_running("batchy", 1, Duration::from_secs(60)).await?;
    let first_machine = running_tasks(&app)[0]["machine"].as_str().unwrap_or_default().to_string();
    let instances = live_instances(&stack).await?;
    assert_eq!(instances.len(), 1);
    assert!(instances[0].spot, "an interruptible app runs on spot: {instances:?}");

    stack.moto()?.interrupt(&instances[0].instance_id).await?;
    stack
        .wait("the app to run on a replacement machine", Duration::from_secs(60), || async {
            let app = stack.developer.get("/v1/apps/batchy").await?;
            let running = running_tasks(&app);
            Ok(running.len() == 1 && running[0]["machine"] != first_machine.as_str())
        })
        .await?;
    let machines = stack.admin.get("/v1/machines").await?;
    let old = machines
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == first_machine.as_str()))
        .cloned()
        .expect("old machine");
    assert!(old["state_reason"].as_str().unwrap_or_default().contains("spot"), "{old:#}");
    assert_eq!(live_instances(&stack).await?.len(), 1, "exactly one replacement");
    Ok(())
}

#[tokio::test]
async fn a_control_service_crash_during_provisioning_leaves_no_orphans_or_duplicates() -> anyhow::Result<()> {
    let mut stack = Stack::start_with_cloud(60).await?;
    // Slow boots widen the window between "instance created" and "agent joined".
    stack.moto()?.post("/_canopy/faults/pending", serde_json::json!({"seconds": 3})).await?;
    stack.deploy(&hello_spec("web", 2)).await?;
    stack
        .wait("machines to be requested", Duration::from_secs(20), || async {
            let machines = stack.admin.get("/v1/machines").await?;
            Ok(machines.as_array().is_some_and(|m| m.len() == 2))
        })
        .await?;
    stack.crash_and_restart_control().await?;
    let app = stack.wait_running("web", 2, Duration::from_secs(90)).await?;

    let instances = live_instances(&stack).await?;
    let machines = stack.admin.get("/v1/machines").await?;
    let live: Vec<_> = machines.as_array().into_iter().flatten().filter(|m| m["state"] == "ready").collect();
    assert_eq!(instances.len(), 2, "no duplicates or orphans at the provider: {instances:?}");
    assert_eq!(live.len(), 2, "{machines:#}");
    let recorded: BTreeSet<_> = live.iter().filter_map(|m| m["provider_id"].as_str()).collect();
    let actual: BTreeSet<_> = instances.iter().map(|i| i.instance_id.as_str()).collect();
    assert_eq!(recorded, actual, "every instance is a recorded machine and vice versa");
    assert_eq!(running_tasks(&app).len(), 2);
    Ok(())
}

#[tokio::test]
async fn no_capacity_for_the_cheapest_offering_buys_the_next_best_one() -> anyhow::Result<()> {
    let stack = Stack::start_with_cloud(60).await?;
    // The cheapest amd64 machine in the shipped us-east-1 prices is t3a.nano.
    stack.moto()?.post("/_canopy/faults/capacity", serde_json::json!({"instance_type": "t3a.nano"})).await?;
    stack.deploy(&hello_spec("web", 1)).await?;
    let app = stack.wait_running("web", 1, Duration::from_secs(90)).await?;
    let machines = stack.admin.get("/v1/machines").await?;
    let machines = machines.as_array().cloned().unwrap_or_default();
    let failed = machines.iter().find(|m| m["offering"] == "t3a.nano").expect("a t3a.nano was tried first");
    assert!(failed["state_reason"].as_str().unwrap_or_default().starts_with("insufficient capacity"), "{failed:#}");
    let running_on = running_tasks(&app)[0]["machine"].clone();
    let chosen = machines.iter().find(|m| m["name"] == running_on).expect("machine");
    assert_ne!(chosen["offering"], "t3a.nano", "{chosen:#}");
    assert_eq!(chosen["state"], "ready");
    Ok(())
}

#[tokio::test]
async fn a_machine_whose_agent_never_joins_is_terminated_and_replaced() -> anyhow::Result<()> {
    let stack = Stack::start_with_cloud_timeouts(60, 4).await?;
    // Instances stay pending, so the booter never starts their agents.
    stack.moto()?.post("/_canopy/faults/pending", serde_json::json!({"seconds": 3600})).await?;
    stack.deploy(&hello_spec("web", 1)).await?;
    stack
        .wait("the first machine to time out", Duration::from_secs(30), || async {
            let machines = stack.admin.get("/v1/machines").await?;
            Ok(machines.as_array().is_some_and(|m| {
                m.iter().any(|m| {
                    m["state"] == "terminated"
                        && m["state_reason"].as_str().unwrap_or_default().contains("did not join")
                })
            }))
        })
        .await?;
    let machines = stack.admin.get("/v1/machines").await?;
    let first = machines
        .as_array()
        .and_then(|m| m.iter().find(|m| m["state"] == "terminated"))
        .cloned()
        .expect("terminated machine");
    let first_instance = first["provider_id"].as_str().expect("provider id").to_string();
    let instances = stack.moto()?.instances().await?;
    let state = instances.iter().find(|i| i.instance_id == first_instance).map(|i| i.state.clone());
    assert_eq!(state.as_deref(), Some("terminated"), "the stuck instance was terminated at the provider");

    // Boots work again: the replacement joins and the app runs.
    stack.moto()?.post("/_canopy/faults/clear", serde_json::json!({})).await?;
    stack.wait_running("web", 1, Duration::from_secs(60)).await?;
    assert_eq!(live_instances(&stack).await?.len(), 1, "one live machine in the end");
    Ok(())
}
