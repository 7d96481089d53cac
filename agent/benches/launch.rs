//! P5: time from "assignment received" to "process running inside its cgroup with limits",
//! measured with `launch::launch` (sandbox, log files, cgroup creation with limits, fork,
//! join the cgroup before exec, exec), 200 times, next to `crun run` of the same command.
//!
//! Ends with: `bench=launch launches=200 p50_ms= p99_ms= crun_p50_ms= crun_p99_ms=`.

use canopy_agent::cgroup::Cgroups;
use canopy_agent::launch::{self, TaskPaths};
use canopy_core::Resources;
use canopy_core::spec::RestartSpec;
use canopy_core::wire::TaskAssignment;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const LAUNCHES: usize = 200;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (ours, full) = runtime.block_on(measure_canopy());
    let crun = measure_crun();
    println!("canopy launch (to exec):     p50 {:.3} ms  p99 {:.3} ms", percentile(&ours, 50), percentile(&ours, 99));
    println!("canopy launch+exit+cleanup:  p50 {:.3} ms  p99 {:.3} ms", percentile(&full, 50), percentile(&full, 99));
    let (crun_p50, crun_p99) = match &crun {
        Ok(samples) => {
            println!(
                "crun run (create..delete):   p50 {:.3} ms  p99 {:.3} ms",
                percentile(samples, 50),
                percentile(samples, 99)
            );
            (format!("{:.3}", percentile(samples, 50)), format!("{:.3}", percentile(samples, 99)))
        }
        Err(reason) => {
            println!("crun not measured: {reason}");
            ("NA".into(), "NA".into())
        }
    };
    println!(
        "bench=launch launches={LAUNCHES} p50_ms={:.3} p99_ms={:.3} crun_p50_ms={crun_p50} crun_p99_ms={crun_p99} full_p50_ms={:.3} full_p99_ms={:.3}",
        percentile(&ours, 50),
        percentile(&ours, 99),
        percentile(&full, 50),
        percentile(&full, 99)
    );
}

/// Returns (launch until exec'd, launch until exited and cleaned up) in milliseconds.
async fn measure_canopy() -> (Vec<f64>, Vec<f64>) {
    let cgroups = Cgroups::detect().expect("cgroups");
    let parent = PathBuf::from(format!("canopy-bench-launch-{}", std::process::id()));
    let state = std::env::temp_dir().join(format!("canopy-bench-launch-{}", std::process::id()));
    let mut to_exec = Vec::with_capacity(LAUNCHES);
    let mut to_exit = Vec::with_capacity(LAUNCHES);
    for i in 0..LAUNCHES + 10 {
        let assignment = assignment();
        let paths = TaskPaths::new(&state, &parent, &assignment.task_id);
        let env = launch::environment(&assignment, "127.0.0.1", &BTreeMap::new());
        let started = Instant::now();
        let invocation = launch::Invocation { program: &assignment.command, args: &assignment.args };
        let (mut child, cgroup) = launch::launch(&cgroups, &paths, &assignment, &invocation, &env).expect("launch");
        let launched = started.elapsed();
        let pid = child.id().expect("pid");
        assert!(cgroup.pids().contains(&pid) || !launch::alive(pid), "process {pid} is in its cgroup");
        child.wait().await.expect("wait");
        cgroup.remove().expect("remove cgroup");
        let done = started.elapsed();
        if i >= 10 {
            // The first launches warm caches (binary, cgroupfs); they are not counted.
            to_exec.push(ms(launched));
            to_exit.push(ms(done));
        }
    }
    let _ = cgroups.open(&parent).kill_tree();
    let _ = std::fs::remove_dir_all(&state);
    (to_exec, to_exit)
}

fn assignment() -> TaskAssignment {
    TaskAssignment {
        task_id: uuid::Uuid::new_v4(),
        app: "bench".into(),
        command: "/bin/true".into(),
        args: vec![],
        env: BTreeMap::new(),
        resources: Resources::new(100, 16 << 20),
        pids_limit: 16,
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

/// `crun run` of the same `/bin/true` in a minimal bundle (the binary and its libraries).
fn measure_crun() -> Result<Vec<f64>, String> {
    if !has("crun") {
        let installed = Command::new("apt-get")
            .args(["install", "-y", "-qq", "crun"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        if !installed.is_ok_and(|s| s.success()) || !has("crun") {
            return Err("crun is not installed and apt-get could not install it".into());
        }
    }
    // crun 1.8 refuses hybrid hosts whose cgroup2 mount lists hugetlb; a v1 hugetlb mount fixes it.
    let hugetlb = Path::new("/sys/fs/cgroup/hugetlb");
    if !hugetlb.join("cgroup.procs").exists() {
        let _ = std::fs::create_dir_all(hugetlb);
        let _ =
            Command::new("mount").args(["-t", "cgroup", "-o", "hugetlb", "none", "/sys/fs/cgroup/hugetlb"]).status();
    }
    let bundle = std::env::temp_dir().join(format!("canopy-bench-crun-{}", std::process::id()));
    let rootfs = bundle.join("rootfs");
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::create_dir_all(&rootfs).map_err(|e| e.to_string())?;
    copy_with_libraries("/bin/true", &rootfs)?;
    let spec =
        Command::new("crun").args(["spec", "--rootless"]).current_dir(&bundle).status().map_err(|e| e.to_string())?;
    if !spec.success() {
        return Err("crun spec failed".into());
    }
    let config_path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    config["process"]["args"] = serde_json::json!(["/bin/true"]);
    config["process"]["terminal"] = serde_json::json!(false);
    config["linux"]["resources"] = serde_json::json!({"memory": {"limit": 16 << 20}, "cpu": {"quota": 10000, "period": 100000}, "pids": {"limit": 16}});
    // Run as root with the host's cgroups, like the agent does.
    if let Some(namespaces) = config["linux"]["namespaces"].as_array_mut() {
        namespaces.retain(|n| n["type"] != "user");
    }
    if let Some(linux) = config["linux"].as_object_mut() {
        linux.remove("uidMappings");
        linux.remove("gidMappings");
    }
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let mut samples = Vec::with_capacity(LAUNCHES);
    for i in 0..LAUNCHES + 10 {
        let id = format!("canopy-bench-{}-{i}", std::process::id());
        let started = Instant::now();
        let output =
            Command::new("crun").args(["run", "-b"]).arg(&bundle).arg(&id).output().map_err(|e| e.to_string())?;
        let elapsed = started.elapsed();
        if !output.status.success() {
            let _ = Command::new("crun").args(["delete", "-f", &id]).status();
            return Err(format!("crun run failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
        }
        if i >= 10 {
            samples.push(ms(elapsed));
        }
    }
    let _ = std::fs::remove_dir_all(&bundle);
    Ok(samples)
}

fn copy_with_libraries(binary: &str, rootfs: &Path) -> Result<(), String> {
    let ldd = Command::new("ldd").arg(binary).output().map_err(|e| e.to_string())?;
    let mut files = vec![PathBuf::from(binary)];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        if let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) {
            files.push(PathBuf::from(path));
        }
    }
    for file in files {
        let target = rootfs.join(file.strip_prefix("/").map_err(|e| e.to_string())?);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        std::fs::copy(&file, &target).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(())
}

fn has(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn percentile(samples: &[f64], p: usize) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() * p).div_ceil(100)).saturating_sub(1).min(sorted.len().saturating_sub(1));
    sorted.get(index).copied().unwrap_or(f64::NAN)
}
