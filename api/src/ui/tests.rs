//! Every page template rendered with fixture data: what each must show, that values are
//! escaped, and that forms appear only for roles that may use them.

use super::finance;
use super::pages::{self, LogView};
use super::session::Session;
use super::view::tests::machine;
use super::{TEMPLATES, UiError, render};
use crate::auth::{Caller, Role};
use crate::store::budgets::BudgetRow;
use crate::store::reports::{CostRow, Group, Savings, SavingsRow, UtilizationRow};
use crate::store::{AppDetail, AppSummary, EventRow, TaskRow};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use canopy_core::spec::AppSpec;
use std::collections::BTreeSet;
use uuid::Uuid;

fn session(role: Role) -> Session {
    let team = (role != Role::Admin).then(|| Uuid::from_u128(7));
    Session {
        caller: Caller { token_id: Uuid::from_u128(1), name: "ann".into(), role, team_id: team, machine_id: None },
        team: team.map(|_| "alpha".to_string()),
        csrf: "csrf_fixture".into(),
    }
}

fn summary(name: &str, job_state: &str) -> AppSummary {
    AppSummary {
        id: Uuid::new_v4(),
        team: "alpha".into(),
        name: name.into(),
        version: 3,
        instances: 2,
        running: 2,
        healthy: 1,
        stable_version: Some(2),
        rollout: "progressing".into(),
        job_state: job_state.into(),
        job_message: String::new(),
        portability: String::new(),
        updated_at: chrono::DateTime::UNIX_EPOCH,
    }
}

fn event(kind: &str, subject: &str) -> EventRow {
    EventRow {
        id: 1,
        at: chrono::DateTime::UNIX_EPOCH,
        actor: "developer:ann".into(),
        kind: kind.into(),
        subject: subject.into(),
        detail: serde_json::json!({"from": 1, "to": 2}),
    }
}

fn detail() -> AppDetail {
    let spec = AppSpec::from_toml(
        "name = \"web\"\ncommand = \"python3\"\nargs = [\"-u\", \"web.py\"]\ninstances = 2\nports = [\"http\"]\n\
         [resources]\ncpu = 250\nmemory = \"64Mi\"\n",
    )
    .expect("spec");
    let task = TaskRow {
        id: Uuid::new_v4(),
        version: 3,
        instance: 0,
        state: "running".into(),
        desired: "run".into(),
        machine: Some("m1".into()),
        address: Some("127.2.0.5".into()),
        pid: Some(42),
        ports: serde_json::json!({"http": 31000}),
        healthy: Some(true),
        restarts: 1,
        exit_code: None,
        exit_signal: None,
        oom_killed: false,
        message: String::new(),
        cpu_usec: 1_500_000,
        memory_bytes: 10 << 20,
        memory_peak: 12 << 20,
        created_at: chrono::DateTime::UNIX_EPOCH,
        started_at: Some(chrono::DateTime::UNIX_EPOCH),
        finished_at: None,
    };
    AppDetail { summary: summary("web", ""), spec, tasks: vec![task] }
}

