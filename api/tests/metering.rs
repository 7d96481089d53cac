//! Metering against a real Postgres: a hand-computed ledger fixture (machines and tasks with
//! chosen times and prices), checked through the store's spend and report functions.

#[allow(dead_code)] // Not every test file uses every helper.
mod common;

use canopy_api::store::{Author, ProviderSpend, Store};
use canopy_core::policy::{Money, PolicyDocument};
use chrono::{DateTime, Utc};
use common::TestDb;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

const GIB: i64 = 1 << 30;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).expect("instant").with_timezone(&Utc)
}

/// Writes the fixture's rows directly: the store API stamps everything with `now()`.
struct Fixture {
    db: PgConnection,
}

struct MachineSpec<'a> {
    provider: &'a str,
    price_micros: i64,
    milli_cpu: i64,
    memory: i64,
    created: &'a str,
    terminated: Option<&'a str>,
    spot: bool,
    sunk: bool,
}

impl Fixture {
    async fn new(db: &TestDb) -> Fixture {
        Fixture { db: PgConnection::connect(&db.url()).await.expect("connect") }
    }

    async fn machine(&mut self, name: &str, m: MachineSpec<'_>) -> Uuid {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO machines (id, name, provider, address, agent_endpoint, control_key, capacity_milli_cpu,
                    capacity_memory, cgroup_version, state, region, offering, spot, sunk, price_micros, provisioned,
                    created_at, terminated_at)
             VALUES ($1, $2, $3, '127.0.0.1', '127.0.0.1:1', 'k', $4, $5, 1,
                     CASE WHEN $8::timestamptz IS NULL THEN 'ready' ELSE 'terminated' END,
                     $3 || '-region', $3 || '-offering', $9, $10, $6, true, $7, $8)",
        )
        .bind(id)
        .bind(name)
        .bind(m.provider)
        .bind(m.milli_cpu)
        .bind(m.memory)
        .bind(m.price_micros)
        .bind(at(m.created))
        .bind(m.terminated.map(at))
        .bind(m.spot)
        .bind(m.sunk)
        .execute(&mut self.db)
        .await
        .expect("machine");
        id
    }

    async fn app(&mut self, team: Uuid, name: &str) -> Uuid {
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO apps (id, team_id, name, version, instances) VALUES ($1, $2, $3, 1, 1)")
            .bind(id)
            .bind(team)
            .bind(name)
            .execute(&mut self.db)
            .await
            .expect("app");
        id
    }

    async fn task(
        &mut self,
        app: Uuid,
        machine: Uuid,
        milli_cpu: i64,
        memory: i64,
        from: &str,
        to: Option<&str>,
    ) -> Uuid {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO tasks (id, app_id, version, instance, state, machine_id, milli_cpu, memory, started_at,
                    finished_at)
             VALUES ($1, $2, 1, 0, CASE WHEN $7::timestamptz IS NULL THEN 'running' ELSE 'exited' END, $3, $4, $5,
                     $6, $7)",
        )
        .bind(id)
        .bind(app)
        .bind(machine)
        .bind(milli_cpu)
        .bind(memory)
        .bind(at(from))
        .bind(to.map(at))
        .execute(&mut self.db)
        .await
        .expect("task");
        id
    }
}

