//! P6, end-to-end batch throughput: 1,000 trivial jobs (`command = "true"`, 10 milli-cpus,
//! 4 MiB) submitted through the API (`PUT /v1/apps/{name}`, 16 in flight) to a control
//! service with local agents (real processes in real cgroups), timed from the first submit
//! until the last job is `succeeded`. Side by side, the same 1,000 jobs as separate
//! `sbatch --wrap true` on a single-node Slurm tuned for throughput (scripts/slurm-bench.sh,
//! which installs and starts it if missing); `CANOPY_BENCH_NO_SLURM=1` skips that side.
//!
//! Machines: `CANOPY_BENCH_MACHINES` (default 2) agents of 1 cpu / 1 GiB each, i.e. the
//! declared capacity of this 2-core host, the same capacity the Slurm node gets (CPUs=nproc);
//! each holds 100 of these jobs at once. Slurm gets the same number at once
//! (`OverSubscribe=FORCE:N`, N = 100 * machines / CPUs; its smallest allocation is a whole
//! CPU, so without it only nproc jobs run at once); `SLURM_BENCH_OVERSUBSCRIBE=1` gives
//! Slurm's default of one job per CPU.
//!
//! Ends with: `bench=batch jobs=1000 seconds= jobs_per_s= slurm_jobs_per_s= vs_slurm=`.

use anyhow::{Context, Result, bail};
use canopy_e2e::Stack;
use reqwest::Method;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const JOBS: usize = 1000;
const IN_FLIGHT: usize = 16;
/// Jobs of 10 milli-cpus and 4 MiB one 1 cpu / 1 GiB machine holds at once.
const SLOTS_PER_MACHINE: usize = 100;
const POLL: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(1800);

