//! The autoscaler: Kubernetes' HorizontalPodAutoscaler on CPU, for apps with `[autoscale]`.
//!
//! Agents report each task's cumulative CPU time with every heartbeat. The autoscaler keeps the
//! reports of the last `window` in memory, per task; a task's utilization is the CPU time it
//! used between its first and last report in the window, per second, as a percentage of its
//! `resources.cpu`. The app's utilization is the average over its running tasks of the current
//! version that have been measured for at least half the window. The instance count it wants
//! is the HPA's: `ceil(current * utilization / target_cpu)`, unchanged while the ratio is within
//! 10% of 1, at most `max(2 * current, current + 4)` in one step, and within `min..=max`.
//!
//! Scale-ups happen as soon as they are wanted, but at most every `SCALE_UP_INTERVAL`.
//! Scale-downs wait until `cooldown` has passed since the last change, and then go only down
//! to the highest count wanted during the last `cooldown` (the HPA's stabilization window), so
//! a short lull does not remove instances. After every change the app's measurements start
//! afresh, so no decision rests on CPU use from before it.
//!
//! The memory is deliberately not stored: after a restart or a change of leader the
//! autoscaler measures again from scratch and waits a cooldown before scaling down, which is
//! the conservative direction. A change it did not make (a deploy, `canopy scale`) counts as a
//! change too.

use crate::store::autoscale::{AutoscaledApp, TaskCpu};
use crate::store::{Result, Store};
use canopy_core::spec::AutoscaleSpec;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Ratios of utilization to target within this distance of 1 change nothing (Kubernetes'
/// `--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;

/// The least time between a change and a following scale-up.
pub const SCALE_UP_INTERVAL: Duration = Duration::from_secs(3);

/// One report of a task's CPU counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When it was reported, in microseconds (any fixed origin).
    pub at_usec: i64,
    /// The task's cumulative CPU time, in microseconds.
    pub cpu_usec: u64,
}

/// A task's utilization in percent of its request (`milli_cpu`) between its first and last
/// sample, or `None` when they span less than `min_span_usec` or the counter went backwards.
pub fn task_utilization(samples: &[Sample], milli_cpu: u64, min_span_usec: i64) -> Option<f64> {
    let (first, last) = (samples.first()?, samples.last()?);
    let span = last.at_usec - first.at_usec;
    if span <= 0 || span < min_span_usec || last.cpu_usec < first.cpu_usec || milli_cpu == 0 {
        return None;
    }
    let cores = (last.cpu_usec - first.cpu_usec) as f64 / span as f64;
    Some(cores * 100_000.0 / milli_cpu as f64)
}

/// The instance count wanted for `utilization` (percent of the request, averaged over the
/// instances) with `current` instances: the HPA rule with its tolerance, a bounded step up,
/// and `min..=max`.
pub fn recommend(current: u32, utilization: f64, spec: &AutoscaleSpec) -> u32 {
    let ratio = utilization / f64::from(spec.target_cpu.max(1));
    if !ratio.is_finite() || (ratio - 1.0).abs() <= TOLERANCE {
        return spec.clamp(current);
    }
    let most = current.saturating_mul(2).max(current.saturating_add(4));
    let wanted = (f64::from(current) * ratio).ceil().clamp(0.0, f64::from(most)) as u32;
    spec.clamp(wanted)
}

/// What the autoscaler remembers of one app between steps.
#[derive(Clone, Debug)]
pub struct History {
    /// The last change of the instance count (or when the autoscaler first saw the app).
    pub last_change: Instant,
    /// Recommendations of the last `cooldown`, oldest first.
    pub recommendations: VecDeque<(Instant, u32)>,
}

impl History {
    pub fn new(now: Instant) -> History {
        History { last_change: now, recommendations: VecDeque::new() }
    }
}

/// Records `recommendation` and says what to scale to now, if anything (see the module
/// documentation for the rules).
pub fn decide(
    now: Instant,
    current: u32,
    recommendation: u32,
    history: &mut History,
    spec: &AutoscaleSpec,
) -> Option<u32> {
    let cooldown = spec.cooldown.as_std();
    history.recommendations.push_back((now, recommendation));
    while history.recommendations.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > cooldown) {
        history.recommendations.pop_front();
    }
    let since_change = now.saturating_duration_since(history.last_change);
    if recommendation > current {
        return (since_change >= SCALE_UP_INTERVAL).then_some(recommendation);
    }
    if recommendation < current && since_change >= cooldown {
        let stabilized = history.recommendations.iter().map(|(_, count)| *count).max().unwrap_or(recommendation);
        return (stabilized < current).then_some(stabilized);
    }
    None
}