/// The fixture, with every figure computed by hand below.
///
/// * `aws-a`: 4 cpu / 16 GiB at $0.10/h (100,000 micros), since 2026-10-31 23:00, still up.
///   red/web holds half of it (2 cpu, 8 GiB) from 2026-11-10 00:00 on; red/batch held half of
///   it from Oct 31 23:00 to Nov 1 01:00 (one hour of it in November); blue/api a quarter on
///   Nov 14 00:00-12:00.
/// * `aws-d`: spot, 2 cpu / 4 GiB at 360,000/h on Nov 2 00:00-06:00, all of it red/batch's.
/// * `azure-b`: 2 cpu / 8 GiB at 200,000/h since Nov 15 10:00; red/web holds half from 11:00.
/// * `owned-c`: owned, 8 cpu / 32 GiB at 50,000/h, blue only.
///
/// At `now` = 2026-11-15 12:00, red's month to date:
/// * aws: Nov 1 00:00-01:00 half of 100,000 = 50,000; Nov 2 6 h x 360,000 = 2,160,000;
///   Nov 10 00:00 - Nov 15 12:00 (132 h) half of 100,000/h = 6,600,000. Total 8,810,000.
/// * azure: Nov 15 11:00-12:00, half of 200,000 = 100,000.
///
/// Run rate at `now`: aws half of 100,000 = 50,000/h; azure 100,000/h.
async fn fixture(db: &TestDb, store: &Store) -> (Uuid, Uuid) {
    let red = store.create_team("test", "red").await.expect("team").id;
    let blue = store.create_team("test", "blue").await.expect("team").id;
    let mut f = Fixture::new(db).await;
    let on_demand = |provider, price_micros, milli_cpu, memory, created, terminated| MachineSpec {
        provider,
        price_micros,
        milli_cpu,
        memory,
        created,
        terminated,
        spot: false,
        sunk: false,
    };
    let a = f.machine("aws-a", on_demand("aws", 100_000, 4000, 16 * GIB, "2026-10-31T23:00:00Z", None)).await;
    let d = f
        .machine(
            "aws-d",
            MachineSpec {
                spot: true,
                ..on_demand("aws", 360_000, 2000, 4 * GIB, "2026-11-02T00:00:00Z", Some("2026-11-02T06:00:00Z"))
            },
        )
        .await;
    let b = f.machine("azure-b", on_demand("azure", 200_000, 2000, 8 * GIB, "2026-11-15T10:00:00Z", None)).await;
    let c = f
        .machine(
            "owned-c",
            MachineSpec { sunk: true, ..on_demand("openstack", 50_000, 8000, 32 * GIB, "2026-11-01T00:00:00Z", None) },
        )
        .await;
    let web = f.app(red, "web").await;
    let batch = f.app(red, "batch").await;
    let api = f.app(blue, "api").await;
    f.task(web, a, 2000, 8 * GIB, "2026-11-10T00:00:00Z", None).await;
    f.task(batch, a, 2000, 8 * GIB, "2026-10-31T23:00:00Z", Some("2026-11-01T01:00:00Z")).await;
    f.task(api, a, 1000, 4 * GIB, "2026-11-14T00:00:00Z", Some("2026-11-14T12:00:00Z")).await;
    f.task(batch, d, 2000, 4 * GIB, "2026-11-02T00:00:00Z", Some("2026-11-02T06:00:00Z")).await;
    f.task(web, b, 1000, 4 * GIB, "2026-11-15T11:00:00Z", None).await;
    f.task(api, c, 4000, 16 * GIB, "2026-11-01T00:00:00Z", None).await;
    (red, blue)
}

fn spend(provider: &str, month_to_date_micros: u64, hourly_run_rate_micros: u64) -> ProviderSpend {
    ProviderSpend { provider: provider.into(), month_to_date_micros, hourly_run_rate_micros }
}

