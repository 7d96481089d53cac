//! Apps that ship: artifacts fetched, verified and cached by the agent (or uploaded to the
//! control service by `canopy deploy`), and OCI images pulled from a real registry
//! (docker-registry) and run by a real OCI runtime (crun or runc) in the task's cgroup.

use canopy_e2e::files::FileServer;
use canopy_e2e::registry::{self, Blob, Registry};
use canopy_e2e::{Stack, running_tasks};
use reqwest::Method;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A one-run job (no retries) running `script` with `artifacts` (TOML array entries).
fn job(name: &str, script: &str, artifacts: &[String]) -> String {
    let artifacts: String = artifacts.iter().map(|a| format!("\n[[artifacts]]\n{a}\n")).collect();
    format!(
        r#"
name = "{name}"
command = "sh"
args = ["-c", {script:?}]
[resources]
cpu = 100
memory = "32Mi"
[job]
retries = 0
{artifacts}"#
    )
}

/// Polls the app until `pick` finds a task in it, and returns that task.
async fn find_task(stack: &Stack, app: &str, pick: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let started = std::time::Instant::now();
    loop {
        let detail = stack.developer.get(&format!("/v1/apps/{app}")).await?;
        if let Some(task) = detail["tasks"].as_array().into_iter().flatten().find(|t| pick(t)) {
            return Ok(task.clone());
        }
        if started.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("no such task of {app} within 30s: {detail:#}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the app's first task to end and returns it.
async fn ended_task(stack: &Stack, app: &str) -> anyhow::Result<Value> {
    find_task(stack, app, |t| matches!(t["state"].as_str(), Some("exited" | "failed"))).await
}

#[tokio::test]
async fn artifacts_are_verified_cached_and_can_be_uploaded() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    let tool = b"#!/bin/sh\necho tool ran\n".to_vec();
    let archive = {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, "data/greeting.txt", &b"hi\n"[..])?;
        builder.into_inner()?.finish()?
    };
    let files = FileServer::start(BTreeMap::from([
        ("tool.sh".to_string(), tool.clone()),
        ("site.tar.gz".to_string(), archive.clone()),
    ]))
    .await?;
    let artifacts = [
        format!("url = \"{}/tool.sh\"\nsha256 = \"{}\"", files.url, sha256(&tool)),
        format!(
            "url = \"{}/site.tar.gz\"\nsha256 = \"{}\"\nextract = \"tar.gz\"\ndestination = \"site\"",
            files.url,
            sha256(&archive)
        ),
    ];
    let script = "test \"$(cat site/data/greeting.txt)\" = hi && sh tool.sh";

    // Checksums match: both land in the sandbox, the archive unpacked, and the job succeeds.
    stack.deploy(&job("fetch-one", script, &artifacts)).await?;
    let task = ended_task(&stack, "fetch-one").await?;
    assert_eq!(task["state"], "exited", "{task:#}");
    assert_eq!((files.hits("tool.sh"), files.hits("site.tar.gz")), (1, 1));

    // A second task on the machine takes both from the agent's cache.
    stack.deploy(&job("fetch-two", script, &artifacts)).await?;
    assert_eq!(ended_task(&stack, "fetch-two").await?["state"], "exited");
    assert_eq!((files.hits("tool.sh"), files.hits("site.tar.gz")), (1, 1), "the second task downloaded nothing");

    // A checksum mismatch fails the task with that reason, and nothing runs.
    let marker = stack.dir.join("mismatch-ran");
    let wrong = format!("url = \"{}/tool.sh\"\nsha256 = \"{}\"\ndestination = \"other.sh\"", files.url, "0".repeat(64));
    stack.deploy(&job("mismatch", &format!("touch {}", marker.display()), &[wrong])).await?;
    let task = ended_task(&stack, "mismatch").await?;
    assert_eq!(task["state"], "failed", "{task:#}");
    let message = task["message"].as_str().unwrap_or_default();
    assert!(message.contains("checksum mismatch") && message.contains(&sha256(&tool)), "{message}");
    assert!(!marker.exists(), "the command must not run when an artifact is wrong");

    // An upload is refused when its bytes do not hash to the URL's digest; a spec naming an
    // upload that does not exist is refused with the field named.
    let reply = stack
        .developer
        .raw(Method::PUT, &format!("/v1/artifacts/{}", "1".repeat(64)), "application/octet-stream", tool.clone())
        .await?;
    assert_eq!(reply.status, 422, "{reply:?}");
    let missing = format!("url = \"canopy:{0}\"\nsha256 = \"{0}\"\ndestination = \"x\"", "2".repeat(64));
    let spec = canopy_core::spec::AppSpec::from_toml(&job("missing", "true", &[missing]))?;
    let reply = stack.developer.call(Method::PUT, "/v1/apps/missing", Some(serde_json::to_value(&spec)?)).await?;
    assert_eq!(reply.status, 422, "{reply:?}");
    assert!(reply.message().starts_with("artifacts[0].url:"), "{reply:?}");

    // `canopy deploy` uploads a local file and the agent fetches it from the control service.
    let dir = stack.dir.join("upload");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("payload.txt"), b"uploaded by the cli\n")?;
    std::fs::write(
        dir.join("job.toml"),
        job("uploaded", "grep -q 'uploaded by the cli' payload.txt", &["url = \"payload.txt\"".to_string()]),
    )?;
    let output = tokio::process::Command::new(&stack.binaries.canopy)
        .args(["--api-url", &stack.control.url, "--token", stack.developer.token().unwrap_or_default()])
        .args(["deploy", &dir.join("job.toml").display().to_string(), "--timeout", "60"])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("uploaded") && stdout.contains("succeeded"), "{stdout}");
    Ok(())
}

