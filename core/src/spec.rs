//! The app spec (`app.toml`): what a developer writes to run a long-running service.
//!
//! Parsing is done once, at the edge, into an `AppSpec` that has been validated; every error
//! names the field it concerns (`resources.memory: ...`) so the CLI and the API can say exactly
//! what is wrong. Unknown fields are refused rather than ignored.

use crate::artifact::ArtifactSpec;
use crate::image::{ImageAuth, ImageReference};
use crate::quantity::{Bytes, Millis};
use crate::resources::Resources;
use crate::schedule::Constraints;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

pub const MAX_INSTANCES: u32 = 1000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    pub name: String,
    /// The program to run. With an `image` it may be left out: the image's entrypoint and
    /// command run then (`args`, when given, replace the image's command).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// An OCI image to run the task in (`registry.example/app:1.2`), pulled by the agent and
    /// run by an OCI runtime under the same cgroup limits as a process. Left out of the
    /// serialized form when absent, for the same reason as `placement`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Credentials for the image's registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_auth: Option<ImageAuth>,
    /// Files fetched into the task's sandbox before it starts, checksums verified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactSpec>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The workload's own labels (`team`-independent names such as `env = "prod"`): what a
    /// policy scoped to labels matches. Not machine labels (those are `placement.labels`). Left
    /// out of the serialized form when empty, for the same reason as `placement`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default = "default_instances")]
    pub instances: u32,
    pub resources: ResourceSpec,
    /// Named ports; the agent allocates a host port for each and passes it as `PORT_<NAME>`
    /// (and the first one also as `PORT`).
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub health: Option<HealthCheck>,
    #[serde(default)]
    pub restart: RestartSpec,
    /// Time between SIGTERM and SIGKILL when a task is stopped.
    #[serde(default = "default_stop_grace")]
    pub stop_grace: Millis,
    /// How much of each task's output its machine keeps. Left out of the serialized form when
    /// it is the default, for the same reason as `placement`.
    #[serde(default, skip_serializing_if = "LogsSpec::is_default")]
    pub logs: LogsSpec,
    /// The app tolerates losing an instance to a reclaimed machine, so Canopy may run it on
    /// spot capacity.
    #[serde(default)]
    pub interruptible: bool,
    /// Where the app's tasks may run. Left out of the serialized form when it allows anywhere,
    /// so the stored JSON of a spec without it (and so its version) is what it was before the
    /// field existed.
    #[serde(default, skip_serializing_if = "PlacementSpec::is_anywhere")]
    pub placement: PlacementSpec,
    /// How a new version replaces the running one. Left out of the serialized form when it is
    /// the default, for the same reason as `placement`.
    #[serde(default, skip_serializing_if = "UpdateSpec::is_default")]
    pub update: UpdateSpec,
    /// Scale on CPU utilization between `min` and `max`; `instances` is then only the count to
    /// start with. Left out of the serialized form when absent, for the same reason as
    /// `placement`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleSpec>,
    /// Present for a batch job: its tasks run to completion instead of being kept running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobSpec>,
    /// Higher is placed first; when the pool has no room and none can be bought, a task may
    /// evict running batch-job tasks of strictly lower priority (they run again later).
    /// Left out of the serialized form when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
}

fn is_zero(value: &i32) -> bool {
    *value == 0
}

/// The range of `priority`.
pub const PRIORITIES: std::ops::RangeInclusive<i32> = -1000..=1000;

/// A batch job, as Kubernetes Jobs and Nomad batch jobs: `completions` runs must exit 0,
/// at most `parallelism` at once; a failed run is retried (a new task, after `backoff`,
/// doubled each time) until `retries` is used up; the whole job fails past `deadline`. A job
/// starts only once every job in `depends_on` (same team) has succeeded, and fails if one of
/// them fails.
///
/// With a `schedule` (cron, in `time_zone`) the job is a template instead, as a Kubernetes
/// CronJob: each due instant starts a job of its own, `<name>-<yyyymmddhhmm>` (UTC), subject
/// to `concurrency` while an earlier one still runs; instants missed while the control
/// service was down run once (`missed = "run_once"`, within `starting_deadline`) or not at
/// all (`"skip"`). No instant ever runs twice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSpec {
    pub completions: u32,
    pub parallelism: u32,
    pub retries: u32,
    pub backoff: Millis,
    pub deadline: Option<Millis>,
    pub depends_on: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// IANA zone the schedule is read in (default UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    pub concurrency: Concurrency,
    pub missed: Missed,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starting_deadline: Option<Millis>,
}

/// What a scheduled job does when a run is due while the previous one still runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    Allow,
    #[default]
    Forbid,
    Replace,
}

/// What a scheduled job does with instants missed while the control service was down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    Skip,
    #[default]
    RunOnce,
}

impl Default for JobSpec {
    fn default() -> Self {
        JobSpec {
            completions: 1,
            parallelism: 1,
            retries: 3,
            backoff: Millis(1000),
            deadline: None,
            depends_on: Vec::new(),
            schedule: None,
            time_zone: None,
            concurrency: Concurrency::default(),
            missed: Missed::default(),
            starting_deadline: None,
        }
    }
}

