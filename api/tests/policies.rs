//! Portability policies through the HTTP API on a real Postgres: versions and who may write
//! them, each rule's accept and refuse paths at deploy (the message names the policy, the rule
//! and the numbers), placement under what the policies allow, dry runs, explanations, policy
//! tests and the portability re-check.

#[allow(dead_code)] // Not every test file uses every helper.
mod common;

use canopy_api::auth::Role;
use canopy_api::controllers::Buyable;
use canopy_api::http::{AppState, router};
use canopy_api::store::Store;
use canopy_core::Resources;
use canopy_core::schedule::{Catalog, Offering};
use common::TestDb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use std::sync::Arc;
use tokio::sync::watch;

const GIB: u64 = 1 << 30;

/// A control service's API (no controllers: the tests step them) on a port of its own.
struct Api {
    db: TestDb,
    store: Store,
    url: String,
    http: reqwest::Client,
    admin: String,
    developer: String,
    buyable: Arc<watch::Sender<Buyable>>,
    _server: tokio::task::JoinHandle<()>,
}

fn offering(provider: &str, region: &str, instance_type: &str, cpu: u64, memory: u64, price: u64) -> Offering {
    Offering {
        provider: provider.into(),
        region: region.into(),
        instance_type: instance_type.into(),
        capacity: Resources::new(cpu, memory),
        price_on_demand: price,
        ..Default::default()
    }
}

/// aws sells 1-cpu machines at 0.10/h in us-east-1, azure 0.20/h in westeurope.
fn catalog() -> Catalog {
    Catalog {
        offerings: vec![
            offering("aws", "us-east-1", "m.small", 1000, GIB, 100_000),
            offering("azure", "westeurope", "B1", 1000, GIB, 200_000),
        ],
    }
}

impl Api {
    async fn start(prefix: &str, catalog: Catalog) -> Api {
        let (db, store) = TestDb::create(prefix).await;
        let admin = format!("cnp_{}", uuid::Uuid::new_v4().simple());
        store.bootstrap_admin(Some(&admin)).await.expect("admin");
        for team in ["payments", "search"] {
            store.create_team("test", team).await.expect("team");
        }
        let developer =
            store.create_token("test", "dev", Role::Developer, Some("payments")).await.expect("token").token;
        let buyable = Arc::new(watch::Sender::new(Buyable { catalog: Arc::new(catalog), ..Default::default() }));
        let state = AppState {
            store: store.clone(),
            heartbeat_interval: std::time::Duration::from_secs(1),
            agents: reqwest::Client::new(),
            buyable: buyable.subscribe(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router(state)).await;
        });
        Api { db, store, url, http: reqwest::Client::new(), admin, developer, buyable, _server: server }
    }

    async fn call(&self, token: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn put_policy(&self, token: &str, toml: &str) -> (StatusCode, Value) {
        let document = canopy_core::policy::PolicyDocument::from_toml(toml).expect("policy");
        let body = serde_json::to_value(&document).expect("json");
        self.call(token, reqwest::Method::PUT, &format!("/v1/policies/{}", document.name), Some(body)).await
    }

    /// Deploys `spec` (TOML) as the payments developer.
    async fn deploy(&self, spec: &str) -> (StatusCode, Value) {
        let spec = canopy_core::spec::AppSpec::from_toml(spec).expect("spec");
        let body = serde_json::to_value(&spec).expect("json");
        self.call(&self.developer, reqwest::Method::PUT, &format!("/v1/apps/{}", spec.name), Some(body)).await
    }

    async fn dry_run(&self, spec: &str) -> (StatusCode, Value) {
        let spec = canopy_core::spec::AppSpec::from_toml(spec).expect("spec");
        let body = serde_json::to_value(&spec).expect("json");
        self.call(&self.developer, reqwest::Method::POST, &format!("/v1/apps/{}/dry-run", spec.name), Some(body)).await
    }

    /// Joins a 1-cpu / 1 GiB machine of `provider` in `region` costing `price` micros an hour.
    async fn machine(&self, name: &str, provider: &str, region: &str, price: i64) {
        let id = common::join(&self.store, name, &[("provider", provider)]).await;
        let mut connection = sqlx::PgConnection::connect(&self.db.url()).await.expect("connect");
        sqlx::query("UPDATE machines SET region = $2, price_micros = $3 WHERE id = $1")
            .bind(id)
            .bind(region)
            .bind(price)
            .execute(&mut connection)
            .await
            .expect("price");
    }

    /// One app-controller and one placement step, buying from the test catalog.
    async fn place(&self) {
        self.store.reconcile_apps().await.expect("reconcile");
        let catalog = self.buyable.borrow().catalog.clone();
        self.store.place_pending(&catalog, &Default::default()).await.expect("place");
    }

    /// What agents would report: every assigned task started a minute ago (the metering
    /// ledger counts started tasks).
    async fn start_assigned(&self) {
        let mut connection = sqlx::PgConnection::connect(&self.db.url()).await.expect("connect");
        sqlx::query(
            "UPDATE tasks SET state = 'running', started_at = now() - interval '1 minute' WHERE state = 'assigned'",
        )
        .execute(&mut connection)
        .await
        .expect("start");
    }

    async fn events(&self, kind: &str) -> Vec<Value> {
        let (_, events) = self.call(&self.admin, reqwest::Method::GET, "/v1/events?limit=200", None).await;
        events.as_array().expect("events").iter().filter(|e| e["kind"] == kind).cloned().collect()
    }
}

