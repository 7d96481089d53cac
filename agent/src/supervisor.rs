//! The task supervisor: keeps the machine's tasks equal to the desired set.
//!
//! Each task has one tokio task that starts it, watches it (exit, health), restarts it under
//! its policy with backoff, and stops it gracefully when asked. The supervisor itself is
//! level-triggered: `reconcile` takes the full desired set and starts or stops the difference,
//! so repeating it is harmless. A record per task on disk lets a restarted agent re-adopt
//! processes that are still alive instead of starting them twice.

use crate::artifacts::ArtifactCache;
use crate::cgroup::{Cgroup, Cgroups};
use crate::health;
use crate::image::runtime::{self, OciRuntime};
use crate::image::{Image, ImageStore};
use crate::launch::{self, Invocation, TaskPaths};
use crate::logs;
use crate::meter::UsageMeter;
use crate::prepare::{self, PrepareError};
use canopy_core::spec::RestartPolicy;
use canopy_core::wire::{ExitStatus, RunState, TaskAssignment, TaskReport};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

/// What every task on this machine shares.
pub struct Context {
    pub cgroups: Cgroups,
    /// Parent cgroup of the tasks' cgroups, relative to the hierarchy root.
    pub cgroup_parent: PathBuf,
    pub state_dir: PathBuf,
    /// The address tasks bind to and are reached at.
    pub address: String,
    pub http: reqwest::Client,
    /// For artifacts and image blobs: no total timeout (large files), but connect and read
    /// timeouts.
    pub fetch_http: reqwest::Client,
    pub artifacts: ArtifactCache,
    pub images: ImageStore,
    /// crun or runc, when installed: image tasks need one.
    pub runtime: Option<OciRuntime>,
    /// The control service, for uploaded artifacts, and the agent's token once joined.
    pub control_url: String,
    pub agent_token: Arc<RwLock<Option<String>>>,
    /// Signalled when a task has ended for good, so the agent reports it without waiting
    /// for the next heartbeat (the slot it held is free sooner).
    pub ended: tokio::sync::Notify,
}

impl Context {
    pub fn paths(&self, task: &Uuid) -> TaskPaths {
        TaskPaths::new(&self.state_dir, &self.cgroup_parent, task)
    }
}

#[derive(Clone, Debug)]
struct Status {
    state: RunState,
    pid: Option<u32>,
    ports: BTreeMap<String, u16>,
    healthy: Option<bool>,
    restarts: u32,
    last_exit: Option<ExitStatus>,
    meter: UsageMeter,
    /// While preparing: what is being fetched.
    progress: Option<String>,
}

/// What is kept on disk for re-adoption after an agent restart.
#[derive(Serialize, Deserialize)]
struct TaskRecord {
    assignment: TaskAssignment,
    pid: u32,
    start_time: u64,
    ports: BTreeMap<String, u16>,
    restarts: u32,
}

struct Handle {
    status: Arc<Mutex<Status>>,
    stop: watch::Sender<bool>,
}

pub struct Supervisor {
    ctx: Arc<Context>,
    tasks: HashMap<Uuid, Handle>,
}

