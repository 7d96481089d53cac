//! Image tasks: cold start (pull from a local docker-registry, verify, unpack, bundle, run to
//! exit under the OCI runtime in a fresh cgroup) and warm start (the image already in the
//! store: bundle and run only), 10 of each, next to a bare `crun run` of the same command on a
//! prepared bundle. The image is busybox-static in one gzip layer, pushed over the registry's
//! own API.
//!
//! Ends with: `bench=image cold_p50_ms= warm_p50_ms= crun_run_p50_ms=`.

use canopy_agent::cgroup::Cgroups;
use canopy_agent::image::ImageStore;
use canopy_agent::image::runtime::{self, OciRuntime};
use canopy_agent::launch::{self, Invocation, TaskPaths};
use canopy_core::Resources;
use canopy_core::image::ImageReference;
use canopy_core::spec::RestartSpec;
use canopy_core::wire::TaskAssignment;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 10;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = std::env::temp_dir().join(format!("canopy-bench-image-{}", std::process::id()));
    let parent = PathBuf::from(format!("canopy-bench-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // Dropped last, on success or panic: the registry, overlays, cgroups and files go.
    let mut cleanup = Cleanup { dir: dir.clone(), parent: parent.clone(), registry: None };
    let address = start_registry(&dir, &mut cleanup);
    let (cold, warm, crun) = runtime.block_on(measure(&dir, &parent, &address));
    drop(runtime);
    drop(cleanup);
    println!("cold start (pull+unpack+run): p50 {:.1} ms", percentile(&cold));
    println!("warm start (cached, run):     p50 {:.1} ms", percentile(&warm));
    println!("crun run (prepared bundle):   p50 {:.1} ms", percentile(&crun));
    println!(
        "bench=image cold_p50_ms={:.1} warm_p50_ms={:.1} crun_run_p50_ms={:.1}",
        percentile(&cold),
        percentile(&warm),
        percentile(&crun)
    );
}

/// What the bench leaves on the machine, removed when dropped (also while unwinding a panic):
/// the registry process it started, overlay mounts under its temp dir, the cgroups under its
/// own parent in every hierarchy (the runtime creates them in hierarchies the agent does not
/// use, e.g. freezer), and the temp dir.
struct Cleanup {
    dir: PathBuf,
    parent: PathBuf,
    registry: Option<std::process::Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut registry) = self.registry.take() {
            let _ = registry.kill();
            let _ = registry.wait();
        }
        if let Ok(cgroups) = Cgroups::detect() {
            let _ = cgroups.open(&self.parent).kill_tree();
        }
        remove_cgroups(&self.parent);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = mountinfo
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|target| Path::new(target).starts_with(&self.dir))
            .collect();
        mounts.sort_by_key(|target| std::cmp::Reverse(target.len()));
        for target in mounts {
            if let Ok(target) = std::ffi::CString::new(target) {
                // SAFETY: umount2 reads a valid NUL-terminated path.
                unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the (empty) cgroup `relative` and everything below it in every mounted hierarchy.
fn remove_cgroups(relative: &Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else { continue };
        if !matches!(fields.get(dash + 1), Some(&"cgroup" | &"cgroup2")) {
            continue;
        }
        let mut stack = vec![Path::new(fields[4]).join(relative)];
        let mut found = Vec::new();
        while let Some(dir) = stack.pop() {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                stack.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
                found.push(dir);
            }
        }
        for dir in found.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

async fn measure(dir: &Path, parent: &Path, address: &str) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    push_image(address).await;
    let reference = ImageReference::parse(&format!("{address}/bench/busybox:1")).expect("reference");
    let oci = OciRuntime::detect(None, dir.join("oci")).expect("crun or runc installed");
    let cgroups = Cgroups::detect().expect("cgroups");
    let http = reqwest::Client::new();
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    let warm_store = store(&dir.join("warm"));
    warm_store.pull(&http, &reference, None, &|_| {}).await.expect("first pull");
    for run in 0..RUNS {
        let cold_store = store(&dir.join(format!("cold-{run}")));
        let started = Instant::now();
        let image = cold_store.pull(&http, &reference, None, &|_| {}).await.expect("pull");
        run_once(&cgroups, &oci, dir, parent, &image).await;
        cold.push(ms(started.elapsed()));
        let started = Instant::now();
        let image = warm_store.pull(&http, &reference, None, &|_| {}).await.expect("cached");
        run_once(&cgroups, &oci, dir, parent, &image).await;
        warm.push(ms(started.elapsed()));
    }
    // The same command under the runtime alone: a bundle prepared once, `run` to exit.
    let image = warm_store.pull(&http, &reference, None, &|_| {}).await.expect("cached");
    let paths = TaskPaths::new(dir, parent, &uuid::Uuid::new_v4());
    runtime::prepare_bundle(&paths, &image, &argv(&image), &BTreeMap::new(), "bench").expect("bundle");
    let mut crun = Vec::new();
    for run in 0..RUNS {
        let id = format!("bench-{}-{run}", std::process::id());
        let started = Instant::now();
        let output = tokio::process::Command::new(&oci.binary)
            .args(oci.run_args(&paths, &id))
            .stdin(Stdio::null())
            .output()
            .await
            .expect("runtime");
        assert!(
            output.status.success(),
            "{} run failed ({}): {}",
            oci.name(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        crun.push(ms(started.elapsed()));
        // Removing the container also unmounts the bundle's overlay: mount it again, untimed.
        oci.remove(&paths, &id).await;
        runtime::prepare_bundle(&paths, &image, &argv(&image), &BTreeMap::new(), "bench").expect("bundle");
    }
    remove_cgroups(&paths.cgroup);
    (cold, warm, crun)
}

fn store(root: &Path) -> ImageStore {
    ImageStore { root: root.to_path_buf(), max_bytes: 1 << 30, max_age: Duration::from_secs(3600) }
}

fn argv(image: &canopy_agent::image::Image) -> Vec<String> {
    runtime::argv(&image.config, "", &[])
}

/// One task start: bundle, runtime in a fresh cgroup with limits, wait for exit, clean up.
async fn run_once(cgroups: &Cgroups, oci: &OciRuntime, dir: &Path, parent: &Path, image: &canopy_agent::image::Image) {
    let assignment = TaskAssignment {
        task_id: uuid::Uuid::new_v4(),
        app: "bench".into(),
        command: String::new(),
        args: vec![],
        env: BTreeMap::new(),
        resources: Resources::new(1000, 128 << 20),
        pids_limit: 64,
        ports: vec![],
        health: None,
        restart: RestartSpec::default(),
        stop_grace_ms: 1000,
        logs: Default::default(),
        artifacts: vec![],
        image: None,
        image_auth: None,
    };
    let paths = TaskPaths::new(dir, parent, &assignment.task_id);
    let container = assignment.task_id.to_string();
    // As the agent does: the runtime runs in the task's cgroup (made with the limits, joined
    // before exec), and the container stays there.
    runtime::prepare_bundle(&paths, image, &argv(image), &BTreeMap::new(), "bench").expect("bundle");
    let program = oci.binary.display().to_string();
    let args = oci.run_args(&paths, &container);
    let invocation = Invocation { program: &program, args: &args };
    let (mut child, cgroup) =
        launch::launch(cgroups, &paths, &assignment, &invocation, &BTreeMap::new()).expect("launch");
    let status = child.wait().await.expect("wait");
    assert!(status.success(), "the container failed ({status}): see {}", paths.log("stderr").display());
    oci.remove(&paths, &container).await;
    cgroup.remove().expect("remove the task's cgroup");
    remove_cgroups(&paths.cgroup);
}

fn start_registry(dir: &Path, cleanup: &mut Cleanup) -> String {
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n  secret: bench\n",
            dir.join("registry").display()
        ),
    )
    .expect("config");
    let mut child = Command::new("docker-registry")
        .args(["serve", &config.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker-registry installed (scripts/setup.sh test)");
    let stderr = child.stderr.take().expect("stderr");
    cleanup.registry = Some(child);
    let mut lines = BufReader::new(stderr).lines();
    let address = loop {
        let line = lines.next().expect("registry output").expect("line");
        if let Some(at) = line.find("listening on ") {
            break line[at + 13..].split(['"', ' ']).next().unwrap_or_default().to_string();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    address
}

async fn push_image(address: &str) {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static installed");
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(busybox.len() as u64);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    builder.append_data(&mut header, "bin/busybox", &busybox[..]).expect("layer");
    let layer = builder.into_inner().expect("tar").finish().expect("gzip");
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/busybox", "true"]},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .expect("config");
    let http = reqwest::Client::new();
    let digest = |bytes: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    for blob in [&config, &layer] {
        let started =
            http.post(format!("http://{address}/v2/bench/busybox/blobs/uploads/")).send().await.expect("upload");
        let location = started.headers()["location"].to_str().expect("location").to_string();
        let location = if location.starts_with("http") { location } else { format!("http://{address}{location}") };
        let separator = if location.contains('?') { '&' } else { '?' };
        let done = http
            .put(format!("{location}{separator}digest={}", digest(blob)))
            .body(blob.clone())
            .send()
            .await
            .expect("put");
        assert_eq!(done.status(), 201, "blob upload");
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(&layer), "size": layer.len()}],
    }))
    .expect("manifest");
    let pushed = http
        .put(format!("http://{address}/v2/bench/busybox/manifests/1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await
        .expect("manifest");
    assert_eq!(pushed.status(), 201, "manifest push");
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn percentile(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len().saturating_sub(1) / 2).copied().unwrap_or(f64::NAN)
}