/// A change the autoscaler wants to make.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub app: Uuid,
    pub name: String,
    pub from: u32,
    pub to: u32,
    /// The measured utilization, or `None` when the count only left `min..=max`.
    pub utilization: Option<f64>,
    pub target_cpu: u32,
    /// The tasks measured, whose samples are dropped once the change is made.
    tasks: Vec<Uuid>,
}

impl Decision {
    /// The `app.autoscaled` event's detail.
    pub fn detail(&self) -> serde_json::Value {
        serde_json::json!({
            "from": self.from,
            "to": self.to,
            "utilization": self.utilization.map(|u| (u * 10.0).round() / 10.0),
            "target_cpu": self.target_cpu,
            "reason": if self.utilization.is_some() { "cpu" } else { "bounds" },
        })
    }
}

#[derive(Default)]
struct AppMemory {
    instances: u32,
    history: Option<History>,
}

/// Samples per task and history per app, for the apps seen in the last step.
#[derive(Default)]
struct State {
    samples: HashMap<Uuid, Vec<Sample>>,
    apps: HashMap<Uuid, AppMemory>,
}

impl State {
    /// Takes in the latest reports and returns the changes wanted now.
    fn observe(&mut self, now: Instant, apps: &[AutoscaledApp]) -> Vec<Decision> {
        let mut decisions = Vec::new();
        let mut live_tasks = HashSet::new();
        for app in apps {
            let spec = &app.autoscale;
            let memory =
                self.apps.entry(app.id).or_insert_with(|| AppMemory { instances: app.instances, history: None });
            let history = memory.history.get_or_insert_with(|| History::new(now));
            if memory.instances != app.instances {
                // Someone else changed the count: it counts as a change, measured afresh.
                memory.instances = app.instances;
                *history = History::new(now);
                for task in &app.tasks {
                    self.samples.remove(&task.id);
                }
            }
            let window = i64::try_from(spec.window.0).unwrap_or(i64::MAX / 1000).saturating_mul(1000);
            for task in &app.tasks {
                live_tasks.insert(task.id);
                add_sample(self.samples.entry(task.id).or_default(), task, window);
            }
            let bounded = spec.clamp(app.instances);
            let tasks: Vec<Uuid> = app.tasks.iter().map(|t| t.id).collect();
            let decision = |to: u32, utilization: Option<f64>| Decision {
                app: app.id,
                name: app.name.clone(),
                from: app.instances,
                to,
                utilization,
                target_cpu: spec.target_cpu,
                tasks: tasks.clone(),
            };
            if bounded != app.instances {
                decisions.push(decision(bounded, None));
                continue;
            }
            let measured: Vec<f64> = app
                .tasks
                .iter()
                .filter_map(|t| task_utilization(self.samples.get(&t.id)?, app.milli_cpu, window / 2))
                .collect();
            if measured.is_empty() {
                continue;
            }
            let utilization = measured.iter().sum::<f64>() / measured.len() as f64;
            let recommendation = recommend(app.instances, utilization, spec);
            if let Some(to) = decide(now, app.instances, recommendation, history, spec) {
                decisions.push(decision(to, Some(utilization)));
            }
        }
        self.samples.retain(|task, _| live_tasks.contains(task));
        let live_apps: HashSet<Uuid> = apps.iter().map(|a| a.id).collect();
        self.apps.retain(|app, _| live_apps.contains(app));
        decisions
    }

    /// Remembers a change made: the cooldown starts now and measurements start afresh.
    fn changed(&mut self, now: Instant, decision: &Decision) {
        let memory = self.apps.entry(decision.app).or_default();
        memory.instances = decision.to;
        memory.history = Some(History::new(now));
        for task in &decision.tasks {
            self.samples.remove(task);
        }
    }
}

/// Appends the task's latest report unless it was seen already, restarting the series when the
/// counter went backwards (a new cgroup), and keeps only the last `window_usec`.
fn add_sample(samples: &mut Vec<Sample>, task: &TaskCpu, window_usec: i64) {
    let sample = Sample { at_usec: task.reported_at_usec, cpu_usec: task.cpu_usec };
    match samples.last() {
        Some(last) if last.at_usec == sample.at_usec => return,
        Some(last) if sample.at_usec < last.at_usec || sample.cpu_usec < last.cpu_usec => samples.clear(),
        _ => {}
    }
    samples.push(sample);
    let oldest = sample.at_usec.saturating_sub(window_usec);
    samples.retain(|s| s.at_usec >= oldest);
}

/// The autoscaling controller. Its memory lives as long as the control service.
#[derive(Default)]
pub struct Autoscaler {
    state: Mutex<State>,
}

