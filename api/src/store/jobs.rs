//! Batch jobs: apps whose spec has a `[job]` section. The job controller step (called from
//! the app controller's, in its transaction) waits for dependencies, keeps up to
//! `parallelism` runs going until each of the `completions` indexes has exited 0, retries
//! failed runs after a doubling backoff, and ends the job as `succeeded` or `failed` (retries
//! used up, deadline passed, a dependency failed).

use super::{Result, StoreError, record};
use canopy_core::cron::{ConcurrencyPolicy, MissedRunPolicy, StartDecision, decide_start};
use canopy_core::spec::{AppSpec, Concurrency, JobSpec, Missed};
use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// One run of a job index.
#[derive(sqlx::FromRow)]
pub(super) struct Run {
    pub app_id: Uuid,
    id: Uuid,
    version: i32,
    instance: i32,
    state: String,
    desired: String,
    message: String,
    /// Milliseconds since it ended, for ended runs.
    ended_ms: Option<i64>,
}

impl Run {
    fn active(&self) -> bool {
        matches!(self.state.as_str(), "pending" | "assigned" | "running")
    }
}

pub(super) struct JobApp<'a> {
    pub id: Uuid,
    pub team: Uuid,
    pub name: &'a str,
    pub version: i32,
    pub spec: &'a AppSpec,
    pub job: &'a JobSpec,
    /// As stored: `job_state`, `job_message`, and how long ago it started.
    pub state: &'a str,
    pub message: &'a str,
    pub running_ms: Option<i64>,
    /// Its tasks, oldest first (see [`load_runs`]).
    pub runs: &'a [Run],
}

/// The tasks of these jobs, oldest first, in one query for the whole step.
pub(super) async fn load_runs(tx: &mut Transaction<'static, Postgres>, jobs: &[Uuid]) -> Result<Vec<Run>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(
        "SELECT app_id, id, version, instance, state, desired, message,
                (EXTRACT(EPOCH FROM now() - finished_at) * 1000)::bigint AS ended_ms
         FROM tasks WHERE app_id = ANY($1) ORDER BY created_at",
    )
    .bind(jobs)
    .fetch_all(&mut **tx)
    .await?)
}

/// Advances one job; returns how many changes it made.
pub(super) async fn reconcile_job(tx: &mut Transaction<'static, Postgres>, app: JobApp<'_>) -> Result<usize> {
    if app.job.schedule.is_some() {
        return reconcile_schedule(tx, app).await;
    }
    let (state, running_ms, runs) = (app.state, app.running_ms, app.runs);
    // Runs of an earlier version of the job are not wanted.
    let unwanted: Vec<Uuid> =
        runs.iter().filter(|r| r.desired == "run" && r.active() && r.version != app.version).map(|r| r.id).collect();
    let mut changes = stop(tx, &unwanted).await?;

    for dependency in &app.job.depends_on {
        let theirs: Option<String> =
            sqlx::query_scalar("SELECT job_state FROM apps WHERE team_id = $1 AND name = $2 AND deleted_at IS NULL")
                .bind(app.team)
                .bind(dependency)
                .fetch_optional(&mut **tx)
                .await?;
        match theirs.as_deref() {
            Some("succeeded") => {}
            Some("failed") => return finish(tx, &app, false, &format!("dependency {dependency} failed")).await,
            None => return finish(tx, &app, false, &format!("dependency {dependency} was deleted")).await,
            Some(_) => {
                let message = format!("waiting for {dependency}");
                return set_state(tx, &app, "waiting", &message).await.map(|c| c + changes);
            }
        }
    }
    if state != "running" {
        sqlx::query("UPDATE apps SET job_state = 'running', job_message = '', started_at = now() WHERE id = $1")
            .bind(app.id)
            .execute(&mut **tx)
            .await?;
        return Ok(changes + 1);
    }
    if let Some(deadline) = app.job.deadline
        && running_ms.is_some_and(|ms| ms > deadline.0 as i64)
    {
        return finish(tx, &app, false, &format!("its deadline of {deadline} passed")).await;
    }

    let mine: Vec<&Run> = runs.iter().filter(|r| r.version == app.version).collect();
    let completions = app.job.completions as i32;
    let succeeded = |index: i32| mine.iter().any(|r| r.instance == index && r.state == "exited");
    let done = (0..completions).filter(|&i| succeeded(i)).count();
    if done == completions as usize {
        return finish(tx, &app, true, &format!("{done}/{completions} completions")).await;
    }
    let mut active = mine.iter().filter(|r| r.active() && r.desired == "run").count() as u32;
    for index in 0..completions {
        if succeeded(index) || mine.iter().any(|r| r.instance == index && r.active() && r.desired == "run") {
            continue;
        }
        let failures: Vec<&&Run> =
            mine.iter().filter(|r| r.instance == index && matches!(r.state.as_str(), "failed" | "lost")).collect();
        if failures.len() as u32 > app.job.retries {
            let last = failures.last().map(|r| r.message.as_str()).unwrap_or_default();
            let why = format!("index {index} failed {} times (retries = {}): {last}", failures.len(), app.job.retries);
            return finish(tx, &app, false, &why).await;
        }
        if active >= app.job.parallelism {
            continue;
        }
        // Backoff after a failure: `backoff`, doubled for each earlier failure, at most 2^10.
        if let Some(last) = failures.last() {
            let wait = app.job.backoff.0.saturating_mul(1u64 << (failures.len() - 1).min(10)) as i64;
            if last.ended_ms.unwrap_or(i64::MAX) < wait {
                continue;
            }
        }
        super::tasks::insert_task(tx, app.id, app.version, index, app.spec).await?;
        active += 1;
        changes += 1;
    }
    let message = format!("{done}/{completions} completions, {active} running");
    Ok(changes + set_state(tx, &app, "running", &message).await?)
}