/// Room a scheduled job's name leaves for the `-<yyyymmddhhmm>` of its runs.
const MAX_SCHEDULED_NAME: usize = 63 - 13;

impl JobSpec {
    /// The parsed schedule, for a scheduled job (validated specs always parse).
    pub fn cron(&self) -> Option<Result<crate::cron::Schedule, crate::cron::CronError>> {
        self.schedule.as_deref().map(|expr| crate::cron::Schedule::parse(expr, self.time_zone.as_deref()))
    }

    fn validate(&self, name: &str) -> Result<(), SpecError> {
        if self.schedule.is_none() && self.time_zone.is_some() {
            return Err(SpecError::new("job.time_zone", "only a scheduled job has a time zone: add a schedule"));
        }
        match self.cron() {
            Some(Err(e @ crate::cron::CronError::UnknownTimeZone(_))) => {
                return Err(SpecError::new("job.time_zone", e.to_string()));
            }
            Some(Err(e)) => return Err(SpecError::new("job.schedule", e.to_string())),
            Some(Ok(_)) => {
                if !self.depends_on.is_empty() {
                    return Err(SpecError::new("job.depends_on", "a scheduled job cannot depend on other jobs"));
                }
                if name.len() > MAX_SCHEDULED_NAME {
                    return Err(SpecError::new(
                        "name",
                        format!(
                            "a scheduled job's name must be at most {MAX_SCHEDULED_NAME} characters (its runs add 13)"
                        ),
                    ));
                }
            }
            None => {}
        }
        if !(1..=MAX_INSTANCES).contains(&self.completions) {
            return Err(SpecError::new("job.completions", format!("must be between 1 and {MAX_INSTANCES}")));
        }
        if !(1..=MAX_INSTANCES).contains(&self.parallelism) {
            return Err(SpecError::new("job.parallelism", format!("must be between 1 and {MAX_INSTANCES}")));
        }
        if self.deadline.is_some_and(|d| d.0 == 0) {
            return Err(SpecError::new("job.deadline", "must be more than 0"));
        }
        for (index, dependency) in self.depends_on.iter().enumerate() {
            let field = format!("job.depends_on[{index}]");
            validate_name(&field, dependency)?;
            if dependency == name {
                return Err(SpecError::new(field, "a job cannot depend on itself"));
            }
            if self.depends_on[..index].contains(dependency) {
                return Err(SpecError::new(field, format!("{dependency:?} is listed twice")));
            }
        }
        Ok(())
    }
}

/// The `[autoscale]` table: Kubernetes' HorizontalPodAutoscaler on CPU. The control service
/// averages each running instance's CPU use over `window`, as a percentage of the instance's
/// `resources.cpu`, and moves the instance count towards `current * utilization / target_cpu`
/// (ignoring changes within 10% of the target), always within `min..=max`.
///
/// `target_cpu` is at most 100: the agent caps a task's CPU at its request (CFS quota), so a
/// utilization above 100% is never observed and a higher target could never scale up.
/// Scale-downs wait until `cooldown` has passed since the last change and go only as low as
/// the highest count wanted during that time, so a short lull does not remove instances;
/// scale-ups do not wait for the cooldown but happen at most every few seconds, and at most
/// double the count (or add 4) at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleSpec {
    pub min: u32,
    pub max: u32,
    /// Percent of `resources.cpu` each instance should use on average, 1 to 100.
    pub target_cpu: u32,
    #[serde(default = "default_cooldown")]
    pub cooldown: Millis,
    /// How far back CPU use is averaged.
    #[serde(default = "default_window")]
    pub window: Millis,
}

/// The shortest `autoscale.window`: agents report CPU use about once a second, and a rate
/// needs at least two reports.
pub const MIN_AUTOSCALE_WINDOW: Millis = Millis(2000);
/// The longest `autoscale.window` and `autoscale.cooldown`.
pub const MAX_AUTOSCALE_PERIOD: Millis = Millis(3_600_000);

fn default_cooldown() -> Millis {
    Millis::from_secs(30)
}

fn default_window() -> Millis {
    Millis::from_secs(10)
}

impl AutoscaleSpec {
    /// `instances` brought within `min..=max`.
    pub fn clamp(&self, instances: u32) -> u32 {
        instances.clamp(self.min, self.max.max(self.min))
    }

    fn validate(&self) -> Result<(), SpecError> {
        if self.min == 0 {
            return Err(SpecError::new("autoscale.min", "must be at least 1"));
        }
        if self.max < self.min {
            return Err(SpecError::new("autoscale.max", format!("must be at least autoscale.min ({})", self.min)));
        }
        if self.max > MAX_INSTANCES {
            return Err(SpecError::new("autoscale.max", format!("must be at most {MAX_INSTANCES}")));
        }
        if !(1..=100).contains(&self.target_cpu) {
            return Err(SpecError::new(
                "autoscale.target_cpu",
                "must be 1 to 100 (percent of resources.cpu, which is also the most a task can use)",
            ));
        }
        if self.cooldown > MAX_AUTOSCALE_PERIOD {
            return Err(SpecError::new("autoscale.cooldown", format!("must be at most {MAX_AUTOSCALE_PERIOD}")));
        }
        if self.window < MIN_AUTOSCALE_WINDOW || self.window > MAX_AUTOSCALE_PERIOD {
            let message = format!("must be between {MIN_AUTOSCALE_WINDOW} and {MAX_AUTOSCALE_PERIOD}");
            return Err(SpecError::new("autoscale.window", message));
        }
        Ok(())
    }
}