fn app(name: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\ncommand = \"sleep\"\nargs = [\"60\"]\n{extra}\n[resources]\ncpu = 300\nmemory = \"256Mi\"\n"
    )
}

fn message(body: &Value) -> String {
    body["error"]["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn policies_are_versioned_audited_and_teams_cannot_loosen_the_organisations() {
    let api = Api::start("canopy_pol", catalog()).await;
    let org = "name = \"no-aws\"\nscope = \"org\"\n[residency]\ndenied_providers = [\"aws\"]\n";
    let (status, body) = api.put_policy(&api.admin, org).await;
    assert_eq!(
        (status, body["version"].as_i64(), body["changed"].as_bool()),
        (StatusCode::CREATED, Some(1), Some(true))
    );
    // The same document again (even written differently) changes nothing.
    let same = "scope = \"org\"\nname = \"no-aws\"\n\n[residency]\ndenied_providers = [ \"aws\" ]\n";
    let (status, body) = api.put_policy(&api.admin, same).await;
    assert_eq!((status, body["version"].as_i64(), body["changed"].as_bool()), (StatusCode::OK, Some(1), Some(false)));
    let (status, body) = api.put_policy(&api.admin, &org.replace("\"aws\"", "\"aws\", \"azure\"")).await;
    assert_eq!((status, body["version"].as_i64()), (StatusCode::CREATED, Some(2)));
    assert_eq!(api.events("policy.applied").await.len(), 2, "one audit event per version");

    let (status, versions) = api.call(&api.developer, reqwest::Method::GET, "/v1/policies/no-aws/versions", None).await;
    assert_eq!(status, StatusCode::OK);
    let numbers: Vec<i64> = versions.as_array().expect("list").iter().filter_map(|v| v["version"].as_i64()).collect();
    assert_eq!(numbers, vec![2, 1]);
    let (_, first) = api.call(&api.developer, reqwest::Method::GET, "/v1/policies/no-aws?version=1", None).await;
    assert_eq!(first["document"]["residency"]["denied_providers"], json!(["aws"]));

    // A developer may not write the organisation's policies, nor change them by scoping a
    // policy of the same name to the team.
    let (status, body) = api.put_policy(&api.developer, &org.replace("\"azure\"", "")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let takeover = "name = \"no-aws\"\nscope = { team = \"payments\" }\n[residency]\ndenied_providers = [\"aws\"]\n";
    let (status, body) = api.put_policy(&api.developer, takeover).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(message(&body).contains("organisation"), "{body}");
    // Its own team's policy it may write, and the other team never sees it.
    let own = "name = \"payments-spot\"\nscope = { team = \"payments\" }\n[spot]\nservices = false\n";
    assert_eq!(api.put_policy(&api.developer, own).await.0, StatusCode::CREATED);
    let other = api.store.create_token("test", "other", Role::Developer, Some("search")).await.expect("token").token;
    let (status, _) = api.call(&other, reqwest::Method::GET, "/v1/policies/payments-spot", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, listed) = api.call(&other, reqwest::Method::GET, "/v1/policies", None).await;
    let names: Vec<&str> = listed.as_array().expect("list").iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, vec!["no-aws"]);

    // A bad document is a 422 naming the field; nothing is stored.
    let bad = "name = \"tight\"\nscope = \"org\"\n[concentration]\nmax_share_percent = 120\n";
    let document = json!({"name": "tight", "scope": "org", "concentration": {"max_share_percent": 120}});
    let (status, body) = api.call(&api.admin, reqwest::Method::PUT, "/v1/policies/tight", Some(document)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message(&body).starts_with("concentration.max_share_percent: "), "{body} ({bad})");
    let (status, _) = api.call(&api.admin, reqwest::Method::GET, "/v1/policies/tight", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn residency_refuses_a_spec_outside_it_and_placement_buys_only_where_it_allows() {
    let api = Api::start("canopy_pol", catalog()).await;
    let policy = "name = \"eu-only\"\nscope = \"org\"\n[residency]\nallowed_providers = [\"azure\"]\n";
    api.put_policy(&api.admin, policy).await;

    let (status, body) = api.deploy(&app("us", "[placement]\nproviders = [\"aws\"]")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "policy_refused");
    assert_eq!(
        message(&body),
        "policy eu-only (residency): the workload asks for providers aws; the policy allows azure"
    );
    let (status, _) = api.call(&api.developer, reqwest::Method::GET, "/v1/apps/us", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a refused deploy stores nothing");

    // Anywhere is accepted, and bound to azure although aws is cheaper.
    let (status, body) = api.deploy(&app("web", "instances = 2")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    api.place().await;
    let machines = api.store.machines().await.expect("machines");
    assert!(!machines.is_empty());
    assert!(machines.iter().all(|m| m.provider == "azure"), "{machines:?}");
}

#[tokio::test]
async fn min_providers_refuses_a_workload_only_one_provider_can_hold_and_the_recheck_flags_lost_portability() {
    let mut catalog = catalog();
    catalog.offerings.push(offering("aws", "us-east-1", "m.large", 4000, 16 * GIB, 400_000));
    let api = Api::start("canopy_pol", catalog.clone()).await;
    let policy = "name = \"two-clouds\"\nscope = \"org\"\n[portability]\nmin_providers = 2\n";
    api.put_policy(&api.admin, policy).await;

    // 8 GiB fits only aws's large machine.
    let big = app("big", "").replace("memory = \"256Mi\"", "memory = \"8Gi\"");
    let (status, body) = api.deploy(&big).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        message(&body),
        "policy two-clouds (portability): the workload could be placed on 1 provider (aws), at least 2 required"
    );
    let (status, body) = api.deploy(&app("small", "")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["portability"], "");

    // Azure stops selling its only offering: the re-check flags the app, once.
    let without_azure = Buyable {
        catalog: Arc::new(Catalog {
            offerings: catalog.offerings.iter().filter(|o| o.provider != "azure").cloned().collect(),
        }),
        ..Default::default()
    };
    assert_eq!(canopy_api::policy::recheck(&api.store, &without_azure).await.expect("recheck"), 1);
    assert_eq!(canopy_api::policy::recheck(&api.store, &without_azure).await.expect("recheck"), 0);
    let (_, detail) = api.call(&api.developer, reqwest::Method::GET, "/v1/apps/small", None).await;
    assert_eq!(
        detail["portability"],
        "policy two-clouds (portability): the workload could be placed on 1 provider (aws), at least 2 required"
    );
    let lost = api.events("app.portability_lost").await;
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0]["subject"], "small");

    // It sells it again: portable again.
    let with_azure = Buyable { catalog: Arc::new(catalog), ..Default::default() };
    assert_eq!(canopy_api::policy::recheck(&api.store, &with_azure).await.expect("recheck"), 1);
    let (_, detail) = api.call(&api.developer, reqwest::Method::GET, "/v1/apps/small", None).await;
    assert_eq!(detail["portability"], "");
    assert_eq!(api.events("app.portability_restored").await.len(), 1);
}

#[tokio::test]
async fn a_budget_refuses_a_deploy_whose_forecast_exceeds_it() {
    let api = Api::start("canopy_pol", catalog()).await;
    // The team already runs half of a 0.10/h aws machine: 0.05/h.
    api.machine("aws-1", "aws", "us-east-1", 100_000).await;
    let (status, _) = api.deploy(&app("base", "").replace("cpu = 300", "cpu = 500").replace("256Mi", "512Mi")).await;
    assert_eq!(status, StatusCode::CREATED);
    api.place().await;
    api.start_assigned().await;

    let tight = "name = \"payments-budget\"\nscope = { team = \"payments\" }\n[budget]\nmonthly = \"0.01\"\n";
    api.put_policy(&api.admin, tight).await;
    let (status, body) = api.deploy(&app("more", "")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let text = message(&body);
    assert!(text.starts_with("policy payments-budget (budget): team payments: forecast spend this month "), "{text}");
    assert!(text.contains("would exceed the budget of 0.01"), "{text}");
    assert!(text.contains("then 0.05/h running + "), "{text}");

    let roomy = tight.replace("\"0.01\"", "\"1000000.00\"");
    api.put_policy(&api.admin, &roomy).await;
    let (status, body) = api.deploy(&app("more", "")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Scaling up is checked as a deploy is; scaling down is not held back.
    api.put_policy(&api.admin, tight).await;
    let scale = |instances: u32| {
        api.call(&api.developer, reqwest::Method::POST, "/v1/apps/more/scale", Some(json!({"instances": instances})))
    };
    let (status, body) = scale(3).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(message(&body).starts_with("policy payments-budget (budget): "), "{body}");
    let (status, body) = scale(0).await;
    assert_eq!((status, body["instances"].as_i64()), (StatusCode::OK, Some(0)), "{body}");
}

#[tokio::test]
async fn the_concentration_limit_sends_new_work_to_another_provider_and_refuses_when_there_is_none() {
    // Azure sells cheaply here, but the aws machine the team already uses has room: without a
    // policy new work would go there.
    let mut catalog = catalog();
    catalog.offerings[1].price_on_demand = 50_000;
    let api = Api::start("canopy_pol", catalog).await;
    // The team spends 0.05/h, all on aws.
    api.machine("aws-1", "aws", "us-east-1", 100_000).await;
    let (status, _) = api.deploy(&app("base", "").replace("cpu = 300", "cpu = 500").replace("256Mi", "512Mi")).await;
    assert_eq!(status, StatusCode::CREATED);
    api.place().await;
    api.start_assigned().await;
    let limit = "name = \"spread-spend\"\nscope = { team = \"payments\" }\n[concentration]\nmax_share_percent = 60\n";
    api.put_policy(&api.admin, limit).await;

    // Only aws allowed by its own placement: every place breaches the limit.
    let (status, body) = api.deploy(&app("aws-only", "[placement]\nproviders = [\"aws\"]")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        message(&body),
        "policy spread-spend (concentration): team payments: 100% of spend would be on aws, limit 60%"
    );

    // Free to go anywhere: aws (room on the existing machine, the cheapest) is excluded, and
    // the planner buys on azure.
    let (status, body) = api.deploy(&app("web", "")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    api.place().await;
    let machines = api.store.machines().await.expect("machines");
    let azure: Vec<_> = machines.iter().filter(|m| m.provider == "azure").collect();
    assert_eq!(azure.len(), 1, "{machines:?}");
    assert_eq!(azure[0].tasks, 1);
    let aws = machines.iter().find(|m| m.provider == "aws").expect("aws");
    assert_eq!(aws.tasks, 1, "only the first app on aws: {machines:?}");
}

#[tokio::test]
async fn spot_rules_keep_services_on_demand_and_soft_rules_only_warn() {
    let mut catalog = catalog();
    catalog.offerings[0].price_spot = Some(30_000);
    let api = Api::start("canopy_pol", catalog).await;
    let soft = "name = \"prefer-azure\"\nscope = \"org\"\nenforcement = \"soft\"\n[residency]\nallowed_providers = [\"azure\"]\n";
    api.put_policy(&api.admin, soft).await;
    let hard = "name = \"no-spot-services\"\nscope = \"org\"\n[spot]\nservices = false\n";
    api.put_policy(&api.admin, hard).await;

    let (status, body) = api.deploy(&app("web", "interruptible = true")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let warnings: Vec<&str> = body["warnings"].as_array().expect("warnings").iter().filter_map(Value::as_str).collect();
    assert_eq!(
        warnings,
        vec![
            "policy prefer-azure (residency): the workload may be placed outside the policy: any of its providers (allowed: azure)"
        ]
    );
    api.place().await;
    let machines = api.store.machines().await.expect("machines");
    assert_eq!(machines.len(), 1, "{machines:?}");
    assert_eq!((machines[0].provider.as_str(), machines[0].spot), ("aws", false), "on-demand, not the cheaper spot");
}

#[tokio::test]
async fn dry_run_shows_placement_costs_and_verdicts_and_stores_nothing_and_explain_says_why() {
    let api = Api::start("canopy_pol", catalog()).await;
    let policy = "name = \"two-clouds\"\nscope = \"org\"\n[portability]\nmin_providers = 2\n";
    api.put_policy(&api.admin, policy).await;

    // 600m each: one machine per instance.
    let web = app("web", "instances = 2").replace("cpu = 300", "cpu = 600");
    let (status, report) = api.dry_run(&web).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["accepted"], true);
    assert_eq!(report["hourly_cost"], "0.20", "two aws machines at 0.10: {report}");
    let placement = report["placement"].as_array().expect("placement");
    assert_eq!(placement.len(), 2);
    assert!(placement.iter().all(|p| p["provider"] == "aws" && p["machine"].is_null()), "{report}");
    let costs: Vec<(String, Value)> = report["providers"]
        .as_array()
        .expect("providers")
        .iter()
        .map(|p| (p["provider"].as_str().unwrap_or_default().to_string(), p["cost"].clone()))
        .collect();
    assert_eq!(costs[0], ("aws".to_string(), json!("0.20")));
    assert_eq!(costs[1], ("azure".to_string(), json!("0.40")));
    assert_eq!(report["verdicts"][0]["outcome"], "allow");
    let (status, _) = api.call(&api.developer, reqwest::Method::GET, "/v1/apps/web", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a dry run stores nothing");

    // Deployed and placed: explain says where and what elsewhere costs.
    assert_eq!(api.deploy(&web).await.0, StatusCode::CREATED);
    api.place().await;
    let (status, explanation) = api.call(&api.developer, reqwest::Method::GET, "/v1/apps/web/explain", None).await;
    assert_eq!(status, StatusCode::OK, "{explanation}");
    let instances = explanation["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 2);
    assert!(instances.iter().all(|i| i["state"] == "assigned" && i["place"]["provider"] == "aws"), "{explanation}");
    let reasons = explanation["reasons"].to_string();
    assert!(reasons.contains("aws is the cheapest allowed provider"), "{reasons}");

    // A policy tested, not stored: what it would say about the running app.
    let candidate = canopy_core::policy::PolicyDocument::from_toml(
        "name = \"eu-only\"\nscope = \"org\"\n[residency]\nallowed_providers = [\"azure\"]\n",
    )
    .expect("policy");
    let (status, tested) =
        api.call(&api.developer, reqwest::Method::POST, "/v1/policies/test", Some(json!({"policy": candidate}))).await;
    assert_eq!(status, StatusCode::OK, "{tested}");
    assert_eq!(tested["workloads"][0]["app"], "web");
    assert_eq!(tested["workloads"][0]["outcome"], "allow");
    assert_eq!(tested["workloads"][0]["verdicts"][0]["message"], "the workload may run in providers azure");
    let (status, _) = api.call(&api.developer, reqwest::Method::GET, "/v1/policies/eu-only", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a tested policy is not stored");
}

#[tokio::test]
async fn an_evacuation_plan_moves_nothing_where_the_policies_forbid() {
    let api = Api::start("canopy_pol", Catalog::default()).await;
    api.machine("aws-1", "aws", "us-east-1", 100_000).await;
    api.machine("azure-1", "azure", "westeurope", 100_000).await;
    let policy = "name = \"aws-only\"\nscope = { team = \"payments\" }\n[residency]\nallowed_providers = [\"aws\"]\n";
    api.put_policy(&api.admin, policy).await;
    assert_eq!(api.deploy(&app("pinned", "")).await.0, StatusCode::CREATED);
    api.place().await;

    // Azure has room, but the policy keeps the app on aws: evacuating aws cannot move it.
    let plan =
        api.store.evacuation_plan("aws", &Arc::new(Catalog::default()), &Default::default()).await.expect("plan");
    assert!(plan.moves.is_empty(), "{plan:#?}");
    assert_eq!(plan.unplaced.len(), 1, "{plan:#?}");
    assert_eq!((plan.unplaced[0].app.as_str(), plan.unplaced[0].machine.as_str()), ("pinned", "aws-1"));
}