#[tokio::test]
async fn team_spend_matches_the_hand_computed_ledger() {
    let (db, store) = TestDb::create("canopy_metering").await;
    let (red, blue) = fixture(&db, &store).await;
    let now = at("2026-11-15T12:00:00Z");
    assert_eq!(
        store.team_spend(red, now).await.expect("red"),
        vec![spend("aws", 8_810_000, 50_000), spend("azure", 100_000, 100_000)]
    );
    // Blue: a quarter of aws-a for 12 h (300,000); half of owned-c since Nov 1 (14.5 days,
    // 348 h x 25,000 = 8,700,000), still running.
    assert_eq!(
        store.team_spend(blue, now).await.expect("blue"),
        vec![spend("aws", 300_000, 0), spend("openstack", 8_700_000, 25_000)]
    );
    // Earlier in the month only what had happened by then counts.
    let earlier = at("2026-11-02T03:00:00Z");
    assert_eq!(store.team_spend(red, earlier).await.expect("red"), vec![spend("aws", 50_000 + 1_080_000, 360_000)]);
    // Sharing idle back: red alone on aws-a and azure-b pays for all of both from now on.
    let mut connection = PgConnection::connect(&db.url()).await.expect("connect");
    sqlx::query("UPDATE settings SET cost_share_idle = true").execute(&mut connection).await.expect("share idle");
    let shared = store.team_spend(red, now).await.expect("red");
    assert_eq!(
        shared.iter().map(|s| (s.provider.as_str(), s.hourly_run_rate_micros)).collect::<Vec<_>>(),
        vec![("aws", 100_000), ("azure", 200_000)]
    );
}

fn november() -> (chrono::NaiveDate, chrono::NaiveDate) {
    let day = |m, d| chrono::NaiveDate::from_ymd_opt(2026, m, d).expect("day");
    (day(11, 1), day(12, 1))
}

#[tokio::test]
async fn reports_read_the_materialised_ledger() {
    use canopy_api::store::reports::{Dimension, ReportQuery};
    let (db, store) = TestDb::create("canopy_metering").await;
    let (red, _) = fixture(&db, &store).await;
    let now = at("2026-11-15T12:00:00Z");
    // Oct 31 to Nov 15, each day once; all but Nov 15 are final (an hour past their end).
    assert_eq!(store.meter(now).await.expect("meter"), Some(16));
    assert_eq!(store.meter(now).await.expect("meter again"), Some(1), "only Nov 15 again");
    let (from, to) = november();
    let by = |dims: &[Dimension]| ReportQuery::new(dims, from, to, None, None).expect("query");

    // Whole month: aws-a 348 h x 100,000; aws-d 6 h x 360,000; azure-b 2 h x 200,000; owned-c
    // 348 h x 50,000 = 54,760,000, of which red 8,910,000 and blue 9,000,000 (as team_spend).
    let rows = store.cost_report(&by(&[Dimension::Team])).await.expect("cost by team");
    let teams: Vec<_> = rows.iter().map(|r| (r.group.team.as_deref(), r.allocated_micros, r.idle_micros)).collect();
    assert_eq!(teams, vec![(Some("blue"), 9_000_000, 0), (Some("red"), 8_910_000, 0), (None, 0, 36_850_000)]);
    let rows = store.cost_report(&by(&[Dimension::Provider])).await.expect("cost by provider");
    let providers: Vec<_> = rows.iter().map(|r| (r.group.provider.as_deref(), r.total_micros)).collect();
    assert_eq!(providers, vec![(Some("aws"), 36_960_000), (Some("azure"), 400_000), (Some("openstack"), 17_400_000)]);
    // One team's view has no idle; one provider's view only that provider.
    let red_only = ReportQuery::new(&[Dimension::App, Dimension::Provider], from, to, Some(red), None).expect("q");
    let rows = store.cost_report(&red_only).await.expect("red by app");
    let apps: Vec<_> =
        rows.iter().map(|r| (r.group.app.as_deref(), r.group.provider.as_deref(), r.total_micros)).collect();
    assert_eq!(
        apps,
        vec![
            (Some("batch"), Some("aws"), 2_210_000),
            (Some("web"), Some("aws"), 6_600_000),
            (Some("web"), Some("azure"), 100_000)
        ]
    );
    let azure = ReportQuery::new(&[Dimension::Day], from, to, None, Some("azure".into())).expect("q");
    let rows = store.cost_report(&azure).await.expect("azure by day");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].group.day, rows[0].allocated_micros, rows[0].idle_micros),
        (chrono::NaiveDate::from_ymd_opt(2026, 11, 15), 100_000, 300_000)
    );

    // Utilization on azure-b: red/web requested 1 of its 2 cpus for 1 of its 2 hours.
    let rows = store.utilization_report(&azure).await.expect("utilization");
    assert_eq!(rows[0].cpu_requested_core_hours, 1.0);
    assert_eq!(rows[0].cpu_capacity_core_hours, 4.0);
    assert_eq!(rows[0].cpu_requested_of_capacity(), Some(0.25));
    assert_eq!(rows[0].memory_requested_gib_hours, 4.0);
    assert_eq!(rows[0].cpu_used_core_hours, 0.0, "no usage reported in the fixture");

    // Charging max(request, usage) per resource: red/web used both of azure-b's cpus in its
    // hour (7.2e9 cpu microseconds), so it pays for all of the cpu part and half of the memory
    // part: 200,000 x (63,222 + 33,896 / 2) / 97,118 (the reference split of 2 cpu : 8 GiB),
    // 165,098.3, to within a micro.
    use canopy_api::store::metering::CostPolicy;
    use canopy_core::cost::{AllocationMode, IdlePolicy};
    let mut connection = PgConnection::connect(&db.url()).await.expect("connect");
    sqlx::query(
        "INSERT INTO task_usage_hours (task_id, hour, cpu_usec, memory_byte_seconds, memory_sampled_ms, memory_peak)
         SELECT t.id, '2026-11-15T11:00:00Z', 7200000000, 0, 0, 0
         FROM tasks t JOIN machines m ON m.id = t.machine_id WHERE m.name = 'azure-b'",
    )
    .execute(&mut connection)
    .await
    .expect("usage");
    let policy = CostPolicy { mode: AllocationMode::MaxRequestUsage, idle: IdlePolicy::Report };
    store.set_cost_policy("test", policy).await.expect("policy");
    assert_eq!(store.cost_policy().await.expect("policy"), policy);
    assert_eq!(store.meter(now).await.expect("meter"), Some(1), "Nov 15 is not final yet");
    let rows = store.cost_report(&azure).await.expect("azure by day");
    assert!((165_098..=165_099).contains(&rows[0].allocated_micros), "{rows:?}");
    assert_eq!(rows[0].allocated_micros + rows[0].idle_micros, 400_000);
    let rows = store.utilization_report(&azure).await.expect("utilization");
    assert_eq!(rows[0].cpu_used_core_hours, 2.0);
}