/// Renders `name` and remembers that it was.
fn page(rendered: &mut BTreeSet<&'static str>, name: &'static str, context: &tera::Context) -> String {
    rendered.insert(name);
    render(name, context).unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

#[tokio::test]
async fn every_template_renders_with_fixture_data() {
    let mut rendered = BTreeSet::new();
    let developer = session(Role::Developer);

    let machines = vec![machine("m1", "aws", "us-east-1", "ready"), machine("m2", "azure", "westeurope", "booting")];
    let events = vec![event("app.scaled", "web")];
    let apps = vec![summary("web", ""), summary("nightly", "succeeded")];
    let html = page(&mut rendered, "dashboard.html", &pages::dashboard_page(&developer, &machines, &events, &apps));
    for text in [
        "<td>aws</td><td>us-east-1</td>",
        "$0.0752",
        "app.scaled",
        "from=1 to=2",
        "ann (developer, team alpha)",
        "aws us-east-1: $0.0376",
        "$1.80 per day",
    ] {
        assert!(html.contains(text), "dashboard lacks {text}: {html}");
    }
    assert!(html.contains(r#"name="csrf" value="csrf_fixture""#), "sign-out carries the csrf token");

    let html = page(&mut rendered, "apps.html", &pages::list_page(&developer, &apps, false));
    assert!(html.contains(r#"<a href="/ui/apps/alpha/web">web</a>"#) && !html.contains("nightly"), "{html}");
    let html = page(&mut rendered, "apps.html", &pages::list_page(&developer, &apps, true));
    assert!(html.contains("nightly") && html.contains("succeeded") && !html.contains(">web<"), "{html}");

    let logs = LogView { instance: 0, stream: "stdout".into(), text: "hello <world>\n".into(), error: String::new() };
    let html = page(&mut rendered, "app.html", &pages::app_page(&developer, &detail(), &events, Some(&logs)));
    for text in [
        "python3 -u web.py",
        "0.25 cpu, 64 MiB memory",
        "127.2.0.5:31000 (http)",
        "healthy",
        "1.5 s",
        "hello &lt;world&gt;",
        r#"action="/ui/apps/alpha/web/scale""#,
        r#"action="/ui/apps/alpha/web/promote""#,
        "<th scope=\"row\">Portable</th><td>yes</td>",
    ] {
        assert!(html.contains(text), "app page lacks {text}: {html}");
    }
    let mut unportable = detail();
    unportable.summary.portability = "policy two-clouds (portability): 1 provider".into();
    let html = page(&mut rendered, "app.html", &pages::app_page(&developer, &unportable, &events, None));
    assert!(html.contains("<td>no: policy two-clouds (portability): 1 provider</td>"), "{html}");

    let html = page(&mut rendered, "machines.html", &pages::machines_page(&developer, &machines, &[]));
    assert!(html.contains("t3a.medium") && html.contains("$0.0376") && html.contains("25%"), "{html}");

    let html = page(&mut rendered, "costs.html", &costs_fixture(&developer));
    for text in [
        r#"id="total-cost">$15.00<"#,
        r#"id="idle-cost">$3.00<"#,
        "20% of the total",
        "Cost by team, 2026-10 (idle: no team)",
        "alpha: $12.00 (aws $10.00, azure $2.00); (idle): $3.00 (aws $3.00)",
        "alpha/web: $10.00 (aws $10.00)",
        "2026-09: $7.00 (aws $7.00); 2026-10: $15.00 (aws $13.00, azure $2.00)",
        "<td>alpha</td><td class=\"num\">4.0</td><td class=\"num\">1.0</td><td class=\"num\">25%</td><td class=\"num\">-</td>",
        "<td>aws</td><td class=\"num\">4.0</td><td class=\"num\">1.0</td><td class=\"num\">25%</td><td class=\"num\">25%</td>",
        "/ui/reports/utilization?by=provider&amp;month=2026-10",
        "/ui/reports/cost?by=team,provider&amp;month=2026-10&amp;team=alpha&amp;format=csv",
        r#"id="savings">$8.00<"#,
        "alpha: $12.00, all on azure $20.00",
        "alpha: $25.00 (spent $12.00, forecast for the rest of the month $13.00), budget $20.00",
        "<strong class=\"error\">over budget</strong>",
        "$0.0500",
    ] {
        assert!(html.contains(text), "costs page lacks {text}: {html}");
    }

    let response = super::session::sign_in_page().await.expect("sign-in page");
    rendered.insert("sign_in.html");
    let html = body(response).await;
    assert!(html.contains(r#"<form method="post" action="/ui/sign-in">"#) && !html.contains("Sign out"), "{html}");

    let response =
        UiError::new(StatusCode::UNPROCESSABLE_ENTITY, "instances: <b> is not a whole number").into_response();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    rendered.insert("error.html");
    let html = body(response).await;
    assert!(html.contains("422 Unprocessable Entity") && html.contains("instances: &lt;b&gt;"), "{html}");

    // base.html is rendered by every page above; every other template must have been too.
    rendered.insert("base.html");
    let all: BTreeSet<&str> = TEMPLATES.iter().map(|(name, _)| *name).collect();
    assert_eq!(rendered, all, "a template without a rendering test");
}

#[test]
fn finance_sees_no_forms_that_change_state() {
    let finance = session(Role::Finance);
    let html = render("app.html", &pages::app_page(&finance, &detail(), &[], None)).expect("render");
    for action in ["/scale", "/promote", "/rollback"] {
        assert!(!html.contains(action), "finance sees {action}: {html}");
    }
    let html = render("dashboard.html", &pages::dashboard_page(&finance, &[], &[], &[])).expect("render");
    assert!(!html.contains(r#"href="/ui/apps""#), "finance navigation has no apps page: {html}");
    assert!(html.contains("No machines in the pool."));
}

fn cost_row(
    team: Option<&str>,
    app: Option<&str>,
    provider: &str,
    month: Option<&str>,
    allocated: i64,
    idle: i64,
) -> CostRow {
    CostRow {
        group: Group {
            team: team.map(String::from),
            app: app.map(String::from),
            provider: Some(provider.into()),
            month: month.map(String::from),
            ..Default::default()
        },
        allocated_micros: allocated,
        idle_micros: idle,
        total_micros: allocated + idle,
    }
}

/// October 2026: alpha spent $10 on aws and $2 on azure, $3 of aws sat idle; September $7.
fn costs_fixture(session: &Session) -> tera::Context {
    let dollars = |d: i64| d * 1_000_000;
    let filters: finance::Filters =
        serde_json::from_value(serde_json::json!({"month": "2026-10", "team": "alpha"})).expect("filters");
    let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 22).expect("day");
    let selection = finance::Selection::parse(filters, today).expect("selection");
    let reports = finance::Reports {
        by_team: vec![
            cost_row(Some("alpha"), None, "aws", None, dollars(10), 0),
            cost_row(Some("alpha"), None, "azure", None, dollars(2), 0),
            cost_row(None, None, "aws", None, 0, dollars(3)),
        ],
        by_app: vec![
            cost_row(Some("alpha"), Some("web"), "aws", None, dollars(10), 0),
            cost_row(Some("alpha"), Some("etl"), "azure", None, dollars(2), 0),
            cost_row(None, None, "aws", None, 0, dollars(3)),
        ],
        by_month: vec![
            cost_row(None, None, "aws", Some("2026-09"), dollars(5), dollars(2)),
            cost_row(None, None, "aws", Some("2026-10"), dollars(10), dollars(3)),
            cost_row(None, None, "azure", Some("2026-10"), dollars(2), 0),
        ],
        utilization: vec![UtilizationRow {
            group: Group { team: Some("alpha".into()), ..Default::default() },
            cpu_requested_core_hours: 4.0,
            cpu_used_core_hours: 1.0,
            cpu_capacity_core_hours: 0.0,
            memory_requested_gib_hours: 8.0,
            memory_used_gib_hours: 2.0,
            memory_capacity_gib_hours: 0.0,
        }],
        utilization_by_provider: vec![UtilizationRow {
            group: Group { provider: Some("aws".into()), ..Default::default() },
            cpu_requested_core_hours: 4.0,
            cpu_used_core_hours: 1.0,
            cpu_capacity_core_hours: 16.0,
            memory_requested_gib_hours: 8.0,
            memory_used_gib_hours: 2.0,
            memory_capacity_gib_hours: 64.0,
        }],
        savings: Savings {
            baseline_provider: Some("azure".into()),
            rows: vec![SavingsRow {
                group: Group { team: Some("alpha".into()), ..Default::default() },
                actual_micros: dollars(12),
                baseline_micros: dollars(20),
                savings_micros: dollars(8),
            }],
        },
        budgets: vec![BudgetRow {
            team: "alpha".into(),
            budget_micros: 20_000_000,
            spent_micros: 12_000_000,
            hourly_run_rate_micros: 50_000,
            forecast_micros: 25_000_000,
            over_budget: true,
        }],
    };
    finance::costs_page(session, &selection, &["alpha".to_string()], &reports)
}

async fn body(response: axum::response::Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}