/// A rolling update, as Kubernetes Deployments do it: new-version instances come up at most
/// `max_surge` beyond the old ones, at most `max_unavailable` instances are down because of
/// the update, and an old instance stops only once its successor is healthy. A new instance
/// that is not healthy within `health_deadline` (or fails) fails the rollout, which is rolled
/// back to the last version that was fully rolled out when `auto_rollback` is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateSpec {
    pub max_surge: u32,
    pub max_unavailable: u32,
    pub health_deadline: Millis,
    pub auto_rollback: bool,
    /// Bring up this many new-version instances first, then pause the rollout until it is
    /// promoted (`canopy promote APP`); 0: no canary step.
    pub canary: u32,
}

impl Default for UpdateSpec {
    fn default() -> Self {
        UpdateSpec {
            max_surge: 1,
            max_unavailable: 0,
            health_deadline: Millis::from_secs(120),
            auto_rollback: true,
            canary: 0,
        }
    }
}

impl UpdateSpec {
    pub fn is_default(&self) -> bool {
        *self == UpdateSpec::default()
    }

    fn validate(&self) -> Result<(), SpecError> {
        if self.max_surge == 0 && self.max_unavailable == 0 {
            return Err(SpecError::new(
                "update.max_surge",
                "max_surge and max_unavailable cannot both be 0: the update could never make progress",
            ));
        }
        if self.health_deadline.0 == 0 {
            return Err(SpecError::new("update.health_deadline", "must be more than 0"));
        }
        if self.canary > MAX_INSTANCES {
            return Err(SpecError::new("update.canary", format!("must be at most {MAX_INSTANCES}")));
        }
        Ok(())
    }
}

fn default_instances() -> u32 {
    1
}

fn default_stop_grace() -> Millis {
    Millis::from_secs(10)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    /// Milli-cpus: 1000 is one core.
    pub cpu: u64,
    pub memory: Bytes,
    #[serde(default = "default_pids")]
    pub pids: u64,
}

fn default_pids() -> u64 {
    256
}

impl ResourceSpec {
    pub fn resources(&self) -> Resources {
        Resources::new(self.cpu, self.memory.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub kind: ProbeKind,
    /// For `http`: the path to GET; any 2xx or 3xx is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// For `http` and `tcp`: which of the app's ports (default: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// For `command`: the program and its arguments; exit 0 is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default = "default_interval")]
    pub interval: Millis,
    #[serde(default = "default_timeout")]
    pub timeout: Millis,
    /// Time after start during which failures do not count.
    #[serde(default = "default_grace")]
    pub grace: Millis,
    /// Consecutive failures after which the task is restarted.
    #[serde(default = "default_failures")]
    pub failures: u32,
}

fn default_interval() -> Millis {
    Millis::from_secs(2)
}
fn default_timeout() -> Millis {
    Millis::from_secs(1)
}
fn default_grace() -> Millis {
    Millis::from_secs(5)
}
fn default_failures() -> u32 {
    3
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    Http,
    Tcp,
    Command,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    #[serde(default)]
    pub policy: RestartPolicy,
    /// First delay before a restart; doubled after each failure up to `max_backoff`.
    #[serde(default = "default_backoff")]
    pub backoff: Millis,
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Millis,
}

fn default_backoff() -> Millis {
    Millis(500)
}
fn default_max_backoff() -> Millis {
    Millis::from_secs(30)
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec { policy: RestartPolicy::Always, backoff: default_backoff(), max_backoff: default_max_backoff() }
    }
}

/// The `[logs]` table: log retention per task and per stream. A task's `stdout.log` (and
/// `stderr.log`) is rotated once it passes `max_size`, into `stdout.log.1` (the previous `.1`
/// becoming `.2`, and so on), keeping at most `max_files` rotated files; older output is
/// deleted, so a stream of a task takes at most about `max_size * (max_files + 1)` on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsSpec {
    pub max_size: Bytes,
    pub max_files: u32,
}

/// The smallest `logs.max_size`: below this a task would be rotating all the time.
pub const MIN_LOG_SIZE: u64 = 1 << 10;
/// The most rotated files kept per stream.
pub const MAX_LOG_FILES: u32 = 100;

impl Default for LogsSpec {
    fn default() -> Self {
        LogsSpec { max_size: Bytes(10 << 20), max_files: 2 }
    }
}

impl LogsSpec {
    pub fn is_default(&self) -> bool {
        *self == LogsSpec::default()
    }

    fn validate(&self) -> Result<(), SpecError> {
        if self.max_size.0 < MIN_LOG_SIZE {
            return Err(SpecError::new("logs.max_size", format!("must be at least {}", Bytes(MIN_LOG_SIZE))));
        }
        if self.max_files > MAX_LOG_FILES {
            return Err(SpecError::new("logs.max_files", format!("must be at most {MAX_LOG_FILES}")));
        }
        Ok(())
    }
}