const USER: &str = "canopy";
const PASSWORD: &str = "registry-secret";

fn image_spec(name: &str, image: &str, password: &str, instances: u32) -> String {
    format!(
        r#"
name = "{name}"
image = "{image}"
instances = {instances}
ports = ["http"]
stop_grace = "1s"
[image_auth]
username = "{USER}"
password = "{password}"
[resources]
cpu = 200
memory = "48Mi"
pids = 64
[health]
type = "http"
path = "/"
interval = "300ms"
grace = "10s"
"#
    )
}

/// Deploys `spec` and returns the message of its first failed task.
async fn failure(stack: &Stack, name: &str, spec: &str) -> anyhow::Result<String> {
    stack.deploy(spec).await?;
    let failed = find_task(stack, name, |t| t["state"] == "failed").await?;
    stack.developer.call(Method::DELETE, &format!("/v1/apps/{name}"), None).await?.ok()?;
    Ok(failed["message"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn images_are_pulled_from_a_registry_and_run_in_their_cgroups() -> anyhow::Result<()> {
    let stack = Stack::start(2).await?;
    let registry = Registry::start(&stack.dir.join("registry"), USER, PASSWORD)?;
    let (config, layers) = registry::busybox_web_image()?;
    registry.push_image("team/web", "1.0", &config, &layers).await?;
    let image = format!("{}/team/web:1.0", registry.address);

    stack.deploy(&image_spec("web", &image, PASSWORD, 2)).await?;
    let app = stack.wait_running("web", 2, Duration::from_secs(60)).await?;
    assert_eq!(app["spec"]["image_auth"]["password"], "<hidden>", "the API never shows the password");
    let tasks = running_tasks(&app);
    let machines: std::collections::BTreeSet<_> = tasks.iter().map(|t| t["machine"].as_str().unwrap_or("")).collect();
    assert_eq!(machines.len(), 2, "one instance per machine: {tasks:?}");
    for task in &tasks {
        let machine =
            stack.machines.iter().find(|m| Some(m.spec.name.as_str()) == task["machine"].as_str()).expect("machine");
        let cgroup = machine.task_cgroup(task["id"].as_str().expect("id"));
        assert_eq!(cgroup.memory_limit(), Some(48 << 20), "the spec's memory limit applies to the container");
        let pids = cgroup.pids();
        assert!(pids.len() >= 2, "the runtime and the container's server are in the task's cgroup: {pids:?}");
        let base = format!("http://{}:{}", task["address"].as_str().expect("address"), task["ports"]["http"]);
        let body = reqwest::get(format!("{base}/")).await?.text().await?;
        assert_eq!(body, "hello from an image\n");
        let hidden = reqwest::get(format!("{base}/old.html")).await?.status();
        assert_eq!(hidden, 404, "the upper layer's whiteout removed old.html");
    }
    stack.developer.call(Method::DELETE, "/v1/apps/web", None).await?.ok()?;

    // A container that exits ends its task with its own exit status (the runtime leaves the
    // task's cgroup alone, so it does not kill itself with the container).
    let once = format!(
        "name = \"once\"\nimage = \"{image}\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"test -f /www/index.html\"]\n\
         [image_auth]\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n\
         [resources]\ncpu = 100\nmemory = \"32Mi\"\n[job]\nretries = 0\n"
    );
    stack.deploy(&once).await?;
    let ended = ended_task(&stack, "once").await?;
    assert_eq!(ended["state"], "exited", "the image job's container exits 0: {ended:#}");

    // Each way a pull can go wrong fails the task with a reason that says which.
    let wrong_password = failure(&stack, "badauth", &image_spec("badauth", &image, "wrong", 1)).await?;
    assert!(wrong_password.contains("refused the credentials"), "{wrong_password}");
    let unknown = format!("{}/team/web:2.0", registry.address);
    let message = failure(&stack, "unknown", &image_spec("unknown", &unknown, PASSWORD, 1)).await?;
    assert!(message.contains("unknown image"), "{message}");

    let zstd = Blob::new("application/vnd.oci.image.layer.v1.tar+zstd", b"not really zstd".to_vec());
    registry.push_image("team/zstd", "1.0", &config, &[zstd]).await?;
    let zstd_image = format!("{}/team/zstd:1.0", registry.address);
    let message = failure(&stack, "zstd", &image_spec("zstd", &zstd_image, PASSWORD, 1)).await?;
    assert!(message.contains("unsupported") && message.contains("tar+zstd"), "{message}");

    // A registry that serves other bytes than a layer's digest says: the pull refuses them.
    let (_, other_layers) = registry::busybox_web_image()?;
    let corrupt = registry::layer(&[("www/index.html", 0o644, Some(b"tampered"))])?;
    registry.push_image("team/corrupt", "1.0", &config, std::slice::from_ref(&corrupt)).await?;
    std::fs::write(registry.blob_path(&corrupt.digest()), &other_layers[1].bytes)?;
    let corrupt_image = format!("{}/team/corrupt:1.0", registry.address);
    let message = failure(&stack, "corrupt", &image_spec("corrupt", &corrupt_image, PASSWORD, 1)).await?;
    assert!(message.contains("digest mismatch") && message.contains(&corrupt.digest()), "{message}");
    Ok(())
}