fn job_spec(name: &str) -> String {
    format!(
        "name = \"{name}\"\ncommand = \"true\"\nstop_grace = \"1s\"\n[resources]\ncpu = 10\nmemory = \"4Mi\"\n[job]\n"
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let machines: usize = std::env::var("CANOPY_BENCH_MACHINES").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let canopy = run_canopy(machines).await?;
    let slurm = if std::env::var("CANOPY_BENCH_NO_SLURM").is_ok_and(|v| v == "1") {
        Err("skipped (CANOPY_BENCH_NO_SLURM=1)".to_string())
    } else {
        // The same number of jobs at once as Canopy's machines hold (100 each): Slurm gives a
        // job at least one CPU, so it needs OverSubscribe=FORCE:N to run as many at once.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_cpu = (machines * SLOTS_PER_MACHINE).div_ceil(cpus);
        let per_cpu = std::env::var("SLURM_BENCH_OVERSUBSCRIBE").unwrap_or_else(|_| per_cpu.to_string());
        run_slurm(&per_cpu)
    };
    let (slurm_rate, vs_slurm) = match &slurm {
        Ok(rate) if *rate > 0.0 => {
            println!("slurm: {JOBS} jobs at {rate:.2} jobs/s");
            (*rate, format!("{:.1}", canopy.1 / rate))
        }
        Ok(_) => {
            println!("slurm: measured 0 jobs/s");
            (0.0, "nan".to_string())
        }
        Err(why) => {
            println!("slurm: not measured: {why}");
            (0.0, "nan".to_string())
        }
    };
    let (seconds, rate) = canopy;
    println!(
        "bench=batch jobs={JOBS} seconds={seconds:.2} jobs_per_s={rate:.1} slurm_jobs_per_s={slurm_rate:.2} vs_slurm={vs_slurm}"
    );
    Ok(())
}

/// Returns (seconds from the first submit to the last success, jobs per second).
async fn run_canopy(machines: usize) -> Result<(f64, f64)> {
    let stack = Arc::new(Stack::start(machines).await?);
    let bodies: Vec<(String, Value)> = (0..JOBS)
        .map(|i| {
            let name = format!("batch-{i:04}");
            let spec = canopy_core::spec::AppSpec::from_toml(&job_spec(&name))?;
            Ok((name, serde_json::to_value(&spec)?))
        })
        .collect::<Result<_>>()?;
    let bodies = Arc::new(bodies);
    println!("canopy: {machines} local machines (1 cpu / 1 GiB each), {JOBS} jobs, {IN_FLIGHT} submits in flight");

    let wall_start = SystemTime::now();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (stack, bodies, next) = (stack.clone(), bodies.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((name, body)) = bodies.get(i) else { return Ok::<_, anyhow::Error>(acked) };
                stack.developer.call(Method::PUT, &format!("/v1/apps/{name}"), Some(body.clone())).await?.ok()?;
                acked.push((name.clone(), started.elapsed().as_secs_f64()));
            }
        }));
    }

    // Meanwhile, watch the list until every job has succeeded.
    let mut seen_succeeded: HashMap<String, f64> = HashMap::new();
    let mut submitted_s = None;
    let mut acked: HashMap<String, f64> = HashMap::new();
    let mut progress = Instant::now();
    loop {
        if submitted_s.is_none() && workers.iter().all(|w| w.is_finished()) {
            for worker in workers.drain(..) {
                acked.extend(worker.await??);
            }
            submitted_s = Some(started.elapsed().as_secs_f64());
        }
        let list = stack.developer.get("/v1/apps").await?;
        let now = started.elapsed().as_secs_f64();
        for app in list.as_array().context("app list")? {
            let name = app["name"].as_str().unwrap_or_default();
            match app["job_state"].as_str() {
                Some("succeeded") => {
                    seen_succeeded.entry(name.to_string()).or_insert(now);
                }
                Some("failed") => bail!("job {name} failed: {}", app["job_message"]),
                _ => {}
            }
        }
        if seen_succeeded.len() >= JOBS {
            break;
        }
        if progress.elapsed() > Duration::from_secs(5) {
            progress = Instant::now();
            println!("  {:.1} s: {} succeeded", now, seen_succeeded.len());
        }
        if started.elapsed() > TIMEOUT {
            bail!("only {} of {JOBS} jobs succeeded within {TIMEOUT:?}", seen_succeeded.len());
        }
        // The list costs the database two counts per app: polled at 500 ms so the watching
        // does not slow the run down (the end is then known to within 0.5 s).
        tokio::time::sleep(POLL).await;
    }
    let seconds = seen_succeeded.values().copied().fold(0.0, f64::max);
    let rate = JOBS as f64 / seconds;
    let submitted_s = submitted_s.unwrap_or(seconds);
    println!(
        "canopy: {JOBS} submits accepted in {submitted_s:.2} s ({:.0}/s); all succeeded after {seconds:.2} s: {rate:.1} jobs/s",
        JOBS as f64 / submitted_s
    );

    breakdown(&stack, wall_start, &acked, &seen_succeeded).await?;
    controller_ticks(&stack.dir.join("control.log"), wall_start, seconds);
    Ok((seconds, rate))
}