/// The `[placement]` table: hard limits on the machines an app's tasks may run on, for data
/// residency and the like. Each list left empty allows any value; a task goes only to a machine
/// (or an offering) whose provider, region and zone are each in their list and that carries
/// every one of `labels` with the same value. Duplicates in a list are refused rather than
/// silently dropped, as for `ports`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderName>,
    /// Provider region names (`us-east-1`, `westeurope`, `RegionOne`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// Provider zone names (`us-east-1a`, Azure's `1`, an OpenStack availability zone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    /// Machine labels that must all be present with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl PlacementSpec {
    /// True when nothing is constrained.
    pub fn is_anywhere(&self) -> bool {
        self.providers.is_empty() && self.regions.is_empty() && self.zones.is_empty() && self.labels.is_empty()
    }

    /// The scheduler's form of these limits (`arch` is not the spec's to say and stays unset).
    pub fn constraints(&self) -> Constraints {
        Constraints {
            providers: self.providers.iter().map(|p| p.as_str().to_string()).collect(),
            regions: self.regions.clone(),
            zones: self.zones.clone(),
            labels: self.labels.clone(),
            arch: None,
        }
    }

    fn validate(&self) -> Result<(), SpecError> {
        for (index, provider) in self.providers.iter().enumerate() {
            if self.providers[..index].contains(provider) {
                let message = format!("provider {:?} is listed twice", provider.as_str());
                return Err(SpecError::new(format!("placement.providers[{index}]"), message));
            }
        }
        validate_names("placement.regions", "region", &self.regions)?;
        validate_names("placement.zones", "zone", &self.zones)?;
        for key in self.labels.keys() {
            if key.is_empty() || key.trim() != key {
                let message = format!("label name {key:?} must not be empty or start or end with whitespace");
                return Err(SpecError::new(format!("placement.labels.{key}"), message));
            }
        }
        Ok(())
    }
}

/// Region and zone names are the provider's own, so only what can never match one is refused.
fn validate_names(field: &str, what: &str, names: &[String]) -> Result<(), SpecError> {
    for (index, name) in names.iter().enumerate() {
        let field = format!("{field}[{index}]");
        if name.is_empty() || name.trim() != name {
            return Err(SpecError::new(
                field,
                format!("{what} {name:?} must not be empty or start or end with whitespace"),
            ));
        }
        if names[..index].contains(name) {
            return Err(SpecError::new(field, format!("{what} {name:?} is listed twice")));
        }
    }
    Ok(())
}

/// A provider Canopy can run machines on, as written in specs and stored on machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProviderName {
    Aws,
    Azure,
    OpenStack,
    BareMetal,
}

impl ProviderName {
    pub const ALL: [ProviderName; 4] =
        [ProviderName::Aws, ProviderName::Azure, ProviderName::OpenStack, ProviderName::BareMetal];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderName::Aws => "aws",
            ProviderName::Azure => "azure",
            ProviderName::OpenStack => "openstack",
            ProviderName::BareMetal => "baremetal",
        }
    }

    pub fn parse(name: &str) -> Option<ProviderName> {
        ProviderName::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for ProviderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ProviderName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

// By hand rather than derived, so the error says what was written and what is allowed in the
// spec's own words; serde_path_to_error adds the field (`placement.providers[1]`).
impl<'de> Deserialize<'de> for ProviderName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        ProviderName::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown provider {name:?} (expected aws, azure, openstack or baremetal)"))
        })
    }
}

/// A spec that could not be accepted, with the dotted path of the offending field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError { field: field.into(), message: message.into() }
    }
}

