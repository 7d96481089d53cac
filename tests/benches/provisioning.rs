//! Provisioning through the emulated EC2, end to end (issue 4's benchmark):
//! * deploy -> app answering on a freshly bought machine, p50 over 10 rounds (each round
//!   deletes the app and waits until its machine is returned, so the next deploy must buy);
//! * 100 machines bought and joined at once: total time, and the control service's CPU.
//!
//! Ends with: `bench=provisioning rounds=10 deploy_to_answer_p50_s= deploy_to_answer_max_s=
//! machines=100 all_joined_s= control_cpu_s=`.

use canopy_e2e::{Stack, hello_spec, running_tasks};
use reqwest::Method;
use std::time::{Duration, Instant};

const ROUNDS: usize = 10;
const MACHINES: usize = 100;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let stack = Stack::start_with_cloud(1).await?;
    let mut samples = Vec::new();
    for round in 0..ROUNDS {
        let name = format!("bench-{round}");
        let started = Instant::now();
        stack.deploy(&hello_spec(&name, 1)).await?;
        let app = stack.wait_running(&name, 1, Duration::from_secs(120)).await?;
        let task = &running_tasks(&app)[0];
        let url = format!("http://{}:{}/", task["address"].as_str().unwrap_or_default(), task["ports"]["http"]);
        while !reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        samples.push(started.elapsed().as_secs_f64());
        stack.developer.call(Method::DELETE, &format!("/v1/apps/{name}"), None).await?.ok()?;
        stack
            .wait("the machine to be returned", Duration::from_secs(60), || async {
                let instances = stack.moto()?.instances().await?;
                Ok(instances.iter().all(|i| i.state != "running" && i.state != "pending"))
            })
            .await?;
    }
    samples.sort_by(f64::total_cmp);
    let p50 = samples[samples.len() / 2];
    let max = samples[samples.len() - 1];
    println!("deploy -> answering on a new machine: p50 {p50:.2} s, max {max:.2} s over {ROUNDS}");

    // 100 instances of a small app, spread one per machine: 100 machines bought at once.
    let spec = format!(
        "name = \"fleet\"\ncommand = \"sleep\"\nargs = [\"3600\"]\ninstances = {MACHINES}\n[resources]\ncpu = 100\nmemory = \"16Mi\"\n"
    );
    let pid = stack.control.pid().expect("control pid");
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    stack.deploy(&spec).await?;
    stack
        .wait("every machine to join", Duration::from_secs(600), || async {
            let machines = stack.admin.get("/v1/machines").await?;
            Ok(machines.as_array().map_or(0, |m| m.iter().filter(|m| m["state"] == "ready").count()) >= MACHINES)
        })
        .await?;
    let joined = started.elapsed().as_secs_f64();
    let app = stack.wait_running("fleet", MACHINES, Duration::from_secs(300)).await?;
    let control_cpu = cpu_seconds(pid) - cpu_before;
    let machines: std::collections::BTreeSet<_> =
        running_tasks(&app).iter().map(|t| t["machine"].to_string()).collect();
    println!(
        "{MACHINES} machines bought and joined in {joined:.1} s; tasks on {} machines; control service used {control_cpu:.2} s of CPU",
        machines.len()
    );
    println!(
        "bench=provisioning rounds={ROUNDS} deploy_to_answer_p50_s={p50:.2} deploy_to_answer_max_s={max:.2} machines={MACHINES} all_joined_s={joined:.1} control_cpu_s={control_cpu:.2}"
    );
    Ok(())
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(end) = stat.rfind(')') else { return 0.0 };
    let fields: Vec<&str> = stat[end + 2..].split(' ').collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}