fn lock(status: &Mutex<Status>) -> std::sync::MutexGuard<'_, Status> {
    status.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Supervisor {
    pub fn new(ctx: Arc<Context>) -> Supervisor {
        Supervisor { ctx, tasks: HashMap::new() }
    }

    /// Re-adopts tasks left running by a previous agent process: same pid, same start time,
    /// still inside its cgroup. Records of dead processes are dropped; the desired set will
    /// start those tasks again.
    pub fn adopt_existing(&mut self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.ctx.state_dir.join("tasks")) else { return 0 };
        for entry in entries.flatten() {
            let path = entry.path().join("task.json");
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let Ok(record) = serde_json::from_str::<TaskRecord>(&text) else {
                tracing::warn!(path = %path.display(), "unreadable task record dropped");
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let task_id = record.assignment.task_id;
            let paths = self.ctx.paths(&task_id);
            let cgroup = self.ctx.cgroups.open(&paths.cgroup);
            let same_process = launch::alive(record.pid)
                && launch::start_time(record.pid) == Some(record.start_time)
                && cgroup.pids().contains(&record.pid);
            if !same_process {
                tracing::info!(task = %task_id, pid = record.pid, "task ended while the agent was away");
                cgroup.signal_all(libc::SIGKILL);
                let _ = cgroup.remove();
                let _ = std::fs::remove_file(&path);
                continue;
            }
            tracing::info!(task = %task_id, pid = record.pid, "re-adopted running task");
            let status = Status {
                state: RunState::Running,
                pid: Some(record.pid),
                ports: record.ports,
                healthy: None,
                restarts: record.restarts,
                last_exit: None,
                meter: UsageMeter::default(),
                progress: None,
            };
            self.spawn(record.assignment, status, Some(record.pid));
        }
        self.tasks.len()
    }

    /// Reports for every task this agent knows, final ones included until the control
    /// service has seen them.
    pub fn reports(&self) -> Vec<TaskReport> {
        let mut reports: Vec<TaskReport> = self
            .tasks
            .iter()
            .map(|(id, handle)| {
                let mut guard = lock(&handle.status);
                let usage = if guard.state.is_final() {
                    guard.meter.latest()
                } else {
                    let reading = self.ctx.cgroups.open(&self.ctx.paths(id).cgroup).usage();
                    guard.meter.sample(Instant::now(), reading)
                };
                let status = guard.clone();
                drop(guard);
                TaskReport {
                    task_id: *id,
                    state: status.state,
                    pid: status.pid,
                    ports: status.ports,
                    healthy: status.healthy,
                    restarts: status.restarts,
                    last_exit: status.last_exit,
                    usage,
                    progress: status.progress,
                }
            })
            .collect();
        reports.sort_by_key(|r| r.task_id);
        reports
    }

    /// Makes the running set equal to `desired`. Tasks not desired are stopped; final tasks
    /// that the control service has seen (`acknowledged`) and no longer wants are forgotten.
    pub fn reconcile(&mut self, desired: Vec<TaskAssignment>, acknowledged: &HashSet<Uuid>) {
        let wanted: HashSet<Uuid> = desired.iter().map(|a| a.task_id).collect();
        for assignment in desired {
            if !self.tasks.contains_key(&assignment.task_id) {
                match allocate_ports(&self.ctx.address, &assignment.ports) {
                    Ok(ports) => {
                        let preparing = !assignment.artifacts.is_empty() || assignment.image.is_some();
                        let status = Status {
                            state: if preparing { RunState::Preparing } else { RunState::Running },
                            pid: None,
                            ports,
                            healthy: None,
                            restarts: 0,
                            last_exit: None,
                            meter: UsageMeter::default(),
                            progress: None,
                        };
                        self.spawn(assignment, status, None);
                    }
                    Err(error) => tracing::error!(task = %assignment.task_id, %error, "cannot allocate ports"),
                }
            }
        }
        let mut forget = Vec::new();
        for (id, handle) in &self.tasks {
            if wanted.contains(id) {
                continue;
            }
            let state = lock(&handle.status).state;
            if state.is_final() {
                if acknowledged.contains(id) {
                    forget.push(*id);
                }
            } else {
                let _ = handle.stop.send(true);
            }
        }
        for id in forget {
            self.tasks.remove(&id);
        }
    }

    fn spawn(&mut self, assignment: TaskAssignment, status: Status, adopted: Option<u32>) {
        let status = Arc::new(Mutex::new(status));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task_id = assignment.task_id;
        let (ctx, task_status) = (self.ctx.clone(), status.clone());
        tokio::spawn(async move {
            run_task(ctx.clone(), assignment, task_status, stop_rx, adopted).await;
            ctx.ended.notify_one();
        });
        self.tasks.insert(task_id, Handle { status, stop: stop_tx });
    }
}

fn allocate_ports(address: &str, names: &[String]) -> std::io::Result<BTreeMap<String, u16>> {
    // Bind port 0 to let the kernel choose free ports; all listeners are held until every
    // port is chosen so one task never gets the same port twice.
    let listeners: Vec<std::net::TcpListener> =
        names.iter().map(|_| std::net::TcpListener::bind((address, 0))).collect::<Result<_, _>>()?;
    names.iter().zip(&listeners).map(|(name, listener)| Ok((name.clone(), listener.local_addr()?.port()))).collect()
}