async fn stop(tx: &mut Transaction<'static, Postgres>, tasks: &[Uuid]) -> Result<usize> {
    if tasks.is_empty() {
        return Ok(0);
    }
    sqlx::query("UPDATE tasks SET desired = 'stop' WHERE id = ANY($1)").bind(tasks).execute(&mut **tx).await?;
    Ok(tasks.len())
}

/// Records the job's state and message, when they changed.
async fn set_state(
    tx: &mut Transaction<'static, Postgres>,
    app: &JobApp<'_>,
    state: &str,
    message: &str,
) -> Result<usize> {
    if app.state == state && app.message == message {
        return Ok(0);
    }
    let changed = sqlx::query(
        "UPDATE apps SET job_state = $2, job_message = $3 WHERE id = $1 AND (job_state, job_message) <> ($2, $3)",
    )
    .bind(app.id)
    .bind(state)
    .bind(message)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(changed as usize)
}

/// Ends the job (its runs still going are stopped); ended jobs are not looked at again.
async fn finish(tx: &mut Transaction<'static, Postgres>, app: &JobApp<'_>, success: bool, why: &str) -> Result<usize> {
    let state = if success { "succeeded" } else { "failed" };
    sqlx::query(
        "UPDATE tasks SET desired = 'stop' WHERE app_id = $1 AND desired = 'run'
           AND state IN ('pending', 'assigned', 'running')",
    )
    .bind(app.id)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE apps SET job_state = $2, job_message = $3, finished_at = now() WHERE id = $1")
        .bind(app.id)
        .bind(state)
        .bind(why)
        .execute(&mut **tx)
        .await?;
    let detail = serde_json::json!({"version": app.version, "reason": why});
    record(tx, "system", &format!("job.{state}"), app.name, Some(app.team), detail).await?;
    tracing::info!(job = app.name, state, reason = why, "job ended");
    Ok(1)
}