/// Where each job's time went, from the runs' timestamps (the database's clock, this host's).
async fn breakdown(
    stack: &Stack,
    wall_start: SystemTime,
    acked: &HashMap<String, f64>,
    seen: &HashMap<String, f64>,
) -> Result<()> {
    let t0 = wall_start.duration_since(UNIX_EPOCH)?.as_secs_f64();
    let (mut queued, mut to_start, mut running, mut to_success, mut runs_total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0);
    let (mut first_start, mut last_finish) = (f64::MAX, 0.0f64);
    for (name, &ack) in acked {
        let app = stack.developer.get(&format!("/v1/apps/{name}")).await?;
        let tasks = app["tasks"].as_array().cloned().unwrap_or_default();
        runs_total += tasks.len();
        let Some(run) = tasks.iter().find(|t| t["state"] == "exited") else { continue };
        let time = |key: &str| run[key].as_str().and_then(parse_rfc3339).map(|t| t - t0);
        let (Some(created), Some(start), Some(finish)) = (time("created_at"), time("started_at"), time("finished_at"))
        else {
            continue;
        };
        first_start = first_start.min(start);
        last_finish = last_finish.max(finish);
        queued.push(created - ack);
        to_start.push(start - created);
        running.push(finish - start);
        if let Some(&s) = seen.get(name) {
            to_success.push(s - finish);
        }
    }
    println!(
        "canopy: {runs_total} runs for {JOBS} jobs; first run started at {first_start:.2} s, last ended at {last_finish:.2} s"
    );
    println!("  per job, p50 / p90 / max seconds:");
    for (what, samples) in [
        ("submit accepted -> run created (job controller)", &mut queued),
        ("run created -> first reported by its agent (slot, pickup, launch, heartbeat)", &mut to_start),
        ("first reported -> reported ended (0: both in one heartbeat)", &mut running),
        ("reported ended -> job seen succeeded (job controller, poll)", &mut to_success),
    ] {
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples.get(((samples.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
        println!("    {what:<76} {:>6.2} {:>6.2} {:>6.2}", at(0.5), at(0.9), at(1.0));
    }
    Ok(())
}

/// The app controller's pace during the run, from its `reconciled` log lines (one per step
/// that changed something): how many steps, and the gaps between them.
fn controller_ticks(log: &PathBuf, wall_start: SystemTime, seconds: f64) {
    let Ok(text) = std::fs::read_to_string(log) else { return };
    let t0 = wall_start.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let mut steps: Vec<(f64, u64, u64)> = Vec::new();
    for line in text.lines().filter(|l| l.contains("reconciled")) {
        let line = strip_ansi(line);
        let line = line.as_str();
        let Some(at) = line.split_whitespace().next().and_then(parse_rfc3339) else { continue };
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse::<u64>().ok())
                .unwrap_or(0)
        };
        let at = at - t0;
        if (0.0..=seconds + 1.0).contains(&at) {
            steps.push((at, field("task_changes="), field("placed=")));
        }
    }
    if steps.len() < 2 {
        println!("canopy: controller: {} logged steps during the run", steps.len());
        return;
    }
    let mut gaps: Vec<f64> = steps.windows(2).map(|w| w[1].0 - w[0].0).collect();
    gaps.sort_by(f64::total_cmp);
    let changes: u64 = steps.iter().map(|s| s.1).sum();
    let placed: u64 = steps.iter().map(|s| s.2).sum();
    let most_placed = steps.iter().map(|s| s.2).max().unwrap_or(0);
    println!(
        "canopy: controller: {} steps with changes in {seconds:.1} s (tick 250 ms); gap between them p50 {:.3} s, max {:.3} s; {changes} task changes, {placed} placements (at most {most_placed} in one step)",
        steps.len(),
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1]
    );
}

/// The text without terminal colour codes (the control service's log has them).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2026-11-22T06:30:01.123456Z`, or with
/// an explicit `+00:00` offset).
fn parse_rfc3339(text: &str) -> Option<f64> {
    let text = text.trim().trim_end_matches('Z').trim_end_matches("+00:00");
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min, s) = (t.next()?.parse::<f64>().ok()?, t.next()?.parse::<f64>().ok()?, t.next()?.parse::<f64>().ok()?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s)
}

/// Runs scripts/slurm-bench.sh and returns Slurm's jobs per second, or why it could not.
fn run_slurm(per_cpu: &str) -> std::result::Result<f64, String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-bench.sh");
    println!("slurm: running {} ({JOBS} jobs, up to {per_cpu} per CPU at once)", script.display());
    let output = std::process::Command::new("bash")
        .arg(&script)
        .env("SLURM_BENCH_OVERSUBSCRIBE", per_cpu)
        .arg(JOBS.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{}", stdout.lines().map(|l| format!("  {l}\n")).collect::<String>());
    let last = stdout.lines().rev().find(|l| l.contains("slurm_jobs_per_s=")).unwrap_or_default();
    let value = |key: &str| last.split_whitespace().find_map(|w| w.strip_prefix(key)).map(str::to_string);
    if let Some(reason) = stdout.lines().rev().find_map(|l| l.strip_prefix("slurm_unavailable=")) {
        return Err(reason.to_string());
    }
    if !output.status.success() {
        return Err(format!("{} exited with {}", script.display(), output.status));
    }
    value("slurm_jobs_per_s=").and_then(|v| v.parse().ok()).ok_or_else(|| "no slurm_jobs_per_s in its output".into())
}
