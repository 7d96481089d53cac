//! The pool and workload pages (dashboard, apps, jobs, one app, machines) and the forms that
//! act on an app (scale, promote, roll back).

use super::chart::{Chart, Series};
use super::session::Session;
use super::{UiError, render, view};
use crate::auth::{Role, Scope};
use crate::http::AppState;
use crate::store::{AppDetail, AppSummary, EventRow, MachineRow, MachineUsage, TaskRow};
use axum::Form;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};

/// Bytes of an instance's log the app page shows.
const LOG_TAIL_BYTES: u64 = 16 * 1024;
/// Events the dashboard and the app page list.
const RECENT_EVENTS: i64 = 25;

pub async fn dashboard(State(state): State<AppState>, session: Session) -> Result<Html<String>, UiError> {
    let machines = state.store.machines().await?;
    let events = state.store.events(session.caller.scope().team_filter(), RECENT_EVENTS).await?;
    let apps = state.store.apps(session.caller.scope()).await?;
    Ok(Html(render("dashboard.html", &dashboard_page(&session, &machines, &events, &apps))?))
}

pub fn dashboard_page(
    session: &Session,
    machines: &[MachineRow],
    events: &[EventRow],
    apps: &[AppSummary],
) -> tera::Context {
    let (pool, total) = view::pool(machines);
    let chart = Chart {
        id: "pool-cost".into(),
        title: "Cost per hour by provider and region".into(),
        categories: pool.iter().map(|row| format!("{} {}", row.provider, row.region)).collect(),
        series: vec![Series {
            name: "cost per hour".into(),
            values: pool.iter().map(|row| row.hourly_micros).collect(),
        }],
        limit: None,
    };
    let mut context = session.context("/ui/");
    context.insert("chart", &chart.to_svg(view::price));
    context.insert("pool", &pool);
    context.insert("total", &total);
    context.insert("events", &view::events(events));
    context.insert("services", &apps.iter().filter(|a| a.job_state.is_empty()).count());
    context.insert("jobs", &apps.iter().filter(|a| !a.job_state.is_empty()).count());
    context
}

/// One app or job in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppRow {
    pub href: String,
    pub team: String,
    pub name: String,
    pub version: i32,
    pub instances: i32,
    pub running: i64,
    pub healthy: i64,
    pub status: String,
    pub updated_at: String,
}

pub fn app_rows<'a>(apps: impl IntoIterator<Item = &'a AppSummary>) -> Vec<AppRow> {
    apps.into_iter()
        .map(|a| AppRow {
            href: app_href(&a.team, &a.name),
            team: a.team.clone(),
            name: a.name.clone(),
            version: a.version,
            instances: a.instances,
            running: a.running,
            healthy: a.healthy,
            status: status(a),
            updated_at: view::timestamp(&a.updated_at),
        })
        .collect()
}

/// A job's state and why, or a service's rollout.
fn status(app: &AppSummary) -> String {
    match (app.job_state.as_str(), app.job_message.as_str()) {
        ("", _) => app.rollout.clone(),
        (state, "") => state.to_string(),
        (state, message) => format!("{state}: {message}"),
    }
}

fn app_href(team: &str, name: &str) -> String {
    format!("/ui/apps/{team}/{name}")
}

pub async fn apps(State(state): State<AppState>, session: Session) -> Result<Html<String>, UiError> {
    list(&state, &session, false).await
}

pub async fn jobs(State(state): State<AppState>, session: Session) -> Result<Html<String>, UiError> {
    list(&state, &session, true).await
}

async fn list(state: &AppState, session: &Session, jobs: bool) -> Result<Html<String>, UiError> {
    let apps = state.store.apps(session.caller.scope()).await?;
    Ok(Html(render("apps.html", &list_page(session, &apps, jobs))?))
}

/// The apps page (`jobs` false) or the jobs page.
pub fn list_page(session: &Session, apps: &[AppSummary], jobs: bool) -> tera::Context {
    let (current, title) = if jobs { ("/ui/jobs", "Jobs") } else { ("/ui/apps", "Apps") };
    let mut context = session.context(current);
    context.insert("title", title);
    context.insert("jobs", &jobs);
    context.insert("apps", &app_rows(apps.iter().filter(|a| a.job_state.is_empty() != jobs)));
    context
}

