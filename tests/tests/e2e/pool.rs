//! One pool over several providers: the same deploy lands on whichever allowed provider is
//! cheapest and can sell, and owned capacity (bare-metal hosts powered through Redfish) is
//! used before anything is bought.

use canopy_e2e::{Stack, hello_spec, running_tasks};
use canopy_localstack::emulator::Kind;
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

/// The machine a running task is on, as `/v1/machines` shows it.
async fn machine_of(stack: &Stack, task: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let machines = stack.admin.get("/v1/machines").await?;
    machines
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == task["machine"]).cloned())
        .ok_or_else(|| anyhow::anyhow!("no machine {} in {machines:#}", task["machine"]))
}

async fn answers(task: &serde_json::Value) -> anyhow::Result<()> {
    let url = format!("http://{}:{}/", task["address"].as_str().unwrap_or_default(), task["ports"]["http"]);
    let body = reqwest::get(&url).await?.text().await?;
    anyhow::ensure!(body.contains("hello from canopy"), "{url}: {body}");
    Ok(())
}

#[tokio::test]
async fn with_the_aws_quota_used_up_a_deploy_lands_on_azure_and_answers() -> anyhow::Result<()> {
    let stack = Stack::start_with_clouds(&[Kind::Aws, Kind::Azure], 60, 60).await?;
    // EC2's t3a.nano is the cheapest machine the app fits on; Azure's B1ls costs a little more.
    stack.moto()?.post("/_canopy/faults/quota", json!({})).await?;
    stack.deploy(&hello_spec("web", 1)).await?;
    let app = stack.wait_running("web", 1, Duration::from_secs(90)).await?;
    let task = &running_tasks(&app)[0];
    answers(task).await?;
    let machine = machine_of(&stack, task).await?;
    assert_eq!(machine["provider"], "azure", "{machine:#}");
    assert_eq!(machine["state"], "ready");
    let machines = stack.admin.get("/v1/machines").await?;
    let refused = machines
        .as_array()
        .and_then(|m| m.iter().find(|m| m["provider"] == "aws").cloned())
        .expect("EC2 was tried first");
    assert!(refused["state_reason"].as_str().unwrap_or_default().starts_with("quota exceeded"), "{refused:#}");
    let vms = stack.emulator(Kind::Azure)?.instances().await?;
    assert!(vms.iter().any(|vm| vm.state == "running" && vm.user_data.contains("canopy-agent")), "{vms:?}");
    Ok(())
}

#[tokio::test]
async fn owned_hosts_are_used_before_anything_is_bought_and_powered_off_when_idle() -> anyhow::Result<()> {
    let stack = Stack::start_with_clouds(&[Kind::Aws, Kind::BareMetal], 3, 60).await?;
    let redfish = stack.emulator(Kind::BareMetal)?;
    let systems = redfish.instances().await?;
    let system = systems.first().expect("the emulator has systems");
    // Registering a host is admin work; bad input names the field and registers nothing.
    let mut host = json!({
        "name": "rack1-node0",
        "bmc_url": redfish.url,
        "bmc_username": "admin",
        "bmc_password": "password",
        "system_id": system.instance_id,
        "cpus": 4,
        "memory": "8Gi",
        "labels": {"rack": "r1"},
    });
    let mut bad = host.clone();
    bad["memory"] = "lots".into();
    let bad = stack.admin.call(Method::POST, "/v1/hosts", Some(bad)).await?;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(bad.body["error"]["message"].as_str().unwrap_or_default().starts_with("memory:"), "{}", bad.body);
    assert!(stack.admin.get("/v1/hosts").await?.as_array().is_some_and(Vec::is_empty), "nothing registered");
    let forbidden = stack.developer.call(Method::POST, "/v1/hosts", Some(host.clone())).await?;
    assert_eq!(forbidden.status, 403);
    stack.admin.call(Method::POST, "/v1/hosts", Some(host.clone())).await?.ok()?;
    host["name"] = "again".into();
    let duplicate = stack.admin.call(Method::POST, "/v1/hosts", Some(host)).await?;
    assert_eq!(duplicate.status, 409, "the same BMC system twice: {}", duplicate.body);
    let hosts = stack.developer.get("/v1/hosts").await?;
    assert!(!hosts.to_string().contains("password"), "the BMC password is never shown: {hosts}");

    stack.deploy(&hello_spec("web", 1)).await?;
    let app = stack.wait_running("web", 1, Duration::from_secs(60)).await?;
    let task = &running_tasks(&app)[0];
    answers(task).await?;
    let machine = machine_of(&stack, task).await?;
    assert_eq!(machine["provider"], "baremetal", "owned capacity first: {machine:#}");
    assert_eq!(machine["provider_id"], "rack1-node0");
    // Priced at the amortized reference rates (4 x 0.031611 per core-hour + 8 x 0.004237 per
    // GiB-hour), for the cost reports; to the planner it is free, being already paid for.
    assert_eq!(machine["price_micros"], 160_340, "{machine:#}");
    assert!(stack.moto()?.instances().await?.is_empty(), "nothing was bought on EC2");

    // Idle: the host is shut down through its BMC and freed for the next deploy.
    stack.developer.call(Method::DELETE, "/v1/apps/web", None).await?.ok()?;
    stack
        .wait("the idle host to be powered off", Duration::from_secs(30), || async {
            let systems = redfish.instances().await?;
            Ok(systems.iter().all(|s| s.state == "stopped"))
        })
        .await?;
    stack
        .wait("the host to be free again", Duration::from_secs(10), || async {
            let hosts = stack.admin.get("/v1/hosts").await?;
            Ok(hosts.as_array().is_some_and(|h| h.iter().all(|h| h["claim_key"].is_null())))
        })
        .await?;
    Ok(())
}
