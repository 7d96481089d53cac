//! P7: the agent's resident memory idle and with 100 running tasks, and its idle CPU.
//!
//! Runs the real `canopy-agent` binary against a minimal in-process control endpoint that
//! speaks the agent protocol (join, heartbeat) and hands out `sleep` tasks, so the number is
//! the agent's own, with nothing else of Canopy running.
//!
//! Ends with: `bench=footprint rss_idle_kib= rss_100_tasks_kib= idle_cpu_percent=`.

use axum::routing::post;
use axum::{Json, Router};
use canopy_agent::cgroup::Cgroups;
use canopy_core::Resources;
use canopy_core::spec::RestartSpec;
use canopy_core::wire::{HeartbeatRequest, HeartbeatResponse, JoinResponse, TaskAssignment};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const TASKS: usize = 100;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let desired = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let tasks: Arc<Vec<TaskAssignment>> = Arc::new((0..TASKS).map(|_| sleeper()).collect());
    let app = Router::new()
        .route(
            "/v1/agent/join",
            post(|| async {
                Json(JoinResponse {
                    machine_id: uuid::Uuid::new_v4(),
                    agent_token: "bench".into(),
                    control_key: "bench".into(),
                })
            }),
        )
        .route(
            "/v1/agent/heartbeat",
            post({
                let (desired, running, tasks) = (desired.clone(), running.clone(), tasks.clone());
                move |Json(request): Json<HeartbeatRequest>| async move {
                    running.store(request.tasks.iter().filter(|t| t.pid.is_some()).count(), Ordering::Relaxed);
                    let count = desired.load(Ordering::Relaxed);
                    Json(HeartbeatResponse { desired: tasks[..count].to_vec(), heartbeat_interval_ms: 1000 })
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let control = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let id = std::process::id();
    let state = std::env::temp_dir().join(format!("canopy-bench-footprint-{id}"));
    let cgroup_parent = PathBuf::from(format!("canopy-bench-footprint-{id}"));
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_canopy-agent"))
        .args([
            "--name",
            "bench",
            "--control-url",
            &control,
            "--join-token",
            "bench",
            "--cpu",
            "100000",
            "--memory",
            "64Gi",
        ])
        .arg("--state-dir")
        .arg(&state)
        .arg("--cgroup-parent")
        .arg(&cgroup_parent)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start agent");
    let pid = agent.id().expect("pid");

    // Idle: joined, heartbeating, no tasks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_before = cpu_ticks(pid);
    let idle_window = Duration::from_secs(10);
    tokio::time::sleep(idle_window).await;
    let idle_cpu_percent =
        (cpu_ticks(pid) - cpu_before) as f64 / ticks_per_second() / idle_window.as_secs_f64() * 100.0;
    let rss_idle = rss_kib(pid);

    // 100 tasks.
    desired.store(TASKS, Ordering::Relaxed);
    let started = Instant::now();
    while running.load(Ordering::Relaxed) < TASKS {
        assert!(started.elapsed() < Duration::from_secs(60), "tasks did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_tasks = rss_kib(pid);

    let _ = agent.kill().await;
    let _ = Cgroups::detect().map(|c| c.open(&cgroup_parent).kill_tree());
    let _ = std::fs::remove_dir_all(&state);
    println!(
        "agent RSS idle {rss_idle} KiB, with {TASKS} tasks {rss_tasks} KiB, idle CPU {idle_cpu_percent:.2}% of a core"
    );
    println!(
        "bench=footprint rss_idle_kib={rss_idle} rss_100_tasks_kib={rss_tasks} idle_cpu_percent={idle_cpu_percent:.2}"
    );
}

fn sleeper() -> TaskAssignment {
    TaskAssignment {
        task_id: uuid::Uuid::new_v4(),
        app: "sleeper".into(),
        command: "sleep".into(),
        args: vec!["3600".into()],
        env: BTreeMap::new(),
        resources: Resources::new(10, 8 << 20),
        pids_limit: 8,
        ports: vec![],
        health: None,
        restart: RestartSpec::default(),
        stop_grace_ms: 1000,
        logs: Default::default(),
        artifacts: vec![],
        image: None,
        image_auth: None,
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// utime + stime of the process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..].split(' ').collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}