impl AppSpec {
    /// Parses and validates an `app.toml`.
    pub fn from_toml(text: &str) -> Result<AppSpec, SpecError> {
        let deserializer =
            toml::Deserializer::parse(text).map_err(|e| SpecError::new("(document)", e.message().to_string()))?;
        let spec: AppSpec =
            serde_path_to_error::deserialize(deserializer).map_err(|e| path_error(e.path(), e.inner().message()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Parses and validates the JSON form of a spec (what the API accepts).
    pub fn from_json(bytes: &[u8]) -> Result<AppSpec, SpecError> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let spec: AppSpec = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|e| path_error(e.path(), &e.inner().to_string()))?;
        deserializer.end().map_err(|e| SpecError::new("(document)", e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name("name", &self.name)?;
        match &self.image {
            Some(image) => {
                ImageReference::parse(image).map_err(|message| SpecError::new("image", message))?;
            }
            None if self.command.trim().is_empty() => {
                return Err(SpecError::new("command", "must not be empty (or give an image to run)"));
            }
            None if self.image_auth.is_some() => {
                return Err(SpecError::new("image_auth", "is only used with an image"));
            }
            None => {}
        }
        for (index, artifact) in self.artifacts.iter().enumerate() {
            artifact.validate(&format!("artifacts[{index}]"))?;
        }
        for key in self.env.keys() {
            let valid = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(SpecError::new(format!("env.{key}"), "variable names use letters, digits and _"));
            }
        }
        for key in self.labels.keys() {
            if key.is_empty() || key.trim() != key {
                let message = format!("label name {key:?} must not be empty or start or end with whitespace");
                return Err(SpecError::new(format!("labels.{key}"), message));
            }
        }
        if self.instances > MAX_INSTANCES {
            return Err(SpecError::new("instances", format!("must be at most {MAX_INSTANCES}")));
        }
        if self.resources.cpu == 0 {
            return Err(SpecError::new("resources.cpu", "must be at least 1 (milli-cpus)"));
        }
        if self.resources.memory.0 < 4 << 20 {
            return Err(SpecError::new("resources.memory", "must be at least 4Mi"));
        }
        if self.resources.pids == 0 {
            return Err(SpecError::new("resources.pids", "must be at least 1"));
        }
        self.logs.validate()?;
        for (index, port) in self.ports.iter().enumerate() {
            validate_name(&format!("ports[{index}]"), port)?;
            if self.ports[..index].contains(port) {
                return Err(SpecError::new(format!("ports[{index}]"), format!("port {port:?} is listed twice")));
            }
        }
        if let Some(health) = &self.health {
            self.validate_health(health)?;
        }
        if self.restart.backoff.0 == 0 || self.restart.max_backoff < self.restart.backoff {
            return Err(SpecError::new("restart.max_backoff", "must be at least restart.backoff, which must be > 0"));
        }
        self.placement.validate()?;
        self.update.validate()?;
        if let Some(autoscale) = &self.autoscale {
            autoscale.validate()?;
        }
        if !PRIORITIES.contains(&self.priority) {
            return Err(SpecError::new(
                "priority",
                format!("must be between {} and {}", PRIORITIES.start(), PRIORITIES.end()),
            ));
        }
        if let Some(job) = &self.job {
            job.validate(&self.name)?;
            if self.autoscale.is_some() {
                return Err(SpecError::new("autoscale", "a job runs to completion: it cannot be autoscaled"));
            }
        }
        Ok(())
    }

    fn validate_health(&self, health: &HealthCheck) -> Result<(), SpecError> {
        let misplaced = |field: &str, kind: &str| {
            SpecError::new(format!("health.{field}"), format!("is not used by a {kind} check"))
        };
        match health.kind {
            ProbeKind::Http => match &health.path {
                Some(path) if path.starts_with('/') => {}
                Some(_) => return Err(SpecError::new("health.path", "must start with /")),
                None => return Err(SpecError::new("health.path", "an http check needs a path")),
            },
            ProbeKind::Tcp if health.path.is_some() => return Err(misplaced("path", "tcp")),
            ProbeKind::Tcp => {}
            ProbeKind::Command => {
                if health.path.is_some() {
                    return Err(misplaced("path", "command"));
                }
                if health.port.is_some() {
                    return Err(misplaced("port", "command"));
                }
                if health.command.as_ref().is_none_or(|c| c.is_empty()) {
                    return Err(SpecError::new("health.command", "a command check needs a program to run"));
                }
            }
        }
        if health.kind != ProbeKind::Command {
            if health.command.is_some() {
                return Err(misplaced("command", "network"));
            }
            match &health.port {
                Some(name) if !self.ports.contains(name) => {
                    return Err(SpecError::new("health.port", format!("{name:?} is not one of ports")));
                }
                None if self.ports.is_empty() => {
                    return Err(SpecError::new("health.port", "an http or tcp check needs the app to declare a port"));
                }
                _ => {}
            }
        }
        if health.interval.0 == 0 || health.timeout.0 == 0 {
            return Err(SpecError::new("health.interval", "interval and timeout must be > 0"));
        }
        if health.failures == 0 {
            return Err(SpecError::new("health.failures", "must be at least 1"));
        }
        Ok(())
    }
}

/// Names are DNS labels: they appear in URLs, cgroup paths and log file names.
pub fn validate_name(field: &str, name: &str) -> Result<(), SpecError> {
    let valid = (1..=63).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(SpecError::new(field, format!("{name:?} must be 1-63 lowercase letters, digits or '-'")))
    }
}

fn path_error(path: &serde_path_to_error::Path, message: &str) -> SpecError {
    let path = path.to_string();
    let field = if path == "." { "(document)".to_string() } else { path };
    // serde_json appends the position; the field path already says where.
    let message = message.split(" at line ").next().unwrap_or(message);
    SpecError::new(field, message.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = r#"
name = "hello"
command = "python3"
args = ["-u", "hello.py"]
instances = 2
ports = ["http"]

[resources]
cpu = 250
memory = "64Mi"

[health]
type = "http"
path = "/healthz"
interval = "1s"
"#;

    #[test]
    fn parses_a_complete_spec_with_defaults() {
        let spec = AppSpec::from_toml(HELLO).expect("valid spec");
        assert_eq!(spec.instances, 2);
        assert_eq!(spec.resources.resources(), Resources::new(250, 64 << 20));
        assert_eq!(spec.resources.pids, 256);
        assert_eq!(spec.restart.policy, RestartPolicy::Always);
        let health = spec.health.expect("health");
        assert_eq!(health.interval, Millis(1000));
        assert_eq!(health.failures, 3);
    }

    #[test]
    fn json_round_trip_is_lossless() {
        let spec = AppSpec::from_toml(HELLO).expect("valid spec");
        let json = serde_json::to_vec(&spec).expect("serialize");
        assert_eq!(AppSpec::from_json(&json), Ok(spec));
    }

    #[test]
    fn unknown_fields_are_named() {
        let text = HELLO.replace("cpu = 250", "cpu = 250\ncpus = 2");
        let error = AppSpec::from_toml(&text).unwrap_err();
        assert_eq!(error.field, "resources.cpus");
        assert!(error.message.contains("unknown field `cpus`"), "{error}");
    }

    #[test]
    fn wrong_types_name_the_field() {
        let error =
            AppSpec::from_json(br#"{"name":"a","command":"x","instances":"two","resources":{"cpu":1,"memory":"8Mi"}}"#)
                .unwrap_err();
        assert_eq!(error.field, "instances");
        let error = AppSpec::from_toml(&HELLO.replace("\"64Mi\"", "\"64Qi\"")).unwrap_err();
        assert_eq!(error.field, "resources.memory");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let cases = [
            (HELLO.replace("name = \"hello\"", "name = \"Hello World\""), "name"),
            (HELLO.replace("cpu = 250", "cpu = 0"), "resources.cpu"),
            (HELLO.replace("instances = 2", "instances = 5000"), "instances"),
            (HELLO.replace("path = \"/healthz\"", "path = \"healthz\""), "health.path"),
            (HELLO.replace("ports = [\"http\"]", "ports = []"), "health.port"),
            (HELLO.replace("\"64Mi\"", "\"1Mi\""), "resources.memory"),
        ];
        for (text, field) in cases {
            assert_eq!(AppSpec::from_toml(&text).unwrap_err().field, field, "{text}");
        }
    }

    const PLACED: &str = r#"
[placement]
providers = ["aws", "azure"]
regions = ["eu-west-1", "westeurope"]
zones = ["eu-west-1a"]
labels = { residency = "eu", tier = "gold" }
"#;

    #[test]
    fn logs_limits_default_parse_validate_and_stay_out_of_the_json_when_default() {
        let spec = AppSpec::from_toml(HELLO).expect("hello");
        assert_eq!(spec.logs, LogsSpec { max_size: Bytes(10 << 20), max_files: 2 });
        assert!(serde_json::to_value(&spec).expect("json").get("logs").is_none());
        let spec = AppSpec::from_toml(&format!("{HELLO}\n[logs]\nmax_size = \"64Ki\"\nmax_files = 0\n")).expect("logs");
        assert_eq!(spec.logs, LogsSpec { max_size: Bytes(64 << 10), max_files: 0 });
        let json = serde_json::to_vec(&spec).expect("json");
        assert_eq!(AppSpec::from_json(&json).expect("round trip").logs, spec.logs);
        for (table, field) in [
            ("max_size = \"1000\"", "logs.max_size"),
            ("max_size = \"lots\"", "logs.max_size"),
            ("max_files = 101", "logs.max_files"),
            ("max_files = -1", "logs.max_files"),
            ("keep = 3", "logs.keep"),
        ] {
            let error = AppSpec::from_toml(&format!("{HELLO}\n[logs]\n{table}\n")).expect_err(table);
            assert_eq!(error.field, field, "{table}: {error}");
        }
    }

    #[test]
    fn placement_becomes_the_schedulers_constraints() {
        let spec = AppSpec::from_toml(&format!("{HELLO}{PLACED}")).expect("valid spec");
        assert_eq!(spec.placement.providers, vec![ProviderName::Aws, ProviderName::Azure]);
        let constraints = spec.placement.constraints();
        assert_eq!(constraints.providers, vec!["aws".to_string(), "azure".to_string()]);
        assert_eq!(constraints.regions, vec!["eu-west-1".to_string(), "westeurope".to_string()]);
        assert_eq!(constraints.zones, vec!["eu-west-1a".to_string()]);
        assert_eq!(constraints.labels.get("residency").map(String::as_str), Some("eu"));
        assert_eq!(constraints.arch, None);
        let json = serde_json::to_vec(&spec).expect("serialize");
        assert_eq!(AppSpec::from_json(&json), Ok(spec));
    }

    #[test]
    fn no_placement_or_an_empty_one_means_anywhere_and_is_not_serialized() {
        let absent = AppSpec::from_toml(HELLO).expect("valid spec");
        let empty = AppSpec::from_toml(&format!("{HELLO}\n[placement]\nproviders = []\n")).expect("valid spec");
        assert_eq!(absent, empty);
        assert!(absent.placement.is_anywhere());
        assert_eq!(absent.placement.constraints(), Constraints::default());
        // The stored JSON of a spec without placement is unchanged, so redeploying it after an
        // upgrade is not a new version, and versions stored before the field existed still load.
        let json = serde_json::to_value(&absent).expect("serialize");
        assert!(json.get("placement").is_none(), "{json}");
        assert_eq!(AppSpec::from_json(json.to_string().as_bytes()), Ok(absent));
    }

    #[test]
    fn placement_errors_name_the_field() {
        let cases = [
            (
                r#"providers = ["aws", "gcp"]"#,
                "placement.providers[1]",
                r#"unknown provider "gcp" (expected aws, azure, openstack or baremetal)"#,
            ),
            (r#"providers = ["aws", "azure", "aws"]"#, "placement.providers[2]", r#"provider "aws" is listed twice"#),
            (
                r#"regions = ["us-east-1", "us-east-1"]"#,
                "placement.regions[1]",
                r#"region "us-east-1" is listed twice"#,
            ),
            (r#"regions = [""]"#, "placement.regions[0]", "must not be empty"),
            (r#"zones = ["a", " b"]"#, "placement.zones[1]", "whitespace"),
            (r#"labels = { "" = "x" }"#, "placement.labels.", "must not be empty"),
            (r#"labels = { tier = 3 }"#, "placement.labels.tier", "invalid type"),
            (r#"provider = ["aws"]"#, "placement.provider", "unknown field `provider`"),
            (r#"providers = "aws""#, "placement.providers", "invalid type"),
        ];
        for (line, field, message) in cases {
            let text = format!("{HELLO}\n[placement]\n{line}\n");
            let error = AppSpec::from_toml(&text).unwrap_err();
            assert_eq!(error.field, field, "{line}: {error}");
            assert!(error.message.contains(message), "{line}: {error}");
        }
    }

    #[test]
    fn an_unknown_provider_in_json_is_named_without_the_position() {
        let json =
            br#"{"name":"a","command":"x","resources":{"cpu":1,"memory":"8Mi"},"placement":{"providers":["gcp"]}}"#;
        let error = AppSpec::from_json(json).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"placement.providers[0]: unknown provider "gcp" (expected aws, azure, openstack or baremetal)"#
        );
    }

    #[test]
    fn the_examples_commented_placement_is_valid_once_uncommented() {
        let example = include_str!("../../examples/hello/app.toml");
        assert!(AppSpec::from_toml(example).expect("the example as shipped").placement.is_anywhere());
        let (before, table) = example.split_once("# [placement]").expect("the example documents [placement]");
        let table: Vec<&str> = table.lines().map(|line| line.strip_prefix("# ").unwrap_or(line)).collect();
        let spec = AppSpec::from_toml(&format!("{before}[placement]{}", table.join("\n"))).expect("uncommented");
        assert_eq!(spec.placement.providers, vec![ProviderName::Aws, ProviderName::Azure]);
        assert_eq!(spec.placement.labels.get("residency").map(String::as_str), Some("eu"));
    }

    #[test]
    fn trailing_garbage_in_json_is_refused() {
        let spec = AppSpec::from_toml(HELLO).expect("valid spec");
        let mut json = serde_json::to_vec(&spec).expect("serialize");
        json.extend_from_slice(b" {}");
        assert!(AppSpec::from_json(&json).is_err());
    }

    #[test]
    fn update_settings_parse_validate_and_stay_out_of_the_json_when_default() {
        let spec = AppSpec::from_toml(HELLO).expect("hello");
        assert_eq!(spec.update, UpdateSpec::default());
        assert!(serde_json::to_value(&spec).expect("json").get("update").is_none());
        let text = format!("{HELLO}\n[update]\nmax_surge = 2\nhealth_deadline = \"30s\"\nauto_rollback = false\n");
        let spec = AppSpec::from_toml(&text).expect("update");
        assert_eq!(spec.update.max_surge, 2);
        assert_eq!(spec.update.max_unavailable, 0);
        assert_eq!(spec.update.health_deadline, Millis::from_secs(30));
        assert!(!spec.update.auto_rollback);
        let stuck = format!("{HELLO}\n[update]\nmax_surge = 0\n");
        assert_eq!(AppSpec::from_toml(&stuck).expect_err("stuck").field, "update.max_surge");
        let unknown = format!("{HELLO}\n[update]\nsurge = 1\n");
        assert_eq!(AppSpec::from_toml(&unknown).expect_err("unknown").field, "update.surge");
    }
    #[test]
    fn autoscale_parses_with_defaults_validates_and_stays_out_of_the_json_when_absent() {
        let spec = AppSpec::from_toml(HELLO).expect("hello");
        assert_eq!(spec.autoscale, None);
        assert!(serde_json::to_value(&spec).expect("json").get("autoscale").is_none());
        let text = format!("{HELLO}\n[autoscale]\nmin = 2\nmax = 5\ntarget_cpu = 60\n");
        let spec = AppSpec::from_toml(&text).expect("autoscale");
        let autoscale = spec.autoscale.expect("autoscale");
        assert_eq!(
            autoscale,
            AutoscaleSpec {
                min: 2,
                max: 5,
                target_cpu: 60,
                cooldown: Millis::from_secs(30),
                window: Millis::from_secs(10)
            }
        );
        assert_eq!((autoscale.clamp(0), autoscale.clamp(3), autoscale.clamp(9)), (2, 3, 5));
        let json = serde_json::to_vec(&spec).expect("json");
        assert_eq!(AppSpec::from_json(&json), Ok(spec));
        let text =
            format!("{HELLO}\n[autoscale]\nmin = 1\nmax = 1\ntarget_cpu = 100\ncooldown = \"0s\"\nwindow = \"2s\"\n");
        assert!(AppSpec::from_toml(&text).is_ok(), "the extremes are allowed");
    }

    #[test]
    fn autoscale_errors_name_the_field() {
        let cases = [
            ("min = 0\nmax = 3\ntarget_cpu = 50", "autoscale.min", "at least 1"),
            ("min = 3\nmax = 2\ntarget_cpu = 50", "autoscale.max", "at least autoscale.min (3)"),
            ("min = 1\nmax = 1001\ntarget_cpu = 50", "autoscale.max", "at most 1000"),
            ("min = 1\nmax = 3\ntarget_cpu = 0", "autoscale.target_cpu", "1 to 100"),
            ("min = 1\nmax = 3\ntarget_cpu = 150", "autoscale.target_cpu", "1 to 100"),
            ("min = 1\nmax = 3\ntarget_cpu = 50\ncooldown = \"2h\"", "autoscale.cooldown", "at most 3600s"),
            ("min = 1\nmax = 3\ntarget_cpu = 50\ncooldown = \"soon\"", "autoscale.cooldown", "duration"),
            ("min = 1\nmax = 3\ntarget_cpu = 50\nwindow = \"1s\"", "autoscale.window", "between 2s and"),
            ("min = 1\nmax = 3", "autoscale", "missing field `target_cpu`"),
            ("min = 1\nmax = 3\ntarget_cpu = 50\ntarget_memory = 50", "autoscale.target_memory", "unknown field"),
            ("min = -1\nmax = 3\ntarget_cpu = 50", "autoscale.min", "invalid value"),
        ];
        for (table, field, message) in cases {
            let error = AppSpec::from_toml(&format!("{HELLO}\n[autoscale]\n{table}\n")).expect_err(table);
            assert_eq!(error.field, field, "{table}: {error}");
            assert!(error.message.contains(message), "{table}: {error}");
        }
    }

    #[test]
    fn a_job_section_makes_a_batch_job_with_validated_settings() {
        let text = format!(
            "{HELLO}\n[job]\ncompletions = 3\nparallelism = 2\nretries = 1\ndeadline = \"5m\"\ndepends_on = [\"extract\"]\n"
        );
        let spec = AppSpec::from_toml(&text).expect("job");
        let job = spec.job.expect("a job");
        assert_eq!((job.completions, job.parallelism, job.retries), (3, 2, 1));
        assert_eq!(job.deadline, Some(Millis::from_secs(300)));
        assert_eq!(job.depends_on, vec!["extract".to_string()]);
        assert!(AppSpec::from_toml(HELLO).expect("hello").job.is_none());
        let cases = [
            ("completions = 0", "job.completions"),
            ("parallelism = 0", "job.parallelism"),
            ("deadline = \"0s\"", "job.deadline"),
            ("depends_on = [\"hello\"]", "job.depends_on[0]"),
            ("depends_on = [\"a\", \"a\"]", "job.depends_on[1]"),
            ("depends_on = [\"Not A Name\"]", "job.depends_on[0]"),
            ("every = 1", "job.every"),
        ];
        for (line, field) in cases {
            let text = format!("{HELLO}\n[job]\n{line}\n");
            assert_eq!(AppSpec::from_toml(&text).expect_err(line).field, field, "{line}");
        }
    }

    #[test]
    fn a_scheduled_job_has_a_valid_cron_expression_and_zone() {
        let text = format!(
            "{HELLO}\n[job]\nschedule = \"30 2 * * *\"\ntime_zone = \"Europe/Berlin\"\nconcurrency = \"replace\"\nmissed = \"skip\"\n"
        );
        let job = AppSpec::from_toml(&text).expect("scheduled").job.expect("job");
        assert_eq!(job.concurrency, Concurrency::Replace);
        assert_eq!(job.missed, Missed::Skip);
        assert!(job.cron().expect("scheduled").is_ok());
        let cases = [
            ("schedule = \"61 * * * *\"", "job.schedule"),
            ("schedule = \"* * *\"", "job.schedule"),
            ("schedule = \"@daily\"\ntime_zone = \"Mars/Olympus\"", "job.time_zone"),
            ("time_zone = \"UTC\"", "job.time_zone"),
            ("schedule = \"@daily\"\ndepends_on = [\"x\"]", "job.depends_on"),
            ("schedule = \"@daily\"\nconcurrency = \"sometimes\"", "job.concurrency"),
        ];
        for (lines, field) in cases {
            let text = format!("{HELLO}\n[job]\n{lines}\n");
            assert_eq!(AppSpec::from_toml(&text).expect_err(lines).field, field, "{lines}");
        }
    }

    #[test]
    fn priority_is_bounded_and_left_out_of_the_json_when_zero() {
        let spec = AppSpec::from_toml(HELLO).expect("hello");
        assert_eq!(spec.priority, 0);
        assert!(serde_json::to_value(&spec).expect("json").get("priority").is_none());
        let high = AppSpec::from_toml(&HELLO.replace("name = ", "priority = 10\nname = ")).expect("priority");
        assert_eq!(high.priority, 10);
        let error = AppSpec::from_toml(&HELLO.replace("name = ", "priority = 5000\nname = ")).expect_err("range");
        assert_eq!(error.field, "priority");
    }
}