#[tokio::test]
async fn heartbeats_add_usage_increases_to_hourly_rows() {
    use canopy_api::store::reports::{Dimension, ReportQuery};
    use canopy_core::wire::{HeartbeatRequest, PROTOCOL_VERSION, RunState, TaskReport, Usage};
    let (db, store) = TestDb::create("canopy_metering").await;
    let team = store.create_team("test", "red").await.expect("team").id;
    let machine = common::join(&store, "m1", &[]).await;
    let spec = canopy_core::spec::AppSpec::from_toml(
        "name = \"web\"\ncommand = \"sleep\"\nargs = [\"60\"]\n[resources]\ncpu = 500\nmemory = \"64Mi\"\n",
    )
    .expect("spec");
    store.apply_app("test", team, &spec).await.expect("apply");
    store.reconcile_apps().await.expect("reconcile");
    store.place_pending(&common::no_catalog(), &Default::default()).await.expect("place");
    let heartbeat =
        |tasks| HeartbeatRequest { protocol: PROTOCOL_VERSION, agent_endpoint: "127.0.0.1:1".into(), tasks };
    let desired = store.heartbeat(machine, &heartbeat(vec![]), 1000).await.expect("heartbeat").desired;
    let task = desired[0].task_id;
    let report = |cpu_usec, memory_bytes, memory_peak_bytes, memory_byte_seconds, memory_sampled_ms| TaskReport {
        task_id: task,
        state: RunState::Running,
        pid: Some(42),
        ports: Default::default(),
        healthy: None,
        restarts: 0,
        last_exit: None,
        usage: Usage { cpu_usec, memory_bytes, memory_peak_bytes, memory_byte_seconds, memory_sampled_ms },
        progress: None,
    };
    const MIB: u64 = 1 << 20;
    for usage in [
        report(1_000_000, 100 * MIB, 120 * MIB, 50, 1_000),
        report(3_000_000, 100 * MIB, 150 * MIB, 150, 3_000),
        // A restarted agent meters memory from zero again; the kernel's cpu counter goes on.
        report(4_000_000, 80 * MIB, 150 * MIB, 20, 500),
    ] {
        store.heartbeat(machine, &heartbeat(vec![usage]), 1000).await.expect("heartbeat");
    }
    // Summed over rows, should the hour have turned between two heartbeats.
    let mut connection = PgConnection::connect(&db.url()).await.expect("connect");
    let totals: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT SUM(cpu_usec)::bigint, SUM(memory_byte_seconds)::bigint, SUM(memory_sampled_ms)::bigint,
                MAX(memory_peak) FROM task_usage_hours WHERE task_id = $1",
    )
    .bind(task)
    .fetch_one(&mut connection)
    .await
    .expect("usage rows");
    assert_eq!(totals, (4_000_000, 50 + 100 + 20, 1_000 + 2_000 + 500, 150 * MIB as i64));

    // The ledger carries it into the utilization report: 4 cpu seconds.
    store.meter(Utc::now()).await.expect("meter");
    // Yesterday too, should midnight have passed since the heartbeats.
    let today = Utc::now().date_naive();
    let (from, to) = (today - chrono::Days::new(1), today + chrono::Days::new(1));
    let query = ReportQuery::new(&[Dimension::Team], from, to, Some(team), None).expect("query");
    let rows = store.utilization_report(&query).await.expect("utilization");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].cpu_used_core_hours, 4000.0 / 3.6e6);
    assert_eq!(rows[0].memory_used_gib_hours, 170.0 / (3600.0 * 1073741824.0));
}