/// A process this agent started (and can wait for) or adopted (and can only watch).
enum Process {
    Child(tokio::process::Child),
    Adopted(u32),
}

impl Process {
    async fn wait(&mut self) -> ExitStatus {
        match self {
            Process::Child(child) => match child.wait().await {
                Ok(status) => ExitStatus {
                    code: status.code(),
                    signal: status.signal(),
                    oom_killed: false,
                    message: match (status.code(), status.signal()) {
                        (Some(code), _) => format!("exited with status {code}"),
                        (None, Some(signal)) => format!("killed by signal {signal}"),
                        _ => "ended".into(),
                    },
                },
                Err(e) => ExitStatus {
                    code: None,
                    signal: None,
                    oom_killed: false,
                    message: format!("cannot wait for the process: {e}"),
                },
            },
            Process::Adopted(pid) => {
                while launch::alive(*pid) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                ExitStatus {
                    code: None,
                    signal: None,
                    oom_killed: false,
                    message: "ended (exit status unknown: the process was re-adopted after an agent restart)".into(),
                }
            }
        }
    }
}

enum Outcome {
    Exited(ExitStatus),
    Unhealthy(String),
    Stop,
}

async fn run_task(
    ctx: Arc<Context>,
    assignment: TaskAssignment,
    status: Arc<Mutex<Status>>,
    mut stop: watch::Receiver<bool>,
    mut adopted: Option<u32>,
) {
    let task_id = assignment.task_id;
    let paths = ctx.paths(&task_id);
    let ports = lock(&status).ports.clone();
    let env = launch::environment(&assignment, &ctx.address, &ports);
    let mut backoff = assignment.restart.backoff.as_std();
    // Set once the task's artifacts and image are in place (`Some(None)`: it has no image).
    let mut prepared: Option<Option<Image>> = None;
    loop {
        let started = Instant::now();
        let (mut process, cgroup) = match adopted.take() {
            Some(pid) => (Process::Adopted(pid), ctx.cgroups.open(&paths.cgroup)),
            None => {
                let attempt = tokio::select! {
                    attempt = start(&ctx, &assignment, &paths, &env, &status, &mut prepared) => Some(attempt),
                    _ = stopped(&mut stop) => None,
                };
                match attempt {
                    Some(Ok((child, cgroup))) => (Process::Child(child), cgroup),
                    None => {
                        let cgroup = ctx.cgroups.open(&paths.cgroup);
                        finish(&ctx, &assignment, &status, &paths, &cgroup, RunState::Stopped, None).await;
                        return;
                    }
                    Some(Err(error)) => {
                        // A start that fails is a failed run: the restart policy decides, unless
                        // trying again cannot help (a checksum mismatch, an unknown image).
                        tracing::warn!(task = %task_id, error = %error.message, permanent = error.permanent, "task failed to start");
                        let exit = ExitStatus { code: None, signal: None, oom_killed: false, message: error.message };
                        let cgroup = ctx.cgroups.open(&paths.cgroup);
                        if error.permanent || assignment.restart.policy == RestartPolicy::Never {
                            finish(&ctx, &assignment, &status, &paths, &cgroup, RunState::Failed, Some(exit)).await;
                            return;
                        }
                        if !back_off(&status, exit, backoff, &mut stop).await {
                            finish(&ctx, &assignment, &status, &paths, &cgroup, RunState::Stopped, None).await;
                            return;
                        }
                        backoff = (backoff * 2).min(assignment.restart.max_backoff.as_std());
                        continue;
                    }
                }
            }
        };
        let pid = match &process {
            Process::Child(child) => child.id(),
            Process::Adopted(pid) => Some(*pid),
        };
        let oom_before = cgroup.oom_kills();
        {
            let mut s = lock(&status);
            s.state = RunState::Running;
            s.pid = pid;
            s.healthy = None;
        }
        if let Some(pid) = pid {
            save_record(&paths, &assignment, pid, &status);
        }
        tracing::info!(task = %task_id, app = %assignment.app, pid, "task running");

        let outcome = tokio::select! {
            exit = process.wait() => Outcome::Exited(exit),
            reason = watch_health(&ctx, &assignment, &ports, &status) => Outcome::Unhealthy(reason),
            _ = stopped(&mut stop) => Outcome::Stop,
            never = logs::keep_rotating(paths.logs(), assignment.logs) => match never {},
        };
        let mut exit = match outcome {
            Outcome::Stop => {
                stop_gracefully(&cgroup, &mut process, pid, Duration::from_millis(assignment.stop_grace_ms)).await;
                finish(&ctx, &assignment, &status, &paths, &cgroup, RunState::Stopped, None).await;
                tracing::info!(task = %task_id, "task stopped");
                return;
            }
            Outcome::Unhealthy(reason) => {
                cgroup.signal_all(libc::SIGKILL);
                let mut exit = process.wait().await;
                exit.message = format!(
                    "restarted: health check failed {} times: {reason}",
                    assignment.health.as_ref().map_or(0, |h| h.failures)
                );
                exit
            }
            Outcome::Exited(exit) => exit,
        };
        if cgroup.oom_kills() > oom_before {
            exit.oom_killed = true;
            exit.message = format!(
                "out of memory: killed by the kernel OOM killer at its {} byte limit",
                assignment.resources.memory_bytes
            );
        }
        // Whatever the task left behind in its cgroup goes with it.
        cgroup.signal_all(libc::SIGKILL);
        tracing::info!(task = %task_id, message = %exit.message, oom = exit.oom_killed, "task ended");
        let restart = match assignment.restart.policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !exit.success(),
            RestartPolicy::Never => false,
        };
        if !restart {
            let state = if exit.success() { RunState::Exited } else { RunState::Failed };
            finish(&ctx, &assignment, &status, &paths, &cgroup, state, Some(exit)).await;
            return;
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = assignment.restart.backoff.as_std();
        }
        if !back_off(&status, exit, backoff, &mut stop).await {
            finish(&ctx, &assignment, &status, &paths, &cgroup, RunState::Stopped, None).await;
            return;
        }
        backoff = (backoff * 2).min(assignment.restart.max_backoff.as_std());
    }
}

