//! Batch jobs: runs to completion with parallelism, retries with backoff, a deadline, and
//! dependencies between jobs (a DAG; cycles refused at submit time, naming the cycle).

use canopy_e2e::Stack;
use reqwest::Method;
use serde_json::Value;
use std::time::{Duration, Instant};

/// A job spec running `script` with `sh -c`, plus the `[job]` lines given.
fn job(name: &str, script: &str, job: &str) -> String {
    format!(
        r#"
name = "{name}"
command = "sh"
args = ["-c", {script:?}]
stop_grace = "1s"

[resources]
cpu = 100
memory = "32Mi"

[job]
backoff = "200ms"
{job}
"#
    )
}

async fn wait_ended(stack: &Stack, name: &str, within: Duration) -> anyhow::Result<Value> {
    let started = Instant::now();
    loop {
        let app = stack.developer.get(&format!("/v1/apps/{name}")).await?;
        if matches!(app["job_state"].as_str(), Some("succeeded" | "failed")) {
            return Ok(app);
        }
        anyhow::ensure!(started.elapsed() < within, "job {name} did not end in {within:?}: {app:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn runs(app: &Value) -> Vec<Value> {
    app["tasks"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_job_runs_its_completions_at_most_parallelism_at_a_time_and_succeeds() -> anyhow::Result<()> {
    let stack = Stack::start(2).await?;
    let dir = tempfile_dir(&stack, "parallel")?;
    // Each run notes how many runs are live at once, then exits 0.
    let script = format!(
        "d={dir}; echo $CANOPY_INSTANCE >> $d/indexes; touch $d/live.$$; ls $d | grep -c '^live' >> $d/seen; \
         sleep 0.5; rm $d/live.$$",
        dir = dir.display()
    );
    let accepted = stack.deploy(&job("crunch", &script, "completions = 5\nparallelism = 2")).await?;
    assert_eq!(accepted["job_state"], "waiting");
    let app = wait_ended(&stack, "crunch", Duration::from_secs(60)).await?;
    assert_eq!(app["job_state"], "succeeded", "{app:#}");
    assert_eq!(app["job_message"], "5/5 completions");
    let runs = runs(&app);
    assert_eq!(runs.iter().filter(|r| r["state"] == "exited").count(), 5, "{runs:#?}");
    let seen = std::fs::read_to_string(dir.join("seen"))?;
    let most = seen.lines().filter_map(|l| l.trim().parse::<u32>().ok()).max().unwrap_or(0);
    assert!((1..=2).contains(&most), "at most 2 runs at once, saw {most}: {seen}");
    let mut indexes: Vec<u32> =
        std::fs::read_to_string(dir.join("indexes"))?.lines().filter_map(|l| l.trim().parse().ok()).collect();
    indexes.sort();
    assert_eq!(indexes, vec![0, 1, 2, 3, 4], "each completion index ran once (CANOPY_INSTANCE)");
    Ok(())
}

#[tokio::test]
async fn failed_runs_are_retried_then_the_job_fails_and_a_deadline_ends_a_job() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    let dir = tempfile_dir(&stack, "retries")?;
    // Fails twice, then succeeds: with 3 retries the job succeeds on the third run.
    let flaky = format!("n=$(cat {d}/n 2>/dev/null || echo 0); echo $((n+1)) > {d}/n; [ $n -ge 2 ]", d = dir.display());
    stack.deploy(&job("flaky", &flaky, "retries = 3")).await?;
    let app = wait_ended(&stack, "flaky", Duration::from_secs(60)).await?;
    assert_eq!(app["job_state"], "succeeded", "{app:#}");
    let states: Vec<String> = runs(&app).iter().map(|r| r["state"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(states.iter().filter(|s| *s == "failed").count(), 2, "{states:?}");

    stack.deploy(&job("doomed", "echo no >&2; exit 3", "retries = 1")).await?;
    let app = wait_ended(&stack, "doomed", Duration::from_secs(60)).await?;
    assert_eq!(app["job_state"], "failed");
    let why = app["job_message"].as_str().unwrap_or_default();
    assert!(why.starts_with("index 0 failed 2 times (retries = 1)"), "{why}");
    assert_eq!(runs(&app).len(), 2, "one run and one retry");

    stack.deploy(&job("slow", "sleep 60", "deadline = \"2s\"")).await?;
    let app = wait_ended(&stack, "slow", Duration::from_secs(30)).await?;
    assert_eq!(app["job_state"], "failed");
    assert_eq!(app["job_message"], "its deadline of 2s passed");
    stack
        .wait("the slow run to be stopped", Duration::from_secs(15), || async {
            let app = stack.developer.get("/v1/apps/slow").await?;
            Ok(runs(&app).iter().all(|r| r["state"] != "running"))
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn jobs_run_in_dependency_order_a_failed_parent_stops_its_children_and_cycles_are_refused() -> anyhow::Result<()>
{
    let stack = Stack::start(1).await?;
    stack.deploy(&job("extract", "sleep 3", "")).await?;
    stack.deploy(&job("load", "true", "depends_on = [\"extract\"]")).await?;
    stack
        .wait("load to wait for extract", Duration::from_secs(2), || async {
            let load = stack.developer.get("/v1/apps/load").await?;
            Ok(load["job_state"] == "waiting" && load["job_message"] == "waiting for extract")
        })
        .await?;
    let load = wait_ended(&stack, "load", Duration::from_secs(60)).await?;
    assert_eq!(load["job_state"], "succeeded", "{load:#}");
    let extract = stack.developer.get("/v1/apps/extract").await?;
    let extract_ended = runs(&extract)[0]["finished_at"].as_str().unwrap_or_default().to_string();
    let load_created = runs(&load)[0]["created_at"].as_str().unwrap_or_default().to_string();
    assert!(load_created > extract_ended, "load ran after extract: {load_created} vs {extract_ended}");

    stack.deploy(&job("broken", "exit 1", "retries = 0")).await?;
    stack.deploy(&job("report", "true", "depends_on = [\"broken\"]")).await?;
    let report = wait_ended(&stack, "report", Duration::from_secs(60)).await?;
    assert_eq!(report["job_state"], "failed");
    assert_eq!(report["job_message"], "dependency broken failed");
    assert!(runs(&report).is_empty(), "a child of a failed job never runs");

    // extract <- load; making extract depend on load closes a cycle.
    let cycle = job("extract", "sleep 3", "depends_on = [\"load\"]");
    let spec: Value = serde_json::to_value(canopy_core::spec::AppSpec::from_toml(&cycle)?)?;
    let refused = stack.developer.call(Method::PUT, "/v1/apps/extract", Some(spec)).await?;
    assert_eq!(refused.status, 422, "{}", refused.body);
    let message = refused.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("job.depends_on: cycle: "), "{message}");
    assert!(message.contains("extract") && message.contains("load"), "{message}");
    let unknown = job("orphan", "true", "depends_on = [\"nobody\"]");
    let spec: Value = serde_json::to_value(canopy_core::spec::AppSpec::from_toml(&unknown)?)?;
    let refused = stack.developer.call(Method::PUT, "/v1/apps/orphan", Some(spec)).await?;
    assert_eq!(refused.status, 422, "{}", refused.body);
    Ok(())
}

/// A directory the job's runs (other processes, same machine) and the test both see; removed
/// with the stack's directory.
fn tempfile_dir(stack: &Stack, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = stack.dir.join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test]
async fn a_scheduled_job_starts_a_run_of_its_own_at_each_due_minute() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    let spec = job("tick", "echo tick", "schedule = \"* * * * *\"\ntime_zone = \"Europe/Berlin\"");
    stack.deploy(&spec).await?;
    stack
        .wait("the schedule to be set up", Duration::from_secs(5), || async {
            let tick = stack.developer.get("/v1/apps/tick").await?;
            Ok(tick["job_state"] == "scheduled")
        })
        .await?;
    let tick = stack.developer.get("/v1/apps/tick").await?;
    let message = tick["job_message"].as_str().unwrap_or_default();
    assert!(message.starts_with("* * * * * (Europe/Berlin); next run "), "{message}");
    assert!(runs(&tick).is_empty(), "the scheduled job itself runs nothing");

    // Within the next minute (plus the run itself) a run named after its instant succeeds.
    let started = Instant::now();
    let run = loop {
        let apps = stack.developer.get("/v1/apps").await?;
        let found = apps
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["name"].as_str().is_some_and(|n| n.starts_with("tick-")) && a["job_state"] == "succeeded");
        if let Some(found) = found {
            break found.clone();
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(90), "no scheduled run succeeded: {apps:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let name = run["name"].as_str().unwrap_or_default();
    assert_eq!(name.len(), "tick-".len() + 12, "{name}");
    let events = stack.developer.get("/v1/events?limit=50").await?;
    let started = events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "job.run_started" && e["detail"]["run"] == name)
        .count();
    assert_eq!(started, 1, "each instant runs once: {events:#}");
    Ok(())
}

#[tokio::test]
async fn a_high_priority_app_preempts_a_low_priority_batch_run_which_runs_again_later() -> anyhow::Result<()> {
    // One machine of 1 cpu: the batch run takes 800m, the app needs 500m.
    let stack = Stack::start(1).await?;
    let batch = job("backfill", "sleep 30", "retries = 0").replace("cpu = 100", "cpu = 800");
    stack.deploy(&batch).await?;
    stack
        .wait("the batch run to start", Duration::from_secs(20), || async {
            let backfill = stack.developer.get("/v1/apps/backfill").await?;
            Ok(runs(&backfill).iter().any(|r| r["state"] == "running"))
        })
        .await?;
    let urgent = canopy_e2e::hello_spec("urgent", 1).replace("cpu = 100", "cpu = 500");
    let urgent = format!("priority = 10\n{urgent}");
    stack.deploy(&urgent).await?;
    stack.wait_running("urgent", 1, Duration::from_secs(30)).await?;
    let backfill = stack.developer.get("/v1/apps/backfill").await?;
    let first = runs(&backfill).into_iter().find(|r| r["message"].as_str().is_some_and(|m| m.starts_with("preempted")));
    let first = first.ok_or_else(|| anyhow::anyhow!("no preempted run: {backfill:#}"))?;
    assert_ne!(first["state"], "running", "{first:#}");
    // Preemption is not a failure: the job goes on (retries = 0 would have failed it) and its
    // index waits for room again.
    assert_eq!(backfill["job_state"], "running", "{backfill:#}");
    stack
        .wait("the index to be queued again", Duration::from_secs(10), || async {
            let backfill = stack.developer.get("/v1/apps/backfill").await?;
            Ok(runs(&backfill).iter().any(|r| r["state"] == "pending"))
        })
        .await?;
    // Once the app is gone, the batch run gets its room back.
    stack.developer.call(Method::DELETE, "/v1/apps/urgent", None).await?.ok()?;
    stack
        .wait("the batch index to run again", Duration::from_secs(30), || async {
            let backfill = stack.developer.get("/v1/apps/backfill").await?;
            Ok(runs(&backfill).iter().any(|r| r["state"] == "running"))
        })
        .await?;
    Ok(())
}
