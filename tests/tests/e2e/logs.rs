//! Logs: `?follow=true` streams from the agent through the control service as the task
//! writes, across its restarts, and ends when the task does; `[logs]` limits bound what a task
//! keeps on disk while the tail still reads through rotated files.

use canopy_e2e::{Stack, running_tasks};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

/// A client of the control service with its own developer token, for streamed answers (the
/// harness's `Api` reads whole bodies).
async fn follower(stack: &Stack) -> anyhow::Result<(reqwest::Client, String)> {
    let token = stack
        .admin
        .call(Method::POST, "/v1/tokens", Some(json!({"name": "follower", "role": "developer", "team": "alpha"})))
        .await?
        .ok()?;
    let token = token["token"].as_str().unwrap_or_default().to_string();
    Ok((reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?, token))
}

/// Reads a streamed answer until `done` holds for what arrived, the stream ends, or `timeout`.
async fn read_stream(
    response: &mut reqwest::Response,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<(String, bool)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut text = String::new();
    while !done(&text) {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(chunk) => match chunk? {
                Some(chunk) => text.push_str(&String::from_utf8_lossy(&chunk)),
                None => return Ok((text, true)),
            },
            Err(_) => anyhow::bail!("timed out after {timeout:?}; got {text:?}"),
        }
    }
    Ok((text, false))
}

fn ticks(text: &str) -> Vec<u64> {
    text.lines().filter_map(|line| line.strip_prefix("tick ")?.parse().ok()).collect()
}

#[tokio::test]
async fn follow_streams_new_lines_as_they_are_written() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    stack
        .deploy(
            r#"
name = "ticker"
command = "python3"
args = ["-u", "-c", "import itertools, time\nfor i in itertools.count():\n    print(f'tick {i}')\n    time.sleep(0.1)"]
[resources]
cpu = 100
memory = "32Mi"
"#,
        )
        .await?;
    stack.wait_running("ticker", 1, Duration::from_secs(30)).await?;
    let (http, token) = follower(&stack).await?;
    let url = format!("{}/v1/apps/ticker/logs", stack.control.url);

    // Only what is written from now on (tail=0): 20 lines at 10 a second, arriving live.
    let mut response = http.get(&url).bearer_auth(&token).query(&[("follow", "true"), ("tail", "0")]).send().await?;
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
    let started = tokio::time::Instant::now();
    let (text, ended) = read_stream(&mut response, Duration::from_secs(15), |text| ticks(text).len() >= 21).await?;
    assert!(!ended, "the task runs on, so does the stream");
    assert!(started.elapsed() < Duration::from_secs(10), "lines arrive as written: {:?}", started.elapsed());
    let seen = ticks(&text);
    // The first line may be cut by tail=0; the rest follow one another, none lost or repeated.
    let whole = &seen[1..];
    assert!(whole.windows(2).all(|w| w[1] == w[0] + 1), "consecutive ticks: {seen:?}");
    drop(response);

    // Following from the tail: the tail comes first, then new lines.
    let mut response = http.get(&url).bearer_auth(&token).query(&[("follow", "true"), ("tail", "30")]).send().await?;
    let (text, _) = read_stream(&mut response, Duration::from_secs(15), |text| ticks(text).len() >= 5).await?;
    assert!(ticks(&text).windows(2).all(|w| w[1] == w[0] + 1), "{text:?}");

    // The plain tail is unchanged.
    let reply = stack.developer.call(Method::GET, "/v1/apps/ticker/logs?tail=100", None).await?;
    assert!(reply.status.is_success() && reply.body.as_str().unwrap_or_default().contains("tick "), "{reply:?}");
    Ok(())
}