/// Prepares the task the first time (artifacts, image), then starts its process: its own
/// command, or the OCI runtime running its container.
async fn start(
    ctx: &Context,
    assignment: &TaskAssignment,
    paths: &TaskPaths,
    env: &BTreeMap<String, String>,
    status: &Mutex<Status>,
    prepared: &mut Option<Option<Image>>,
) -> Result<(tokio::process::Child, Cgroup), PrepareError> {
    if prepared.is_none() {
        let progress = |line: String| lock(status).progress = Some(line);
        *prepared = Some(prepare::prepare(ctx, assignment, paths, &progress).await?);
        lock(status).progress = None;
    }
    let launch_err = |e: launch::LaunchError| PrepareError { message: e.to_string(), permanent: false };
    let (Some(image), Some(runtime)) = (prepared.as_ref().and_then(Option::as_ref), &ctx.runtime) else {
        let invocation = Invocation { program: &assignment.command, args: &assignment.args };
        return launch::launch(&ctx.cgroups, paths, assignment, &invocation, env).map_err(launch_err);
    };
    let container = assignment.task_id.to_string();
    // What an earlier run of this task left (the runtime's record of it) goes first.
    runtime.remove(paths, &container).await;
    let argv = runtime::argv(&image.config, &assignment.command, &assignment.args);
    runtime::prepare_bundle(paths, image, &argv, env, &assignment.app)?;
    let program = runtime.binary.display().to_string();
    let args = runtime.run_args(paths, &container);
    let invocation = Invocation { program: &program, args: &args };
    launch::launch(&ctx.cgroups, paths, assignment, &invocation, &BTreeMap::new()).map_err(launch_err)
}

/// Records a run that ended and waits out the restart backoff. False when the task was
/// asked to stop meanwhile.
async fn back_off(
    status: &Mutex<Status>,
    exit: ExitStatus,
    backoff: Duration,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    {
        let mut s = lock(status);
        s.state = RunState::Restarting;
        s.restarts += 1;
        s.pid = None;
        s.healthy = None;
        s.last_exit = Some(exit);
    }
    tokio::select! {
        _ = tokio::time::sleep(backoff) => true,
        _ = stopped(stop) => false,
    }
}

