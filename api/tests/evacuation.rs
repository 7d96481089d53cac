//! Provider evacuation against a real Postgres: the preview, waves under each app's disruption
//! budget, batch re-queueing, a control-service restart in the middle, completion, abort and
//! lift. Machines are joined by hand and labelled with their provider; agents are simulated
//! by heartbeats.

mod common;

use canopy_api::auth::Scope;
use canopy_api::store::{Store, StoreError};
use canopy_core::spec::AppSpec;
use canopy_core::wire::{ExitStatus, HeartbeatRequest, PROTOCOL_VERSION, RunState, TaskReport, Usage};
use common::{TestDb, join, no_catalog};
use sqlx::Connection;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

fn service(name: &str, instances: u32, cpu: u32) -> AppSpec {
    AppSpec::from_toml(&format!(
        "name = \"{name}\"\ncommand = \"sleep\"\nargs = [\"600\"]\ninstances = {instances}\n\
         [resources]\ncpu = {cpu}\nmemory = \"64Mi\"\n"
    ))
    .expect("spec")
}

fn job(name: &str) -> AppSpec {
    AppSpec::from_toml(&format!(
        "name = \"{name}\"\ncommand = \"sleep\"\nargs = [\"5\"]\n[resources]\ncpu = 200\nmemory = \"64Mi\"\n\
         [job]\ncompletions = 1\nretries = 0\n"
    ))
    .expect("spec")
}

/// Heartbeats `machine` as its agent would: every task it should run is running and healthy,
/// except those in `exited`, which ended with status 0; tasks it should not run are gone.
async fn heartbeat(store: &Store, machine: Uuid, exited: &[Uuid]) -> Vec<Uuid> {
    let request = |tasks| HeartbeatRequest { protocol: PROTOCOL_VERSION, agent_endpoint: "127.0.0.1:1".into(), tasks };
    let desired = store.heartbeat(machine, &request(vec![]), 1000).await.expect("heartbeat").desired;
    let reports = desired
        .iter()
        .map(|d| {
            let done = exited.contains(&d.task_id);
            TaskReport {
                task_id: d.task_id,
                state: if done { RunState::Exited } else { RunState::Running },
                pid: Some(1),
                ports: BTreeMap::new(),
                healthy: Some(true),
                restarts: 0,
                last_exit: done.then(|| ExitStatus {
                    code: Some(0),
                    signal: None,
                    oom_killed: false,
                    message: "exited with status 0".into(),
                }),
                usage: Usage::default(),
                progress: None,
            }
        })
        .collect();
    store.heartbeat(machine, &request(reports), 1000).await.expect("heartbeat");
    desired.iter().map(|d| d.task_id).collect()
}

/// One controller pass without provider calls, then every machine's agent reports.
async fn pass(store: &Store, machines: &[Uuid]) {
    store.reconcile_apps().await.expect("reconcile");
    store.place_pending(&no_catalog(), &Default::default()).await.expect("place");
    store.step_evacuations().await.expect("evacuation step");
    for &machine in machines {
        heartbeat(store, machine, &[]).await;
    }
}

/// (machine name, machine state) of every active task of `app`.
async fn placements(store: &Store, scope: Scope, app: &str) -> Vec<(String, String)> {
    let app = store.app(scope, app).await.expect("app");
    let machines = store.machines().await.expect("machines");
    app.tasks
        .iter()
        .filter(|t| matches!(t.state.as_str(), "assigned" | "running"))
        .filter_map(|t| t.machine.as_ref())
        .map(|name| {
            let state = machines.iter().find(|m| &m.name == name).map(|m| m.state.clone()).unwrap_or_default();
            (name.clone(), state)
        })
        .collect()
}

fn on_aws(name: &str) -> bool {
    name.starts_with("aws")
}

async fn event_kinds(store: &Store) -> Vec<String> {
    store.events(None, 500).await.expect("events").into_iter().map(|e| e.kind).collect()
}