/// The API on port 0 over `store`, without controllers (the fixture's clock is fixed).
async fn serve(store: &Store) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let state = canopy_api::http::AppState {
        store: store.clone(),
        heartbeat_interval: std::time::Duration::from_secs(1),
        agents: reqwest::Client::new(),
        // Nothing to buy: no policy is assessed here.
        buyable: tokio::sync::watch::channel(Default::default()).1,
    };
    tokio::spawn(async move { axum::serve(listener, canopy_api::http::router(state)).await });
    format!("http://{address}")
}

async fn get(base: &str, token: &str, path: &str) -> (u16, String) {
    let response = reqwest::Client::new().get(format!("{base}{path}")).bearer_auth(token).send().await.expect("get");
    (response.status().as_u16(), response.text().await.expect("body"))
}

#[tokio::test]
async fn the_reports_api_answers_json_and_csv_per_role_and_names_bad_parameters() {
    use canopy_api::auth::Role;
    let (db, store) = TestDb::create("canopy_metering").await;
    fixture(&db, &store).await;
    store.meter(at("2026-11-15T12:00:00Z")).await.expect("meter");
    let admin = store.bootstrap_admin(None).await.expect("admin").expect("created");
    let finance = store.create_token("test", "fin", Role::Finance, Some("red")).await.expect("finance").token;
    let base = serve(&store).await;
    let november = "from=2026-11-01&to=2026-11-16";

    let (status, body) = get(&base, &admin, &format!("/v1/reports/cost?by=team&{november}")).await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("json");
    let totals: Vec<(serde_json::Value, i64)> = report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| (r["team"].clone(), r["total_micros"].as_i64().expect("total")))
        .collect();
    assert_eq!(
        totals,
        vec![("blue".into(), 9_000_000), ("red".into(), 8_910_000), (serde_json::Value::Null, 36_850_000)]
    );
    assert_eq!(report["by"], serde_json::json!(["team"]));

    // CSV by parameter or by Accept header, the same text.
    let (status, csv) = get(&base, &admin, &format!("/v1/reports/cost?by=team,provider&{november}&format=csv")).await;
    assert_eq!(status, 200);
    let accepted = reqwest::Client::new()
        .get(format!("{base}/v1/reports/cost?by=team,provider&{november}"))
        .bearer_auth(&admin)
        .header("accept", "text/csv")
        .send()
        .await
        .expect("get");
    assert_eq!(accepted.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(accepted.text().await.expect("body"), csv);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "team,provider,allocated_micros,idle_micros,total_micros,total");
    assert!(lines.contains(&"red,azure,100000,0,100000,0.100000"), "{csv}");
    assert!(lines.contains(&"(idle),openstack,0,8700000,8700000,8.700000"), "{csv}");

    // Finance sees its own team only, without idle; another team is not found.
    let (status, body) = get(&base, &finance, &format!("/v1/reports/cost?{november}&format=csv")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "team,allocated_micros,idle_micros,total_micros,total\r\nred,8910000,0,8910000,8.910000\r\n")
    );
    let (status, _) = get(&base, &finance, &format!("/v1/reports/cost?team=blue&{november}")).await;
    assert_eq!(status, 404);

    // Savings against the shipped catalogs: baseline minus actual on every row.
    let (status, body) = get(&base, &admin, &format!("/v1/reports/savings?by=provider&{november}")).await;
    assert_eq!(status, 200, "{body}");
    let savings: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(savings["baseline_provider"].is_string(), "{body}");
    let rows = savings["rows"].as_array().expect("rows");
    let actual: i64 = rows.iter().map(|r| r["actual_micros"].as_i64().expect("actual")).sum();
    assert_eq!(actual, 54_760_000);
    for r in rows {
        let (baseline, actual, saved) = (&r["baseline_micros"], &r["actual_micros"], &r["savings_micros"]);
        assert!(baseline.as_i64().expect("baseline") > 0, "{r}");
        assert_eq!(saved.as_i64(), Some(baseline.as_i64().expect("b") - actual.as_i64().expect("a")));
    }

    // Bad parameters: 400, naming the parameter; nothing else changes.
    for (query, named) in [
        ("by=colour", "by: "),
        ("month=2026-13", "month: "),
        ("from=2026-11-05&to=2026-11-01", "to: "),
        ("to=2026-11-05", "from: "),
        ("month=2026-11&from=2026-11-01", "month: "),
        ("format=xml", "format: "),
        ("colour=blue", "colour"),
    ] {
        let (status, body) = get(&base, &admin, &format!("/v1/reports/utilization?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let message = serde_json::from_str::<serde_json::Value>(&body).expect("error")["error"]["message"].clone();
        assert!(message.as_str().expect("message").contains(named), "{query}: {message}");
    }
    let (status, _) = get(&base, "not-a-token", "/v1/reports/cost").await;
    assert_eq!(status, 401);

    // Budgets: a policy's [budget] rule (admins, or red's developers), read per month.
    let put = |token: &str, budget: serde_json::Value| {
        let policy = serde_json::json!({"name": "red-budget", "scope": {"team": "red"}, "budget": budget});
        reqwest::Client::new()
            .put(format!("{base}/v1/policies/red-budget"))
            .bearer_auth(token.to_string())
            .json(&policy)
            .send()
    };
    assert_eq!(put(&finance, serde_json::json!({"monthly": "5.00"})).await.expect("put").status(), 403);
    let refused = put(&admin, serde_json::json!({"monthly": "5.00", "webhook_url": "ftp://x"})).await.expect("put");
    assert_eq!(refused.status(), 422);
    assert!(refused.text().await.expect("body").contains("budget.webhook_url"));
    assert_eq!(put(&admin, serde_json::json!({"monthly": "5.00"})).await.expect("put").status(), 201);
    // October is over: red spent half of aws-a's first hour (50,000) and forecasts no more.
    let (status, csv) = get(&base, &finance, "/v1/reports/budgets?month=2026-10&format=csv").await;
    assert_eq!(status, 200, "{csv}");
    assert_eq!(
        csv,
        "team,month,budget_micros,spent_micros,hourly_run_rate_micros,forecast_micros,over_budget\r\n\
         red,2026-10,5000000,50000,0,50000,false\r\n"
    );
    let (status, body) = get(&base, &admin, "/v1/reports/budgets?by=provider").await;
    assert_eq!(status, 400, "{body}");

    // The cost policy: everyone reads it, admins change it.
    let (status, body) = get(&base, &finance, "/v1/cost-policy").await;
    assert_eq!((status, body.as_str()), (200, r#"{"allocation":"request","share_idle":false}"#));
    let set = |token: &str, body: serde_json::Value| {
        reqwest::Client::new().put(format!("{base}/v1/cost-policy")).bearer_auth(token.to_string()).json(&body).send()
    };
    let policy = serde_json::json!({"allocation": "max-request-usage", "share_idle": true});
    assert_eq!(set(&finance, policy.clone()).await.expect("put").status(), 403);
    let refused = set(&admin, serde_json::json!({"allocation": "usage", "share_idle": true})).await.expect("put");
    assert_eq!(refused.status(), 422);
    assert!(refused.text().await.expect("body").contains("allocation: "));
    assert_eq!(
        set(&admin, policy.clone()).await.expect("put").json::<serde_json::Value>().await.expect("json"),
        policy
    );
    let events = store.events(None, 5).await.expect("events");
    assert!(events.iter().any(|e| e.kind == "settings.cost_policy" && e.detail["share_idle"] == true));
}

/// Applies red's budget policy: `monthly` micros, and the webhook its alerts go to.
async fn set_budget(store: &Store, monthly: u64, webhook_url: Option<&str>) {
    let policy = PolicyDocument::from_json(
        serde_json::json!({
            "name": "red-budget",
            "scope": {"team": "red"},
            "budget": {"monthly": Money(monthly).to_string(), "webhook_url": webhook_url},
        })
        .to_string()
        .as_bytes(),
    )
    .expect("policy");
    store.apply_policy("test", Author::Admin, &policy).await.expect("budget");
}

#[tokio::test]
async fn a_forecast_crossing_the_budget_is_alerted_once_with_an_event_and_a_webhook() {
    let (db, store) = TestDb::create("canopy_metering").await;
    let (red, _) = fixture(&db, &store).await;
    let now = at("2026-11-15T12:00:00Z");
    // Red: 8,910,000 so far and 150,000/h for the 372 h left = 64,710,000.
    set_budget(&store, 100_000_000, None).await;
    assert_eq!(store.check_budgets(now).await.expect("check"), Some(0));
    let rows = store.budget_report(chrono::NaiveDate::from_ymd_opt(2026, 11, 1).expect("day"), Some(red), now).await;
    let row = rows.expect("report").pop().expect("red");
    assert_eq!((row.spent_micros, row.hourly_run_rate_micros, row.forecast_micros), (8_910_000, 150_000, 64_710_000));
    assert!(!row.over_budget);

    // A webhook receiver that keeps what it is sent.
    let (sent, mut received) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let sent = sent.clone();
            async move {
                let _ = sent.send(body);
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hook = format!("http://{}/hook", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    set_budget(&store, 50_000_000, Some(&hook)).await;
    assert_eq!(store.check_budgets(now).await.expect("check"), Some(1), "crossed");
    assert_eq!(store.check_budgets(now).await.expect("check"), Some(0), "once per crossing");
    let events = store.events(Some(red), 10).await.expect("events");
    let over: Vec<_> = events.iter().filter(|e| e.kind == "budget.forecast_over").collect();
    assert_eq!(over.len(), 1);
    assert_eq!(over[0].detail["forecast_micros"], 64_710_000);

    // The metering controller delivers it, once.
    let metering = canopy_api::controllers::metering::Metering::new(std::time::Duration::ZERO);
    metering.step(&store).await.expect("step");
    let payload = received.recv().await.expect("webhook");
    assert_eq!(payload["kind"], "budget.forecast_over");
    assert_eq!(payload["detail"]["team"], "red");
    metering.step(&store).await.expect("step");
    assert!(store.pending_webhooks().await.expect("pending").is_empty());
    assert!(received.try_recv().is_err(), "delivered once");

    // Back under budget, then over again: a second crossing, a second alert.
    set_budget(&store, 1_000_000_000, Some(&hook)).await;
    assert_eq!(store.check_budgets(now).await.expect("check"), Some(0));
    set_budget(&store, 50_000_000, None).await;
    assert_eq!(store.check_budgets(now).await.expect("check"), Some(1));
}

#[tokio::test]
async fn generated_history_keeps_the_ledger_exact() {
    use canopy_api::store::history::HistoryConfig;
    use canopy_api::store::reports::{Dimension, ReportQuery};
    let (db, store) = TestDb::create("canopy_metering").await;
    let end = at("2026-11-01T00:00:00Z");
    let config = HistoryConfig { machines: 6, days: 20, end, seed: 7 };
    let summary = store
        .seed_history(&config, canopy_api::prices::shipped_catalog(), &canopy_api::prices::owned_rates())
        .await
        .expect("seed");
    assert!(summary.machines >= 6 && summary.tasks > summary.machines && summary.usage_rows >= summary.tasks);
    let mut connection = PgConnection::connect(&db.url()).await.expect("connect");
    // Every machine-day: its apps' charges plus idle are its cost; and each day's cost is the
    // price for the time it ran that day, rounded once.
    let broken: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM machine_days d JOIN machines m ON m.id = d.machine_id
         WHERE d.cost_micros <> d.idle_micros + COALESCE((SELECT SUM(c.micros) FROM cost_days c
                                                          WHERE c.day = d.day AND c.machine_id = d.machine_id), 0)
            OR d.cost_micros <> (m.price_micros * d.ms + 1800000) / 3600000",
    )
    .fetch_one(&mut connection)
    .await
    .expect("check");
    assert_eq!(broken, 0);
    // The machine-days cover the machines' lives exactly.
    let (lived_ms, metered_ms): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT SUM(EXTRACT(EPOCH FROM terminated_at - created_at) * 1000)::bigint FROM machines),
                (SELECT SUM(ms)::bigint FROM machine_days)",
    )
    .fetch_one(&mut connection)
    .await
    .expect("lives");
    assert_eq!(lived_ms, metered_ms);
    // The same seed gives the same history (ids aside): same totals in a second database.
    let (db2, store2) = TestDb::create("canopy_metering").await;
    store2
        .seed_history(&config, canopy_api::prices::shipped_catalog(), &canopy_api::prices::owned_rates())
        .await
        .expect("seed again");
    let (from, to) = (end.date_naive() - chrono::Days::new(20), end.date_naive());
    let query = ReportQuery::new(&[Dimension::Team, Dimension::Provider], from, to, None, None).expect("query");
    let first = store.cost_report(&query).await.expect("report");
    assert!(first.iter().any(|r| r.group.team.as_deref() == Some("payments")), "{first:?}");
    let second = store2.cost_report(&query).await.expect("report");
    assert_eq!(first, second);
    let used = store.utilization_report(&query).await.expect("utilization");
    assert!(used.iter().all(|r| r.cpu_used_core_hours <= r.cpu_requested_core_hours * 1.05), "{used:?}");
    assert!(used.iter().any(|r| r.cpu_used_core_hours > 0.0));
    drop(db2);
}