impl Autoscaler {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One pass: reads the autoscaled apps, measures, and changes the counts that should
    /// change. Returns how many changed. A replica that does not lead forgets everything.
    #[tracing::instrument(skip_all)]
    pub async fn step(&self, store: &Store) -> Result<usize> {
        let Some(apps) = store.autoscaled_apps().await? else {
            *self.state() = State::default();
            return Ok(0);
        };
        let now = Instant::now();
        let decisions = self.state().observe(now, &apps);
        let mut changed = 0;
        for decision in decisions {
            if store.autoscale_app(decision.app, decision.from, decision.to, decision.detail()).await? {
                tracing::info!(
                    app = %decision.name,
                    from = decision.from,
                    to = decision.to,
                    utilization = decision.utilization,
                    "autoscaled"
                );
                self.state().changed(now, &decision);
                changed += 1;
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_core::quantity::Millis;

    fn spec(min: u32, max: u32, target_cpu: u32, cooldown_s: u64) -> AutoscaleSpec {
        AutoscaleSpec { min, max, target_cpu, cooldown: Millis::from_secs(cooldown_s), window: Millis::from_secs(10) }
    }

    fn close(value: Option<f64>, expected: f64) -> bool {
        value.is_some_and(|value| (value - expected).abs() < 1e-9)
    }

    fn samples(points: &[(i64, u64)]) -> Vec<Sample> {
        points.iter().map(|&(at_s, cpu_ms)| Sample { at_usec: at_s * 1_000_000, cpu_usec: cpu_ms * 1000 }).collect()
    }

    #[test]
    fn utilization_is_cpu_time_per_second_over_the_request() {
        // 200m request, 100 ms of CPU per second: half of it.
        let half = samples(&[(0, 0), (1, 100), (4, 400)]);
        assert!(close(task_utilization(&half, 200, 0), 50.0));
        // Capped at the request by the agent, a busy task shows 100%.
        assert!(close(task_utilization(&samples(&[(10, 5000), (15, 6000)]), 200, 0), 100.0));
        assert!(close(task_utilization(&samples(&[(0, 0), (2, 0)]), 200, 0), 0.0));
        assert!(close(task_utilization(&samples(&[(0, 0), (2, 500)]), 1000, 0), 25.0));
        // Not measured: too short, one sample, a counter that went back, no request.
        assert_eq!(task_utilization(&half, 200, 5_000_000), None);
        assert_eq!(task_utilization(&samples(&[(0, 0)]), 200, 0), None);
        assert_eq!(task_utilization(&samples(&[(0, 900), (3, 100)]), 200, 0), None);
        assert_eq!(task_utilization(&half, 0, 0), None);
    }

    #[test]
    fn recommendation_follows_the_hpa_rule_with_tolerance_step_limit_and_bounds() {
        let s = spec(1, 10, 50, 30);
        assert_eq!(recommend(2, 100.0, &s), 4, "twice the target: twice the instances");
        assert_eq!(recommend(3, 60.0, &s), 4, "ceil(3 * 1.2) = 4");
        assert_eq!(recommend(3, 54.0, &s), 3, "within 10% of the target");
        assert_eq!(recommend(3, 46.0, &s), 3, "within 10% of the target");
        assert_eq!(recommend(4, 25.0, &s), 2);
        assert_eq!(recommend(4, 0.0, &s), 1, "idle: down to min");
        assert_eq!(recommend(1, 100.0 * 50.0, &s), 5, "at most +4 (or double) in one step");
        assert_eq!(recommend(6, 100.0 * 50.0, &s), 10, "at most double, and at most max");
        assert_eq!(recommend(2, 100.0, &spec(1, 3, 10, 30)), 3, "clamped to max");
        assert_eq!(recommend(3, 0.0, &spec(2, 3, 50, 30)), 2, "clamped to min");
        assert_eq!(recommend(3, f64::NAN, &s), 3);
    }

    #[test]
    fn scale_ups_wait_a_little_and_scale_downs_wait_the_cooldown_and_the_highest_wish() {
        let s = spec(1, 10, 50, 30);
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut history = History::new(t0);
        assert_eq!(decide(at(1), 2, 4, &mut history, &s), None, "too soon after the last change");
        assert_eq!(decide(at(3), 2, 4, &mut history, &s), Some(4));
        let mut history = History::new(t0);
        assert_eq!(decide(at(5), 4, 4, &mut history, &s), None, "nothing to do");
        assert_eq!(decide(at(10), 4, 2, &mut history, &s), None, "within the cooldown");
        assert_eq!(decide(at(36), 4, 1, &mut history, &s), Some(2), "the highest wish of the last 30 s");
        assert_eq!(decide(at(45), 4, 1, &mut history, &s), Some(1), "the earlier wishes are older than 30 s");
        let mut history = History::new(t0);
        assert_eq!(decide(at(40), 4, 4, &mut history, &s), None);
        assert_eq!(decide(at(41), 4, 3, &mut history, &s), None, "a wish for 4 within the last 30 s");
    }

    fn app(id: Uuid, instances: u32, tasks: &[(Uuid, i64, u64)]) -> AutoscaledApp {
        AutoscaledApp {
            id,
            name: "burner".into(),
            instances,
            milli_cpu: 200,
            autoscale: AutoscaleSpec { window: Millis::from_secs(4), ..spec(1, 3, 50, 3) },
            tasks: tasks
                .iter()
                .map(|&(id, at_s, cpu_ms)| TaskCpu { id, cpu_usec: cpu_ms * 1000, reported_at_usec: at_s * 1_000_000 })
                .collect(),
        }
    }

    #[test]
    fn observing_a_busy_then_idle_app_scales_it_up_then_down_after_the_cooldown() {
        let mut state = State::default();
        let (id, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // One instance using all of its 200m: utilization 100% for a target of 50%.
        assert!(state.observe(at(0), &[app(id, 1, &[(a, 0, 0)])]).is_empty(), "one sample measures nothing");
        assert!(state.observe(at(2), &[app(id, 1, &[(a, 2, 400)])]).is_empty(), "too soon after first sight");
        let decisions = state.observe(at(3), &[app(id, 1, &[(a, 3, 600)])]);
        assert_eq!(decisions.len(), 1, "{decisions:?}");
        assert_eq!((decisions[0].from, decisions[0].to), (1, 2));
        assert!(close(decisions[0].utilization, 100.0), "{decisions:?}");
        assert_eq!(decisions[0].detail()["reason"], "cpu");
        state.changed(at(3), &decisions[0]);
        // Measurements start afresh after the change, then both instances are idle.
        assert!(state.observe(at(4), &[app(id, 2, &[(a, 4, 800), (b, 4, 0)])]).is_empty());
        assert!(state.observe(at(5), &[app(id, 2, &[(a, 5, 800), (b, 5, 0)])]).is_empty(), "half a window");
        // Idle for half a window, 3 s (the cooldown) after the change: down to 1.
        let decisions = state.observe(at(6), &[app(id, 2, &[(a, 6, 800), (b, 6, 0)])]);
        assert_eq!(decisions.iter().map(|d| (d.from, d.to)).collect::<Vec<_>>(), vec![(2, 1)]);
        // A deleted app and its tasks are forgotten.
        state.observe(at(8), &[]);
        assert!(state.apps.is_empty() && state.samples.is_empty());
    }

    #[test]
    fn a_count_outside_the_bounds_is_corrected_at_once_and_a_change_by_someone_else_restarts_the_cooldown() {
        let mut state = State::default();
        let (id, a) = (Uuid::new_v4(), Uuid::new_v4());
        let t0 = Instant::now();
        let decisions = state.observe(t0, &[app(id, 7, &[(a, 0, 0)])]);
        assert_eq!(decisions.iter().map(|d| (d.from, d.to)).collect::<Vec<_>>(), vec![(7, 3)]);
        assert_eq!(decisions[0].detail()["reason"], "bounds");
        state.changed(t0, &decisions[0]);
        // Someone scales to 2 by hand at 10 s; idle since, it goes back to 1 only 3 s later.
        let idle = |secs: u64| app(id, 2, &[(a, secs as i64, 0)]);
        assert!(state.observe(t0 + Duration::from_secs(10), &[idle(10)]).is_empty());
        assert!(state.observe(t0 + Duration::from_secs(12), &[idle(12)]).is_empty());
        let decisions = state.observe(t0 + Duration::from_secs(13), &[idle(13)]);
        assert_eq!(decisions.iter().map(|d| (d.from, d.to)).collect::<Vec<_>>(), vec![(2, 1)]);
    }

    #[test]
    fn repeated_or_backward_reports_do_not_make_up_cpu_time() {
        let mut series = Vec::new();
        let task = |at_s: i64, cpu_ms: u64| TaskCpu {
            id: Uuid::nil(),
            cpu_usec: cpu_ms * 1000,
            reported_at_usec: at_s * 1_000_000,
        };
        add_sample(&mut series, &task(0, 0), 10_000_000);
        add_sample(&mut series, &task(0, 0), 10_000_000);
        add_sample(&mut series, &task(1, 100), 10_000_000);
        assert_eq!(series.len(), 2, "the same report seen twice counts once");
        add_sample(&mut series, &task(2, 50), 10_000_000);
        assert_eq!(series, samples(&[(2, 50)]), "a counter that went back starts a new series");
        for second in 3..20 {
            add_sample(&mut series, &task(second, 50), 10_000_000);
        }
        assert_eq!(series.first().map(|s| s.at_usec), Some(9_000_000), "only the window is kept");
    }
}