#[tokio::test]
async fn an_evacuation_moves_everything_within_budgets_across_a_restart_and_completes() {
    let (db, store) = TestDb::create("canopy_evac").await;
    let team = store.create_team("test", "alpha").await.expect("team").id;
    let scope = Scope::Team(team);
    // web's two instances and a job's run on aws; azure joins afterwards, empty.
    let aws =
        [join(&store, "aws-1", &[("provider", "aws")]).await, join(&store, "aws-2", &[("provider", "aws")]).await];
    store.apply_app("test", team, &service("web", 2, 300)).await.expect("web");
    store.apply_app("test", team, &job("crunch")).await.expect("crunch");
    pass(&store, &aws).await;
    pass(&store, &aws).await;
    assert!(placements(&store, scope, "web").await.iter().all(|(m, _)| on_aws(m)));
    let azure = [
        join(&store, "azure-1", &[("provider", "azure")]).await,
        join(&store, "azure-2", &[("provider", "azure")]).await,
    ];
    let all = [aws[0], aws[1], azure[0], azure[1]];

    // The preview: three moves onto azure, nothing bought (no catalog), both aws machines
    // given back, web's instances one at a time.
    let plan = store.evacuation_plan("aws", &no_catalog(), &Default::default()).await.expect("plan");
    assert_eq!(plan.moves.len(), 3, "{plan:#?}");
    assert!(plan.moves.iter().all(|m| m.to_provider == "azure" && m.to.starts_with("azure")), "{plan:#?}");
    assert!(plan.unplaced.is_empty() && plan.purchases.is_empty());
    assert_eq!(plan.releases.len(), 2);
    assert_eq!(plan.waves, 2, "web (budget 1) is on both machines");
    assert_eq!(
        store.evacuated_providers().await.expect("evacuated"),
        Vec::<String>::new(),
        "a preview changes nothing"
    );

    store.start_evacuation("admin", "aws", Duration::ZERO, &no_catalog(), &Default::default()).await.expect("start");
    let again = store.start_evacuation("admin", "aws", Duration::ZERO, &no_catalog(), &Default::default()).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let preview = store.evacuation_plan("aws", &no_catalog(), &Default::default()).await;
    assert!(matches!(preview, Err(StoreError::Conflict(_))), "already under way: {preview:?}");

    // Wave 1: one machine drains. A new app goes to azure, never to the aws machine that is
    // still ready.
    assert_eq!(store.step_evacuations().await.expect("step"), 1);
    assert_eq!(store.step_evacuations().await.expect("step"), 0, "web's budget is spent until its move is done");
    store.apply_app("test", team, &service("fresh", 1, 100)).await.expect("fresh");
    pass(&store, &all).await;
    assert!(placements(&store, scope, "fresh").await.iter().all(|(m, _)| !on_aws(m)));

    // The control service restarts: the evacuation goes on from the database.
    drop(store);
    let store = Store::connect(&db.url()).await.expect("reconnect");
    assert_eq!(store.evacuation("aws").await.expect("evacuation").state, "running");

    let mut web_counts = Vec::new();
    for _ in 0..12 {
        pass(&store, &all).await;
        let web = store.app(scope, "web").await.expect("web");
        web_counts.push(web.tasks.iter().filter(|t| t.state == "running").count());
        // A job run that lands on azure finishes there.
        let crunch = store.app(scope, "crunch").await.expect("crunch");
        let done: Vec<Uuid> = crunch
            .tasks
            .iter()
            .filter(|t| t.state == "running" && t.machine.as_deref().is_some_and(|m| !on_aws(m)))
            .map(|t| t.id)
            .collect();
        for &machine in &azure {
            heartbeat(&store, machine, &done).await;
        }
        if store.evacuation("aws").await.expect("evacuation").state == "completed" {
            break;
        }
    }
    let evacuation = store.evacuation("aws").await.expect("evacuation");
    assert_eq!(evacuation.state, "completed", "{evacuation:#?}");
    assert!(evacuation.remaining.is_empty());
    assert_eq!(evacuation.waves_started, 2);
    // web always had an instance running, and ends with two, off aws.
    assert!(web_counts.iter().all(|&n| n >= 1), "{web_counts:?}");
    let web = placements(&store, scope, "web").await;
    assert_eq!(web.len(), 2);
    assert!(web.iter().all(|(m, _)| !on_aws(m)), "{web:?}");
    // The job's run on aws was re-queued (not failed) and completed on azure.
    let crunch = store.app(scope, "crunch").await.expect("crunch");
    assert_eq!(crunch.summary.job_state, "succeeded", "{:?}", crunch.tasks);
    assert!(crunch.tasks.iter().any(|t| t.state == "stopped" && t.message.contains("re-queued")));
    let kinds = event_kinds(&store).await;
    for kind in ["evacuation.started", "machine.draining", "evacuation.requeued", "evacuation.completed"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    // Evacuated, it stays out of use until lifted.
    assert_eq!(store.evacuated_providers().await.expect("evacuated"), vec!["aws".to_string()]);
    let providers = store.providers(&Default::default()).await.expect("providers");
    let row = providers.iter().find(|p| p.name == "aws").expect("aws row");
    assert_eq!((row.state.as_str(), row.tasks), ("evacuated", 0));
    let lifted = store.end_evacuation("admin", "aws").await.expect("lift");
    assert_eq!(lifted.state, "lifted");
    assert!(store.evacuated_providers().await.expect("evacuated").is_empty());
    let machines = store.machines().await.expect("machines");
    assert!(machines.iter().filter(|m| on_aws(&m.name)).all(|m| m.state == "ready"), "hand-joined machines return");
}

#[tokio::test]
async fn an_abort_keeps_finished_moves_undoes_the_rest_and_gives_the_provider_back() {
    let (db, store) = TestDb::create("canopy_evac").await;
    let team = store.create_team("test", "alpha").await.expect("team").id;
    let scope = Scope::Team(team);
    let aws =
        [join(&store, "aws-1", &[("provider", "aws")]).await, join(&store, "aws-2", &[("provider", "aws")]).await];
    store.apply_app("test", team, &service("web", 2, 300)).await.expect("web");
    pass(&store, &aws).await;
    let azure = join(&store, "azure-1", &[("provider", "azure")]).await;
    let missing = store.end_evacuation("admin", "aws").await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))), "nothing to abort: {missing:?}");
    store
        .start_evacuation("admin", "aws", Duration::from_secs(600), &no_catalog(), &Default::default())
        .await
        .expect("start");

    // Wave 1 completes: its instance runs on azure, the original is gone.
    pass(&store, &[aws[0], aws[1], azure]).await;
    pass(&store, &[aws[0], aws[1], azure]).await;
    pass(&store, &[aws[0], aws[1], azure]).await;
    // Wave 2 starts; its successor is placed on azure but never reports.
    store.reconcile_apps().await.expect("reconcile");
    store.place_pending(&no_catalog(), &Default::default()).await.expect("place");
    store.step_evacuations().await.expect("step");
    store.reconcile_apps().await.expect("reconcile");
    store.place_pending(&no_catalog(), &Default::default()).await.expect("place");
    let before = store.app(scope, "web").await.expect("web");
    let moving: Vec<_> = before.tasks.iter().filter(|t| t.desired == "run" && t.state == "assigned").collect();
    assert_eq!(moving.len(), 1, "one successor waits to start: {:?}", before.tasks);
    let successor = moving[0].id;

    let aborted = store.end_evacuation("admin", "aws").await.expect("abort");
    assert_eq!(aborted.state, "aborted");
    let web = store.app(scope, "web").await.expect("web");
    let wanted: Vec<_> = web.tasks.iter().filter(|t| t.desired == "run" && t.state != "stopped").collect();
    assert_eq!(wanted.len(), 2, "one task per instance, none half-moved: {:?}", web.tasks);
    assert!(wanted.iter().any(|t| t.machine.as_deref() == Some("azure-1")), "the finished move stays");
    assert!(wanted.iter().any(|t| t.machine.as_deref().is_some_and(on_aws)), "the unfinished one is undone");
    assert!(web.tasks.iter().any(|t| t.id == successor && t.desired == "stop"));
    assert_eq!(store.reconcile_apps().await.expect("reconcile"), 0, "nothing left to start or stop");
    let machines = store.machines().await.expect("machines");
    assert!(machines.iter().filter(|m| on_aws(&m.name)).all(|m| m.state == "ready"), "{machines:?}");
    assert!(event_kinds(&store).await.iter().any(|k| k == "evacuation.aborted"));

    // The provider takes work again: what fits only on aws goes there.
    store.apply_app("test", team, &service("big", 1, 900)).await.expect("big");
    pass(&store, &[aws[0], aws[1], azure]).await;
    let big = placements(&store, scope, "big").await;
    assert!(big.len() == 1 && on_aws(&big[0].0), "{big:?}");
    // Evacuating it again is refused while big has nowhere else to go, and nothing is stored.
    let refused = store.start_evacuation("admin", "aws", Duration::ZERO, &no_catalog(), &Default::default()).await;
    assert!(
        matches!(&refused, Err(StoreError::Conflict(m)) if m.contains("nowhere else to go") && m.contains("big instance 0")),
        "{refused:?}"
    );
    assert!(store.evacuated_providers().await.expect("evacuated").is_empty());

    // What its policies bind an app to counts too: bound to aws, web has nowhere to go.
    let mut connection = sqlx::PgConnection::connect(&db.url()).await.expect("connect");
    let binding =
        serde_json::json!({"providers": ["aws"], "regions": null, "zones": null, "spot": false, "min_on_demand": 0});
    sqlx::query("UPDATE apps SET policy_binding = $1 WHERE name = 'web'")
        .bind(binding)
        .execute(&mut connection)
        .await
        .expect("bind");
    let plan = store.evacuation_plan("aws", &no_catalog(), &Default::default()).await.expect("plan");
    assert!(plan.unplaced.iter().any(|u| u.app == "web"), "{plan:#?}");
    assert!(plan.moves.iter().all(|m| m.app != "web"), "{plan:#?}");
}