/// The scope an app page acts in: the team in its path, which for a team's own token must be
/// its team (another team's app is "not found", as in the API).
async fn team_scope(state: &AppState, session: &Session, team: &str, name: &str) -> Result<Scope, UiError> {
    match session.caller.role {
        Role::Admin => Ok(Scope::Team(state.store.team_by_name(team).await?.id)),
        _ if session.team.as_deref() == Some(team) => Ok(session.caller.scope()),
        _ => Err(UiError::new(StatusCode::NOT_FOUND, format!("app {name:?} does not exist"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    instance: Option<u32>,
    stream: Option<String>,
}

/// One task as the app page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskView {
    pub instance: i32,
    pub version: i32,
    pub state: String,
    pub health: String,
    pub machine: String,
    pub endpoint: String,
    pub restarts: i32,
    pub started_at: String,
    pub cpu_seconds: String,
    pub memory: String,
    pub message: String,
}

pub fn task_views(tasks: &[TaskRow]) -> Vec<TaskView> {
    tasks
        .iter()
        .map(|t| {
            let ports: Vec<String> = t
                .ports
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, port)| format!("{}:{port} ({name})", t.address.as_deref().unwrap_or("")))
                .collect();
            let exit = match (t.exit_code, t.exit_signal, t.oom_killed) {
                (_, _, true) => "killed: out of memory".to_string(),
                (_, Some(signal), _) => format!("killed by signal {signal}"),
                (Some(code), _, _) => format!("exit code {code}"),
                _ => String::new(),
            };
            TaskView {
                instance: t.instance,
                version: t.version,
                state: if t.desired == "stop" && t.state == "running" { "stopping".into() } else { t.state.clone() },
                health: match t.healthy {
                    Some(true) => "healthy".into(),
                    Some(false) => "unhealthy".into(),
                    None => "-".into(),
                },
                machine: t.machine.clone().unwrap_or_default(),
                endpoint: ports.join(", "),
                restarts: t.restarts,
                started_at: t.started_at.as_ref().map(view::timestamp).unwrap_or_default(),
                cpu_seconds: format!("{:.1} s", t.cpu_usec as f64 / 1e6),
                memory: format!("{} (peak {})", view::bytes(t.memory_bytes), view::bytes(t.memory_peak)),
                message: [t.message.as_str(), exit.as_str()]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        })
        .collect()
}

/// What the app page says about the app itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppView {
    pub row: AppRow,
    pub is_job: bool,
    pub stable_version: String,
    pub rollout: String,
    /// Why it lost its portability, '' while it has it.
    pub portability: String,
    pub can_promote: bool,
    pub command: String,
    pub resources: String,
    pub spec: String,
}

pub fn app_view(detail: &AppDetail) -> AppView {
    let s = &detail.summary;
    let spec = &detail.spec;
    let command =
        std::iter::once(spec.command.as_str()).chain(spec.args.iter().map(String::as_str)).collect::<Vec<_>>();
    AppView {
        row: app_rows([s]).remove(0),
        is_job: spec.job.is_some(),
        stable_version: s.stable_version.map_or_else(|| "none yet".into(), |v| format!("v{v}")),
        rollout: status(s),
        portability: s.portability.clone(),
        can_promote: spec.job.is_none() && s.stable_version != Some(s.version),
        command: command.join(" "),
        resources: format!(
            "{} cpu, {} memory, {} pids per instance",
            view::cpus(spec.resources.cpu as i64),
            view::bytes(spec.resources.memory.0 as i64),
            spec.resources.pids
        ),
        spec: serde_json::to_string_pretty(spec).unwrap_or_default(),
    }
}

/// The log panel: which instance and stream, and the text or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogView {
    pub instance: u32,
    pub stream: String,
    pub text: String,
    pub error: String,
}