#[tokio::test]
async fn follow_goes_on_across_restarts_and_ends_when_the_task_ends() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    // Runs three times in the same task (its sandbox keeps the count): fails twice, then
    // succeeds, which ends the task under `on-failure`.
    stack
        .deploy(
            r#"
name = "thrice"
command = "python3"
args = ["-u", "-c", "import os, time\nruns = len(open('runs').read()) + 1 if os.path.exists('runs') else 1\nopen('runs', 'a').write('x')\nfor i in range(3):\n    print(f'run {runs} line {i}')\n    time.sleep(0.3)\nraise SystemExit(0 if runs == 3 else 1)"]
[resources]
cpu = 100
memory = "32Mi"
[restart]
policy = "on-failure"
backoff = "500ms"
"#,
        )
        .await?;
    let (http, token) = follower(&stack).await?;
    let url = format!("{}/v1/apps/thrice/logs", stack.control.url);
    // As soon as the task has started somewhere (it may be between runs).
    let started = tokio::time::Instant::now();
    let mut response = loop {
        let response = http.get(&url).bearer_auth(&token).query(&[("follow", "true")]).send().await?;
        if response.status().is_success() {
            break response;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "no log to follow: {}", response.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (text, ended) = read_stream(&mut response, Duration::from_secs(30), |_| false).await?;
    assert!(ended, "the stream ends with the task");
    let expected: String = (1..=3).flat_map(|run| (0..3).map(move |line| format!("run {run} line {line}\n"))).collect();
    assert_eq!(text, expected, "every run's output, in order, through the restarts");
    Ok(())
}

#[tokio::test]
async fn a_log_past_its_limit_is_rotated_keeping_disk_use_bounded_and_the_tail_readable() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    // About 2 KB a second against a 1 KiB limit with two rotated files.
    stack
        .deploy(
            r#"
name = "chatty"
command = "python3"
args = ["-u", "-c", "import itertools, time\nfor i in itertools.count():\n    print(f'line {i:08} ' + 'x' * 80)\n    time.sleep(0.05)"]
[resources]
cpu = 100
memory = "32Mi"
[logs]
max_size = "1Ki"
max_files = 2
"#,
        )
        .await?;
    let app = stack.wait_running("chatty", 1, Duration::from_secs(30)).await?;
    let task = running_tasks(&app)[0]["id"].as_str().unwrap_or_default().to_string();
    let sandbox = stack.machines[0].state_dir.join("tasks").join(&task);
    let log_files = || -> Vec<(String, u64)> {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(&sandbox)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("stdout.log"))
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().map(|m| m.len()).unwrap_or(0)))
            .collect();
        files.sort();
        files
    };
    stack
        .wait("two rotated copies", Duration::from_secs(20), || async {
            Ok(log_files().iter().any(|(name, _)| name == "stdout.log.2"))
        })
        .await?;
    // For a few seconds more: never a third copy, and no file past the limit by more than
    // what the task writes between two of the agent's checks (half a second: about 1 KB).
    for _ in 0..20 {
        let files = log_files();
        let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
        assert!(names.iter().all(|n| ["stdout.log", "stdout.log.1", "stdout.log.2"].contains(n)), "{files:?}");
        let total: u64 = files.iter().map(|(_, size)| size).sum();
        assert!(files.iter().all(|(_, size)| *size <= 1024 + 2048), "bounded: {files:?}");
        assert!(total <= 3 * (1024 + 2048), "bounded: {total} bytes in {files:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The tail reads through the rotation: more than the live file holds, in order.
    let reply = stack.developer.call(Method::GET, "/v1/apps/chatty/logs?tail=2500", None).await?;
    let text = reply.body.as_str().unwrap_or_default().to_string();
    assert!(reply.status.is_success() && text.len() >= 2000, "{reply:?}");
    let numbers: Vec<u64> =
        text.lines().filter_map(|line| line.strip_prefix("line ")?.get(..8)?.parse().ok()).collect();
    assert!(numbers.len() >= 15, "{text:?}");
    // Copy-then-truncate may lose the odd line written during a rotation, never reorder.
    assert!(numbers.windows(2).all(|w| w[1] > w[0]), "in order: {numbers:?}");
    Ok(())
}