/// A scheduled job: starts a run (a job of its own) for each due instant, as its policies say.
async fn reconcile_schedule(tx: &mut Transaction<'static, Postgres>, app: JobApp<'_>) -> Result<usize> {
    let schedule = match app.job.cron() {
        Some(Ok(schedule)) => schedule,
        Some(Err(e)) => return Err(StoreError::Corrupt(format!("job {}: schedule: {e}", app.name))),
        None => return Ok(0),
    };
    let (last, created): (Option<DateTime<Utc>>, DateTime<Utc>) =
        sqlx::query_as("SELECT cron_last, created_at FROM apps WHERE id = $1")
            .bind(app.id)
            .fetch_one(&mut **tx)
            .await?;
    let policy = match app.job.missed {
        Missed::Skip => MissedRunPolicy::skip(),
        Missed::RunOnce => MissedRunPolicy::run_once(
            app.job.starting_deadline.map(|d| chrono::Duration::milliseconds(d.0.min(i64::MAX as u64) as i64)),
        ),
    };
    let now = Utc::now();
    let due = schedule.due(last, now, policy, created);
    let mut changes = 0;
    if let Some(through) = due.handled_through {
        for missed in &due.skipped {
            let detail = serde_json::json!({"instant": missed, "reason": "missed"});
            record(tx, "scheduler", "job.run_skipped", app.name, Some(app.team), detail).await?;
        }
        if let Some(instant) = due.run {
            let active: Vec<Uuid> = sqlx::query_scalar(
                "SELECT id FROM apps WHERE parent_id = $1 AND deleted_at IS NULL AND job_state IN ('waiting', 'running')",
            )
            .bind(app.id)
            .fetch_all(&mut **tx)
            .await?;
            let concurrency = match app.job.concurrency {
                Concurrency::Allow => ConcurrencyPolicy::Allow,
                Concurrency::Forbid => ConcurrencyPolicy::Forbid,
                Concurrency::Replace => ConcurrencyPolicy::Replace,
            };
            match decide_start(concurrency, !active.is_empty()) {
                StartDecision::SkipPreviousActive => {
                    let detail = serde_json::json!({"instant": instant, "reason": "the previous run is still active"});
                    record(tx, "scheduler", "job.run_skipped", app.name, Some(app.team), detail).await?;
                }
                decision => {
                    if decision == StartDecision::StopPreviousThenStart {
                        replace_runs(tx, &active, instant).await?;
                    }
                    start_run(tx, &app, instant).await?;
                }
            }
        }
        sqlx::query("UPDATE apps SET cron_last = $2 WHERE id = $1")
            .bind(app.id)
            .bind(through)
            .execute(&mut **tx)
            .await?;
        changes += 1;
    }
    let next = due.next.map_or("never".to_string(), |next| next.to_rfc3339());
    Ok(changes + set_state(tx, &app, "scheduled", &format!("{schedule}; next run {next}")).await?)
}

/// Ends the runs a new one replaces (their tasks are stopped).
async fn replace_runs(tx: &mut Transaction<'static, Postgres>, runs: &[Uuid], instant: DateTime<Utc>) -> Result<()> {
    sqlx::query("UPDATE apps SET job_state = 'failed', job_message = $2, finished_at = now() WHERE id = ANY($1)")
        .bind(runs)
        .bind(format!("replaced by the run scheduled at {}", instant.to_rfc3339()))
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE tasks SET desired = 'stop' WHERE app_id = ANY($1) AND desired = 'run'
           AND state IN ('pending', 'assigned', 'running')",
    )
    .bind(runs)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Starts the run for `instant`: a job of its own, `<name>-<yyyymmddhhmm>` (UTC), with the
/// scheduled job's spec without the schedule, bound by what the policies bind the scheduled
/// job to. A run that exists already is not started again.
async fn start_run(tx: &mut Transaction<'static, Postgres>, app: &JobApp<'_>, instant: DateTime<Utc>) -> Result<()> {
    let name = format!("{}-{}", app.name, instant.format("%Y%m%d%H%M"));
    let mut spec = app.spec.clone();
    spec.name = name.clone();
    if let Some(job) = &mut spec.job {
        job.schedule = None;
        job.time_zone = None;
    }
    let spec_json = serde_json::to_value(&spec).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let id = Uuid::new_v4();
    let created = sqlx::query(
        "INSERT INTO apps (id, team_id, name, version, instances, rollout, job_state, parent_id, policy_binding)
         VALUES ($1, $2, $3, 1, 1, 'progressing', 'waiting', $4, (SELECT policy_binding FROM apps WHERE id = $4))
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(app.team)
    .bind(&name)
    .bind(app.id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if created == 0 {
        return Ok(());
    }
    sqlx::query("INSERT INTO app_versions (app_id, version, spec) VALUES ($1, 1, $2)")
        .bind(id)
        .bind(&spec_json)
        .execute(&mut **tx)
        .await?;
    let detail = serde_json::json!({"instant": instant, "run": name});
    record(tx, "scheduler", "job.run_started", app.name, Some(app.team), detail).await?;
    Ok(())
}
