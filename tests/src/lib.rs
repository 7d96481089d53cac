//! The end-to-end harness: a whole Canopy per test (its own database, control service on a
//! free port, machines in their own cgroup slices), torn down even when the test fails.

pub mod browser;
pub mod files;
pub mod registry;

use anyhow::{Context, Result, bail};
use canopy_core::Resources;
use canopy_localstack::booter::{self, Booter};
use canopy_localstack::emulator::{Emulator, Kind};
use canopy_localstack::{Binaries, ControlService, LocalMachine, MachineSpec, TempDatabase};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The PostgreSQL server tests create their databases on.
pub fn server_url() -> String {
    std::env::var("CANOPY_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A random lowercase suffix for names that must not collide between parallel tests.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple().to_string().get(..12).unwrap_or("x"))
}

pub struct Stack {
    /// The emulated cloud and its booter, when the stack buys machines.
    pub cloud: Option<Cloud>,
    pub control: ControlService,
    pub machines: Vec<LocalMachine>,
    pub admin: Api,
    /// A developer of team `alpha`.
    pub developer: Api,
    pub dir: PathBuf,
    pub binaries: Binaries,
    pub cgroup_root: PathBuf,
    listen: String,
    admin_token: String,
    control_env: Vec<(String, String)>,
    // Dropped last: the database goes after every process using it.
    pub database: TempDatabase,
}

impl Stack {
    /// A control service with `machines` local machines of 1 cpu / 1 GiB each.
    pub async fn start(machines: usize) -> Result<Stack> {
        let stack = Stack::start_with(None, 0, 0).await?;
        Stack::add_machines(stack, machines).await
    }

    /// A control service that buys its machines on emulated EC2 (moto), whose instances the
    /// booter turns into real agents. `idle_timeout_s` is how soon empty machines are returned.
    pub async fn start_with_cloud(idle_timeout_s: u64) -> Result<Stack> {
        Stack::start_with_clouds(&[Kind::Aws], idle_timeout_s, 30).await
    }

    /// As `start_with_cloud`, with the boot timeout too.
    pub async fn start_with_cloud_timeouts(idle_timeout_s: u64, boot_timeout_s: u64) -> Result<Stack> {
        Stack::start_with_clouds(&[Kind::Aws], idle_timeout_s, boot_timeout_s).await
    }

    /// A control service that buys machines on these emulated clouds.
    pub async fn start_with_clouds(kinds: &[Kind], idle_timeout_s: u64, boot_timeout_s: u64) -> Result<Stack> {
        let name = unique("canopy_cloud");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        let binaries = Binaries::find()?;
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut emulators = Vec::new();
        for &kind in kinds {
            let log = dir.join(format!("{}.log", kind.name()));
            emulators.push(Arc::new(Emulator::start(kind, &repo, &log, &[]).await?));
        }
        let booter = Arc::new(Booter::new(&binaries.agent, &PathBuf::from(&name), &dir.join("machines"))?);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(booter::run(booter.clone(), emulators.clone(), Duration::from_millis(200), stop_rx));
        let cloud = Cloud { emulators, booter, stop, task: Some(task), dir };
        Stack::start_with(Some(Box::new(cloud)), idle_timeout_s, boot_timeout_s).await
    }

    async fn add_machines(mut stack: Stack, machines: usize) -> Result<Stack> {
        for _ in 0..machines {
            stack.add_machine(Resources::new(1000, 1 << 30)).await?;
        }
        stack.wait_ready_machines(machines).await?;
        Ok(stack)
    }

    async fn start_with(cloud: Option<Box<Cloud>>, idle_timeout_s: u64, boot_timeout_s: u64) -> Result<Stack> {
        let name = unique("canopy_test");
        let database = TempDatabase::create(&server_url(), &name).await?;
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        let binaries = Binaries::find()?;
        let admin_token = format!("cnp_{}", uuid::Uuid::new_v4().simple());
        let mut control_env: Vec<(String, String)> =
            vec![("CANOPY_ENTRY_LISTEN".to_string(), "127.0.0.1:0".to_string())];
        if let Some(cloud) = &cloud {
            let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            control_env.extend(canopy_localstack::emulator::control_env(
                &repo,
                cloud.url(Kind::Aws),
                cloud.url(Kind::Azure),
                cloud.url(Kind::OpenStack),
            ));
            control_env.extend([
                ("CANOPY_BOOT_TIMEOUT_S".to_string(), boot_timeout_s.to_string()),
                ("CANOPY_IDLE_TIMEOUT_S".to_string(), idle_timeout_s.to_string()),
            ]);
        }
        let env: Vec<(&str, &str)> = control_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let control = ControlService::start(
            &binaries,
            &database.url,
            &admin_token,
            "127.0.0.1:0",
            &dir.join("control.log"),
            &env,
        )
        .await?;
        let listen = control.url.trim_start_matches("http://").to_string();
        let admin = Api::new(&control.url, &admin_token);
        admin.call(Method::POST, "/v1/teams", Some(json!({"name": "alpha"}))).await?.ok()?;
        let token = admin
            .call(Method::POST, "/v1/tokens", Some(json!({"name": "dev-alpha", "role": "developer", "team": "alpha"})))
            .await?
            .ok()?;
        let developer = Api::new(&control.url, token["token"].as_str().context("token")?);
        Ok(Stack {
            cloud: cloud.map(|c| *c),
            control,
            machines: Vec::new(),
            admin,
            developer,
            cgroup_root: PathBuf::from(&name),
            dir,
            binaries,
            listen,
            admin_token,
            control_env,
            database,
        })
    }

    pub async fn add_machine(&mut self, capacity: Resources) -> Result<()> {
        let join = self.admin.call(Method::POST, "/v1/join-tokens", Some(json!({}))).await?.ok()?;
        let name = format!("m{}", self.machines.len() + 1);
        let spec = MachineSpec {
            address: "127.0.0.1".into(),
            capacity,
            labels: BTreeMap::from([("provider".to_string(), "baremetal".to_string())]),
            name: name.clone(),
        };
        let token = join["token"].as_str().context("join token")?;
        let machine = LocalMachine::start(
            &self.binaries,
            spec,
            &self.cgroup_root,
            &self.dir.join(&name),
            &self.control.url,
            token,
        )
        .await?;
        self.machines.push(machine);
        Ok(())
    }

    pub async fn wait_ready_machines(&self, count: usize) -> Result<()> {
        self.wait("machines ready", Duration::from_secs(30), || async {
            let machines = self.admin.get("/v1/machines").await?;
            Ok(machines.as_array().map_or(0, |m| m.iter().filter(|m| m["state"] == "ready").count()) >= count)
        })
        .await
    }

    /// Deploys a spec (TOML text) as the developer and returns the API's answer.
    pub async fn deploy(&self, toml: &str) -> Result<Value> {
        let spec = canopy_core::spec::AppSpec::from_toml(toml)?;
        let body = serde_json::to_value(&spec)?;
        self.developer.call(Method::PUT, &format!("/v1/apps/{}", spec.name), Some(body)).await?.ok()
    }

    /// Waits until `app` has `count` running (and, if it has a check, healthy) instances of its
    /// current version, and returns the app.
    pub async fn wait_running(&self, app: &str, count: usize, timeout: Duration) -> Result<Value> {
        let mut last = Value::Null;
        let started = Instant::now();
        loop {
            last = self.developer.get(&format!("/v1/apps/{app}")).await.unwrap_or(last);
            if running_tasks(&last).len() >= count {
                return Ok(last);
            }
            if started.elapsed() > timeout {
                bail!("{app} did not reach {count} running instances in {timeout:?}; last state: {last:#}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `check` until it holds or `timeout` passes.
    pub async fn wait<F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        let started = Instant::now();
        loop {
            if check().await.unwrap_or(false) {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn machine(&mut self, name: &str) -> Result<&mut LocalMachine> {
        self.machines.iter_mut().find(|m| m.spec.name == name).with_context(|| format!("no machine {name}"))
    }

    /// Stops the control service gracefully and starts a new one on the same database and
    /// address, as after an upgrade or a crash-restart.
    pub async fn restart_control(&mut self) -> Result<()> {
        self.control.stop(Duration::from_secs(10)).await;
        self.start_control_again().await
    }

    /// Kills the control service (SIGKILL, as in a crash) and starts a new one on the same
    /// database and address.
    pub async fn crash_and_restart_control(&mut self) -> Result<()> {
        self.control.kill().await;
        self.start_control_again().await
    }

    async fn start_control_again(&mut self) -> Result<()> {
        let env: Vec<(&str, &str)> = self.control_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let log = self.dir.join(format!("control-{}.log", uuid::Uuid::new_v4().simple()));
        self.control =
            ControlService::start(&self.binaries, &self.database.url, &self.admin_token, &self.listen, &log, &env)
                .await?;
        Ok(())
    }

    /// The emulated EC2.
    pub fn moto(&self) -> Result<&Emulator> {
        self.emulator(Kind::Aws)
    }

    pub fn emulator(&self, kind: Kind) -> Result<&Emulator> {
        self.cloud
            .as_ref()
            .and_then(|c| c.emulators.iter().find(|e| e.kind == kind))
            .map(|e| e.as_ref())
            .with_context(|| format!("this stack has no emulated {}", kind.name()))
    }
}

/// The emulated clouds and the booter that turns their machines into real ones.
pub struct Cloud {
    emulators: Vec<Arc<Emulator>>,
    booter: Arc<Booter>,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    dir: PathBuf,
}

impl Cloud {
    fn url(&self, kind: Kind) -> &str {
        self.emulators.iter().find(|e| e.kind == kind).map_or("", |e| e.url.as_str())
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // The booter's machines are killed whether or not its task got to run its shutdown.
        self.booter.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.machines.clear();
        self.cloud.take();
        if let Ok(cgroups) = canopy_agent::cgroup::Cgroups::detect() {
            let _ = cgroups.open(&self.cgroup_root).kill_tree();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The running instances of the app's current version, healthy where a check exists.
pub fn running_tasks(app: &Value) -> Vec<Value> {
    let version = app["version"].as_i64();
    let has_check = !app["spec"]["health"].is_null();
    app["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["version"].as_i64() == version && t["desired"] == "run" && t["state"] == "running")
        .filter(|t| !has_check || t["healthy"] == true)
        .cloned()
        .collect()
}

/// A spec for the sample HTTP app shipped in examples/, with `instances` instances.
pub fn hello_spec(name: &str, instances: u32) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/hello/hello.py");
    format!(
        r#"
name = "{name}"
command = "python3"
args = ["-u", {script:?}]
instances = {instances}
ports = ["http"]
stop_grace = "2s"

[resources]
cpu = 100
memory = "64Mi"

[health]
type = "http"
path = "/"
interval = "500ms"
grace = "5s"
"#
    )
}

/// A client acting with one token.
pub struct Api {
    http: reqwest::Client,
    pub url: String,
    token: Option<String>,
}

/// Status and JSON body of one call.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    pub fn ok(self) -> Result<Value> {
        if self.status.is_success() { Ok(self.body) } else { bail!("{}: {}", self.status, self.body) }
    }

    /// The error message of the API's error shape.
    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }
}

/// Every call of a test has a deadline, so a stuck server fails the test instead of hanging it.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap_or_default()
}

impl Api {
    pub fn new(url: &str, token: &str) -> Api {
        Api { http: http_client(), url: url.to_string(), token: Some(token.to_string()) }
    }

    /// The token this client sends (for running the CLI as the same user).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn anonymous(url: &str) -> Api {
        Api { http: http_client(), url: url.to_string(), token: None }
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None).await?.ok()
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Reply> {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    /// Sends a raw body with a content type, for malformed-input tests.
    pub async fn raw(&self, method: Method, path: &str, content_type: &str, body: Vec<u8>) -> Result<Reply> {
        let request =
            self.http.request(method, format!("{}{path}", self.url)).header("content-type", content_type).body(body);
        self.send(request).await
    }

    async fn send(&self, mut request: reqwest::RequestBuilder) -> Result<Reply> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Reply { status, body })
    }
}

/// Whether a process is alive (not a zombie).
pub fn alive(pid: u32) -> bool {
    canopy_agent::launch::alive(pid)
}
