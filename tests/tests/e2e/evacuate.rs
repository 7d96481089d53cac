//! Evacuating a provider: the plan previewed, an evacuation started and aborted, then one
//! carried out with `canopy provider evacuate` while the service is probed over HTTP: every
//! workload leaves the provider, the service answers throughout, the job still completes, and
//! the provider's machines are terminated at the provider.

use canopy_e2e::{Stack, hello_spec, running_tasks};
use canopy_localstack::emulator::Kind;
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A job of two runs of `seconds` each, side by side.
fn job(name: &str, seconds: u32) -> String {
    format!(
        r#"
name = "{name}"
command = "sh"
args = ["-c", "sleep {seconds}"]
stop_grace = "1s"

[resources]
cpu = 100
memory = "32Mi"

[job]
completions = 2
parallelism = 2
"#
    )
}

/// Provider of each machine, by name.
async fn providers_of(stack: &Stack) -> anyhow::Result<Vec<(String, String, String)>> {
    let machines = stack.admin.get("/v1/machines").await?;
    Ok(machines
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let field = |k: &str| m[k].as_str().unwrap_or_default().to_string();
            (field("name"), field("provider"), field("state"))
        })
        .collect())
}

/// The providers the active tasks of `app` run on.
async fn task_providers(stack: &Stack, app: &str) -> anyhow::Result<Vec<String>> {
    let app = stack.developer.get(&format!("/v1/apps/{app}")).await?;
    let machines = providers_of(stack).await?;
    Ok(app["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["state"] == "running" || t["state"] == "assigned")
        .filter_map(|t| machines.iter().find(|m| t["machine"] == m.0.as_str()).map(|m| m.1.clone()))
        .collect())
}

/// Probes every healthy instance of `web` until told to stop; counts the rounds, and the
/// rounds in which no instance answered.
fn probe(url: String, token: String, stop: tokio::sync::watch::Receiver<bool>) -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (rounds, silent) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (r, s) = (rounds.clone(), silent.clone());
    tokio::spawn(async move {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap_or_default();
        while !*stop.borrow() {
            let endpoints: Value =
                match http.get(format!("{url}/v1/apps/web/endpoints")).bearer_auth(&token).send().await {
                    Ok(response) => response.json().await.unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                };
            let mut answered = false;
            for endpoint in endpoints.as_array().into_iter().flatten() {
                let target =
                    format!("http://{}:{}/", endpoint["address"].as_str().unwrap_or_default(), endpoint["port"]);
                if let Ok(response) = http.get(&target).send().await
                    && response.text().await.is_ok_and(|body| body.contains("hello from canopy"))
                {
                    answered = true;
                }
            }
            r.fetch_add(1, Ordering::Relaxed);
            if !answered {
                s.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (rounds, silent)
}

#[tokio::test]
async fn evacuating_aws_moves_a_service_and_a_job_to_azure_while_the_service_keeps_answering() -> anyhow::Result<()> {
    let stack = Stack::start_with_clouds(&[Kind::Aws, Kind::Azure], 60, 60).await?;
    // EC2 is the cheapest: the service and the job land there.
    stack.deploy(&hello_spec("web", 2)).await?;
    stack.wait_running("web", 2, Duration::from_secs(60)).await?;
    stack.deploy(&job("crunch", 20)).await?;
    stack
        .wait("both job runs to start", Duration::from_secs(30), || async {
            let app = stack.developer.get("/v1/apps/crunch").await?;
            Ok(app["tasks"].as_array().is_some_and(|t| t.iter().filter(|t| t["state"] == "running").count() == 2))
        })
        .await?;
    assert!(task_providers(&stack, "web").await?.iter().all(|p| p == "aws"));
    assert!(task_providers(&stack, "crunch").await?.iter().all(|p| p == "aws"));

    // Bad requests change nothing and say why.
    let path = "/v1/providers/aws/evacuation";
    let forbidden = stack.developer.call(Method::POST, path, Some(json!({"dry_run": true}))).await?;
    assert_eq!(forbidden.status, 403, "{}", forbidden.body);
    let bad = stack.admin.call(Method::POST, path, Some(json!({"batch_grace": "soon"}))).await?;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(bad.message().contains("batch_grace"), "{}", bad.body);
    let unknown = stack.admin.call(Method::POST, "/v1/providers/gcp/evacuation", Some(json!({}))).await?;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert_eq!(stack.admin.call(Method::DELETE, path, None).await?.status, 404, "nothing to abort");

    // The CLI's dry run, as an admin would run it.
    let admin = stack
        .admin
        .call(Method::POST, "/v1/tokens", Some(json!({"name": "ops", "role": "admin"})))
        .await?
        .ok()?["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let cli = |args: &[&str]| {
        let mut command = tokio::process::Command::new(&stack.binaries.canopy);
        command.args(["--api-url", &stack.control.url, "--token", &admin]).args(args).kill_on_drop(true);
        command
    };
    let output = cli(&["provider", "evacuate", "aws", "--dry-run", "--output", "json"]).output().await?;
    anyhow::ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let plan: Value = serde_json::from_slice(&output.stdout)?;
    let moves = plan["moves"].as_array().cloned().unwrap_or_default();
    assert_eq!(moves.len(), 4, "web x2 and crunch x2 move: {plan:#}");
    assert!(moves.iter().all(|m| m["to_provider"] == "azure"), "{plan:#}");
    assert!(!plan["purchases"].as_array().is_none_or(Vec::is_empty), "azure capacity is bought: {plan:#}");
    assert!(plan["purchases"].as_array().into_iter().flatten().all(|p| p["provider"] == "azure"));
    assert!(plan["releases"].as_array().is_some_and(|r| !r.is_empty()));
    assert!(plan["unplaced"].as_array().is_some_and(Vec::is_empty));
    assert!(plan["cost_after_micros"].as_u64() > Some(0) && plan["estimated_seconds"].as_u64() > Some(0));
    let output = cli(&["provider", "evacuate", "aws", "--dry-run"]).output().await?;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("hourly cost: $") && text.contains("bought first:") && text.contains("given back:"),
        "{text}"
    );
    assert!(
        stack.admin.get("/v1/providers").await?.to_string().contains("\"state\":\"active\""),
        "a preview changes nothing"
    );

    // Started and aborted at once: the provider takes work again and nothing is half-moved.
    let started = stack.admin.call(Method::POST, path, Some(json!({"batch_grace": "10m"}))).await?;
    assert_eq!(started.status, 201, "{}", started.body);
    let again = stack.admin.call(Method::POST, path, Some(json!({}))).await?;
    assert_eq!(again.status, 409, "{}", again.body);
    let aborted = stack.admin.call(Method::DELETE, path, None).await?.ok()?;
    assert_eq!(aborted["state"], "aborted", "{aborted:#}");
    stack
        .wait("web to settle on one task per instance", Duration::from_secs(30), || async {
            let app = stack.developer.get("/v1/apps/web").await?;
            let wanted = app["tasks"].as_array().map_or(0, |t| {
                t.iter().filter(|t| t["desired"] == "run" && t["state"] != "stopped" && t["state"] != "lost").count()
            });
            Ok(wanted == 2 && running_tasks(&app).len() == 2)
        })
        .await?;
    let aws = providers_of(&stack).await?;
    assert!(aws.iter().filter(|m| m.1 == "aws" && m.2 != "terminated").all(|m| m.2 == "ready"), "{aws:?}");

    // Carried out, followed by the CLI, while web is probed.
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (rounds, silent) = probe(stack.control.url.clone(), admin.clone(), stop_rx);
    let output = tokio::time::timeout(
        Duration::from_secs(150),
        cli(&["provider", "evacuate", "aws", "--batch-grace", "2s", "--timeout", "140"]).output(),
    )
    .await??;
    let _ = stop.send(true);
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "{text}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("aws evacuated"), "{text}");
    assert!(text.contains("wave"), "progress is shown: {text}");
    let (rounds, silent) = (rounds.load(Ordering::Relaxed), silent.load(Ordering::Relaxed));
    assert!(rounds >= 10, "web was probed throughout ({rounds} rounds)");
    assert_eq!(silent, 0, "web answered in every one of {rounds} probe rounds");

    // Everything left aws; the job completed; aws's machines are gone at the provider.
    let web = stack.wait_running("web", 2, Duration::from_secs(10)).await?;
    assert_eq!(running_tasks(&web).len(), 2);
    assert!(task_providers(&stack, "web").await?.iter().all(|p| p == "azure"));
    stack
        .wait("the job to complete", Duration::from_secs(60), || async {
            Ok(stack.developer.get("/v1/apps/crunch").await?["job_state"] == "succeeded")
        })
        .await?;
    let machines = providers_of(&stack).await?;
    assert!(machines.iter().filter(|m| m.1 == "aws").all(|m| m.2 == "terminated"), "{machines:?}");
    let live: Vec<_> =
        stack.moto()?.instances().await?.into_iter().filter(|i| i.state == "pending" || i.state == "running").collect();
    assert!(live.is_empty(), "no EC2 instance is left: {live:?}");
    let status = stack.admin.get(path).await?;
    assert_eq!(status["state"], "completed");
    let providers = stack.admin.get("/v1/providers").await?;
    let row = providers.as_array().and_then(|p| p.iter().find(|p| p["name"] == "aws").cloned()).unwrap_or_default();
    assert_eq!(row["state"], "evacuated", "{providers:#}");
    let events = stack.admin.get("/v1/events?limit=200").await?.to_string();
    for kind in ["evacuation.started", "evacuation.aborted", "evacuation.completed"] {
        assert!(events.contains(kind), "{kind} is in the audit log");
    }
    Ok(())
}