pub async fn app(
    State(state): State<AppState>,
    session: Session,
    Path((team, name)): Path<(String, String)>,
    params: Result<Query<LogParams>, QueryRejection>,
) -> Result<Html<String>, UiError> {
    let Query(params) = params.map_err(|e| UiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let stream = params.stream.unwrap_or_else(|| "stdout".into());
    if stream != "stdout" && stream != "stderr" {
        return Err(UiError::new(StatusCode::BAD_REQUEST, "stream: must be stdout or stderr"));
    }
    let scope = team_scope(&state, &session, &team, &name).await?;
    let detail = state.store.app(scope, &name).await?;
    let events = state.store.events_about(scope.team_filter(), &name, RECENT_EVENTS).await?;
    // The log of the instance asked for, or of the first one that has started.
    let instance = params
        .instance
        .or_else(|| detail.tasks.iter().find(|t| t.machine.is_some()).map(|t| u32::try_from(t.instance).unwrap_or(0)));
    let logs = match instance {
        Some(instance) => Some(log_view(&state, scope, &name, instance, &stream).await),
        None => None,
    };
    Ok(Html(render("app.html", &app_page(&session, &detail, &events, logs.as_ref()))?))
}

pub fn app_page(session: &Session, detail: &AppDetail, events: &[EventRow], logs: Option<&LogView>) -> tera::Context {
    let mut context = session.context(if detail.spec.job.is_some() { "/ui/jobs" } else { "/ui/apps" });
    context.insert("app", &app_view(detail));
    context.insert("tasks", &task_views(&detail.tasks));
    context.insert("events", &view::events(events));
    context.insert("logs", &logs);
    context
}

/// An instance's log tail; an agent that cannot be reached is said on the page, not an error.
async fn log_view(state: &AppState, scope: Scope, name: &str, instance: u32, stream: &str) -> LogView {
    let text = match state.store.log_target(scope, name, instance).await {
        Ok(target) => crate::http::log_tail(state, &target, stream, LOG_TAIL_BYTES).await.map_err(|e| e.message),
        Err(error) => Err(UiError::from(error).message),
    };
    let (text, error) = match text {
        Ok(text) => (text, String::new()),
        Err(error) => (String::new(), error),
    };
    LogView { instance, stream: stream.into(), text, error }
}

#[derive(Deserialize)]
pub struct ScaleForm {
    csrf: String,
    instances: String,
}

pub async fn scale(
    State(state): State<AppState>,
    session: Session,
    Path((team, name)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<ScaleForm>, FormRejection>,
) -> Result<Response, UiError> {
    let Form(form) = form.map_err(form_error)?;
    session.check_form(&headers, &form.csrf, "scale apps")?;
    let instances: u32 = form.instances.trim().parse().map_err(|_| {
        UiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("instances: {:?} is not a whole number", form.instances))
    })?;
    let scope = team_scope(&state, &session, &team, &name).await?;
    let buyable = state.buyable.borrow().clone();
    crate::policy::admit_scale(&state.store, &buyable, scope, &name, instances).await?;
    state.store.scale_app(&session.caller.actor(), scope, &name, instances).await?;
    tracing::info!(app = %name, instances, actor = %session.caller.actor(), "scaled from the ui");
    Ok(Redirect::to(&app_href(&team, &name)).into_response())
}

#[derive(Deserialize)]
pub struct PromoteForm {
    csrf: String,
}

pub async fn promote(
    State(state): State<AppState>,
    session: Session,
    Path((team, name)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<PromoteForm>, FormRejection>,
) -> Result<Response, UiError> {
    let Form(form) = form.map_err(form_error)?;
    session.check_form(&headers, &form.csrf, "promote rollouts")?;
    let scope = team_scope(&state, &session, &team, &name).await?;
    state.store.promote_app(&session.caller.actor(), scope, &name).await?;
    Ok(Redirect::to(&app_href(&team, &name)).into_response())
}

#[derive(Deserialize)]
pub struct RollbackForm {
    csrf: String,
    /// A version number, or empty for the last one fully rolled out.
    #[serde(default)]
    to: String,
}

pub async fn rollback(
    State(state): State<AppState>,
    session: Session,
    Path((team, name)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<RollbackForm>, FormRejection>,
) -> Result<Response, UiError> {
    let Form(form) = form.map_err(form_error)?;
    session.check_form(&headers, &form.csrf, "roll back apps")?;
    let to = match form.to.trim() {
        "" => None,
        text => Some(text.trim_start_matches('v').parse::<i32>().map_err(|_| {
            UiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("to: {text:?} is not a version number"))
        })?),
    };
    let scope = team_scope(&state, &session, &team, &name).await?;
    state.store.rollback_app(&session.caller.actor(), scope, &name, to).await?;
    Ok(Redirect::to(&app_href(&team, &name)).into_response())
}

fn form_error(rejection: FormRejection) -> UiError {
    UiError::new(StatusCode::UNPROCESSABLE_ENTITY, rejection.body_text())
}

pub async fn machines(State(state): State<AppState>, session: Session) -> Result<Html<String>, UiError> {
    let rows = state.store.machines().await?;
    let usage = state.store.machines_usage().await?;
    Ok(Html(render("machines.html", &machines_page(&session, &rows, &usage))?))
}

pub fn machines_page(session: &Session, rows: &[MachineRow], usage: &[MachineUsage]) -> tera::Context {
    let mut context = session.context("/ui/machines");
    context.insert("machines", &view::machines(rows, usage));
    context
}
