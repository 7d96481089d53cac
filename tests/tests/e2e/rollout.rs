//! Rolling updates: a new version replaces the old one instance by instance, only once each
//! successor is healthy; a version that does not become healthy is rolled back by itself, and
//! people can roll back by hand.

use canopy_e2e::{Stack, hello_spec, running_tasks};
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

fn urls(app: &Value, version: i64) -> Vec<(String, String)> {
    running_tasks(app)
        .into_iter()
        .filter(|t| t["version"] == version)
        .map(|t| {
            let url = format!("http://{}:{}/", t["address"].as_str().unwrap_or_default(), t["ports"]["http"]);
            (t["id"].as_str().unwrap_or_default().to_string(), url)
        })
        .collect()
}

async fn wait_rollout(stack: &Stack, app: &str, wanted: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let started = std::time::Instant::now();
    loop {
        let last = stack.developer.get(&format!("/v1/apps/{app}")).await?;
        if wanted(&last) {
            return Ok(last);
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "{app}'s rollout did not get there: {last:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_version_that_never_turns_healthy_is_rolled_back_and_the_old_instances_keep_serving() -> anyhow::Result<()> {
    let stack = Stack::start(3).await?;
    let v1 = hello_spec("web", 2);
    stack.deploy(&v1).await?;
    let app = wait_rollout(&stack, "web", |a| a["rollout"] == "complete").await?;
    assert_eq!(app["stable_version"], 1);
    let old = urls(&app, 1);
    assert_eq!(old.len(), 2, "{app:#}");

    // Probe the old instances all through the update: at every moment at least one answers.
    let stop = Arc::new(AtomicBool::new(false));
    let (probes, all_down) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let prober = tokio::spawn({
        let (stop, probes, all_down) = (stop.clone(), probes.clone(), all_down.clone());
        let old: Vec<String> = old.iter().map(|(_, url)| url.clone()).collect();
        async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().expect("client");
            while !stop.load(Ordering::Relaxed) {
                let mut up = 0;
                for url in &old {
                    if client.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
                        up += 1;
                    }
                }
                probes.fetch_add(1, Ordering::Relaxed);
                if up == 0 {
                    all_down.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    // Version 2's health check always fails.
    let v2 = v1.replace(
        "[health]\ntype = \"http\"\npath = \"/\"\ninterval = \"500ms\"\ngrace = \"5s\"",
        "[health]\ntype = \"command\"\ncommand = [\"false\"]\ninterval = \"300ms\"\ngrace = \"1s\"\nfailures = 2",
    );
    assert_ne!(v1, v2);
    let accepted = stack.deploy(&v2).await?;
    assert_eq!(accepted["version"], 2);
    assert_eq!(accepted["rollout"], "progressing");
    let app = wait_rollout(&stack, "web", |a| a["version"] == 1).await?;
    let rollout = app["rollout"].as_str().unwrap_or_default();
    assert!(rollout.starts_with("rolled back from v2: instance "), "{rollout}");
    assert!(rollout.contains("health") || rollout.contains("restarted"), "{rollout}");
    let events = stack.admin.get("/v1/events?limit=50").await?;
    assert!(events.to_string().contains("app.rolled_back"), "{events:#}");
    stack
        .wait("version 2's instance to stop", Duration::from_secs(20), || async {
            let app = stack.developer.get("/v1/apps/web").await?;
            Ok(running_tasks(&app).iter().all(|t| t["version"] == 1))
        })
        .await?;
    stop.store(true, Ordering::Relaxed);
    prober.await?;
    assert!(probes.load(Ordering::Relaxed) > 10, "the prober ran");
    assert_eq!(all_down.load(Ordering::Relaxed), 0, "the old instances were never all down");
    let app = stack.developer.get("/v1/apps/web").await?;
    assert_eq!(urls(&app, 1), old, "the same old instances serve: none was restarted");
    Ok(())
}

#[tokio::test]
async fn a_good_version_rolls_out_and_can_be_rolled_back_by_hand() -> anyhow::Result<()> {
    let stack = Stack::start(2).await?;
    let v1 = hello_spec("web", 2);
    stack.deploy(&v1).await?;
    wait_rollout(&stack, "web", |a| a["rollout"] == "complete").await?;
    let v2 = v1.replace("stop_grace = \"2s\"", "stop_grace = \"2s\"\nenv = { GREETING = \"v2\" }");
    stack.deploy(&v2).await?;
    let app = wait_rollout(&stack, "web", |a| a["rollout"] == "complete" && a["stable_version"] == 2).await?;
    assert_eq!(urls(&app, 2).len(), 2, "{app:#}");

    let bad = stack.developer.call(Method::POST, "/v1/apps/web/rollback", Some(json!({"to": 7}))).await?;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(bad.body["error"]["message"].as_str().unwrap_or_default().starts_with("to:"), "{}", bad.body);
    let back = stack.developer.call(Method::POST, "/v1/apps/web/rollback", Some(json!({}))).await?.ok()?;
    assert_eq!(back["version"], 1, "{back:#}");
    let app = wait_rollout(&stack, "web", |a| a["rollout"] == "complete" && a["stable_version"] == 1).await?;
    assert_eq!(urls(&app, 1).len(), 2, "{app:#}");
    // The next deploy numbers after the newest version, not after the current one.
    let v3 = v1.replace("stop_grace = \"2s\"", "stop_grace = \"2s\"\nenv = { GREETING = \"v3\" }");
    assert_eq!(stack.deploy(&v3).await?["version"], 3);
    Ok(())
}

#[tokio::test]
async fn a_canary_step_pauses_the_rollout_until_it_is_promoted() -> anyhow::Result<()> {
    let stack = Stack::start(3).await?;
    let v1 = hello_spec("web", 3);
    stack.deploy(&v1).await?;
    wait_rollout(&stack, "web", |a| a["rollout"] == "complete").await?;
    let v2 = format!("{}\n[update]\ncanary = 1\n", v1.replace("stop_grace = \"2s\"", "stop_grace = \"3s\""));
    stack.deploy(&v2).await?;
    let app = wait_rollout(&stack, "web", |a| a["rollout"].as_str().is_some_and(|r| r.starts_with("paused"))).await?;
    let rollout = app["rollout"].as_str().unwrap_or_default();
    assert!(rollout.contains("canopy promote web"), "{rollout}");
    // Paused: one new instance, the other two still the old version, and it stays so.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let app = stack.developer.get("/v1/apps/web").await?;
    let serving = |version: i64| {
        app["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["version"] == version && t["state"] == "running" && t["desired"] == "run")
            .count()
    };
    assert_eq!((serving(2), serving(1)), (1, 2), "{app:#}");
    assert_eq!(app["stable_version"], 1);

    stack.developer.call(Method::POST, "/v1/apps/web/promote", Some(json!({}))).await?.ok()?;
    let app = wait_rollout(&stack, "web", |a| a["rollout"] == "complete" && a["stable_version"] == 2).await?;
    assert_eq!(urls(&app, 2).len(), 3, "{app:#}");
    let again = stack.developer.call(Method::POST, "/v1/apps/web/promote", Some(json!({}))).await?;
    assert_eq!(again.status, 409, "{}", again.body);
    Ok(())
}