/// Resolves once the task is asked to stop (or its handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Runs the health check until it fails `failures` times in a row after the grace period;
/// never returns for tasks without a check. Probes start at once, so a task that is ready
/// early is reported healthy early; failures within the grace period do not count.
async fn watch_health(
    ctx: &Context,
    assignment: &TaskAssignment,
    ports: &BTreeMap<String, u16>,
    status: &Mutex<Status>,
) -> String {
    let Some(check) = &assignment.health else { return std::future::pending().await };
    // A command check of an image task runs inside its container.
    let wrap: Vec<String> = match (&assignment.image, &ctx.runtime) {
        (Some(_), Some(runtime)) => std::iter::once(runtime.binary.display().to_string())
            .chain(runtime.exec_args(&assignment.task_id.to_string(), &[]))
            .collect(),
        _ => Vec::new(),
    };
    let started = Instant::now();
    let mut failures = 0;
    loop {
        match health::probe(check, &ctx.address, ports, &ctx.http, &wrap).await {
            Ok(()) => {
                failures = 0;
                lock(status).healthy = Some(true);
            }
            Err(reason) if started.elapsed() >= check.grace.as_std() => {
                failures += 1;
                lock(status).healthy = Some(false);
                tracing::debug!(task = %assignment.task_id, %reason, failures, "health check failed");
                if failures >= check.failures {
                    return reason;
                }
            }
            Err(_) => {}
        }
        // Poll quickly until the first success so readiness is seen early.
        let pause = if lock(status).healthy.is_none() {
            Duration::from_millis(100).min(health::interval(check))
        } else {
            health::interval(check)
        };
        tokio::time::sleep(pause).await;
    }
}

/// SIGTERM to the task's process group and cgroup, then SIGKILL after `grace`.
async fn stop_gracefully(cgroup: &Cgroup, process: &mut Process, pid: Option<u32>, grace: Duration) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) has no memory-safety preconditions; -pid is the task's session group.
        unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGTERM) };
    }
    cgroup.signal_all(libc::SIGTERM);
    if tokio::time::timeout(grace, process.wait()).await.is_err() {
        cgroup.signal_all(libc::SIGKILL);
        let _ = process.wait().await;
    }
    cgroup.signal_all(libc::SIGKILL);
}

/// Records the final state, removes the task's record and its (emptied) cgroup, and marks the
/// task ended for log followers. Logs stay.
async fn finish(
    ctx: &Context,
    assignment: &TaskAssignment,
    status: &Mutex<Status>,
    paths: &TaskPaths,
    cgroup: &Cgroup,
    state: RunState,
    exit: Option<ExitStatus>,
) {
    for _ in 0..50 {
        if cgroup.pids().is_empty() {
            break;
        }
        cgroup.signal_all(libc::SIGKILL);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The cgroup's counters go with it: take the last reading first.
    let reading = cgroup.usage();
    lock(status).meter.sample(Instant::now(), reading);
    if let (Some(_), Some(runtime)) = (&assignment.image, &ctx.runtime) {
        runtime.remove(paths, &assignment.task_id.to_string()).await;
    }
    if let Err(error) = cgroup.remove() {
        tracing::warn!(%error, "cannot remove task cgroup");
    }
    let _ = std::fs::remove_file(paths.sandbox.join("task.json"));
    if let Err(error) = std::fs::write(paths.ended(), format!("{state:?}\n").to_lowercase()) {
        tracing::warn!(path = %paths.ended().display(), %error, "cannot mark the task ended; log followers will not stop");
    }
    let mut s = lock(status);
    s.state = state;
    s.pid = None;
    s.progress = None;
    if exit.is_some() {
        s.last_exit = exit;
    }
}

fn save_record(paths: &TaskPaths, assignment: &TaskAssignment, pid: u32, status: &Mutex<Status>) {
    let Some(start_time) = launch::start_time(pid) else { return };
    let (ports, restarts) = {
        let s = lock(status);
        (s.ports.clone(), s.restarts)
    };
    let record = TaskRecord { assignment: assignment.clone(), pid, start_time, ports, restarts };
    let path = paths.sandbox.join("task.json");
    let write = serde_json::to_vec(&record).map_err(std::io::Error::other).and_then(|bytes| {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)
    });
    if let Err(error) = write {
        tracing::warn!(path = %path.display(), %error, "cannot save task record; the task will not be re-adopted");
    }
}
