//! The controllers' single steps against a real Postgres: each test gets its own database.

mod common;

use common::{TestDb, join, no_catalog};
use sqlx::Connection;

use canopy_api::store::Store;
use canopy_core::spec::AppSpec;
use canopy_core::wire::{ExitStatus, HeartbeatRequest, PROTOCOL_VERSION, RunState, TaskReport, Usage};
use std::collections::BTreeMap;
use std::time::Duration;

fn spec(instances: u32) -> AppSpec {
    named_spec("web", instances)
}

fn named_spec(name: &str, instances: u32) -> AppSpec {
    AppSpec::from_toml(&format!(
        "name = \"{name}\"\ncommand = \"sleep\"\nargs = [\"60\"]\ninstances = {instances}\n[resources]\ncpu = 300\nmemory = \"64Mi\"\n"
    ))
    .expect("spec")
}

#[tokio::test]
async fn app_and_placement_steps_are_idempotent_and_never_overcommit() {
    let (_db, store) = TestDb::create("canopy_ctl").await;
    let team = store.create_team("test", "alpha").await.expect("team").id;
    store.apply_app("test", team, &spec(4)).await.expect("apply");

    assert_eq!(store.reconcile_apps().await.expect("reconcile"), 4, "one task per instance");
    assert_eq!(store.reconcile_apps().await.expect("reconcile"), 0, "a second pass changes nothing");

    // No machine: nothing placed, and the reason is recorded.
    let outcome = store.place_pending(&no_catalog(), &Default::default()).await.expect("place");
    assert_eq!((outcome.placed, outcome.unplaced), (0, 4));
    let app = store.app(canopy_api::auth::Scope::Team(team), "web").await.expect("app");
    assert!(app.tasks.iter().all(|t| t.message.contains("no machine is ready")), "{:?}", app.tasks);

    // One 1-cpu machine fits three 300m tasks, not four.
    join(&store, "m1", &[]).await;
    let outcome = store.place_pending(&no_catalog(), &Default::default()).await.expect("place");
    assert_eq!((outcome.placed, outcome.unplaced), (3, 1));
    assert_eq!(
        store.place_pending(&no_catalog(), &Default::default()).await.expect("place").placed,
        0,
        "nothing more fits"
    );
    let machines = store.machines().await.expect("machines");
    assert_eq!(machines[0].allocated_milli_cpu, 900);
}

#[tokio::test]
async fn a_silent_machine_is_lost_and_a_late_report_does_not_revive_its_tasks() {
    let (_db, store) = TestDb::create("canopy_ctl").await;
    let team = store.create_team("test", "alpha").await.expect("team").id;
    store.apply_app("test", team, &spec(1)).await.expect("apply");
    store.reconcile_apps().await.expect("reconcile");
    let machine = join(&store, "m1", &[]).await;
    store.place_pending(&no_catalog(), &Default::default()).await.expect("place");
    let heartbeat = |tasks: Vec<TaskReport>| HeartbeatRequest {
        protocol: PROTOCOL_VERSION,
        agent_endpoint: "127.0.0.1:1".into(),
        tasks,
    };
    let desired = store.heartbeat(machine, &heartbeat(vec![]), 1000).await.expect("heartbeat").desired;
    assert_eq!(desired.len(), 1);
    let task = desired[0].task_id;
    let report = TaskReport {
        task_id: task,
        state: RunState::Running,
        pid: Some(42),
        ports: BTreeMap::new(),
        healthy: None,
        restarts: 0,
        last_exit: None,
        usage: Usage::default(),
        progress: None,
    };
    store.heartbeat(machine, &heartbeat(vec![report.clone()]), 1000).await.expect("heartbeat");

    assert!(store.mark_lost_machines(Duration::from_secs(60)).await.expect("liveness").is_empty(), "fresh heartbeat");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(store.mark_lost_machines(Duration::from_secs(1)).await.expect("liveness"), vec!["m1".to_string()]);
    assert_eq!(store.reconcile_apps().await.expect("reconcile"), 1, "a replacement for the lost task");

    // The machine comes back and still reports the old task as running: it stays lost, and
    // the machine is told to run only the replacement (placed on it again, as it is the only one).
    let desired = store.heartbeat(machine, &heartbeat(vec![report]), 1000).await.expect("heartbeat").desired;
    assert!(desired.iter().all(|d| d.task_id != task), "the lost task is not desired");
    let app = store.app(canopy_api::auth::Scope::Team(team), "web").await.expect("app");
    let old = app.tasks.iter().find(|t| t.id == task).expect("old task");
    assert_eq!(old.state, "lost");

    // A final report for the replacement is recorded with its exit status.
    store.place_pending(&no_catalog(), &Default::default()).await.expect("place");
    let desired = store.heartbeat(machine, &heartbeat(vec![]), 1000).await.expect("heartbeat").desired;
    let replacement = desired.iter().find(|d| d.task_id != task).expect("replacement").task_id;
    let exit = ExitStatus { code: Some(3), signal: None, oom_killed: false, message: "exited with status 3".into() };
    let failed = TaskReport {
        task_id: replacement,
        state: RunState::Failed,
        pid: None,
        ports: BTreeMap::new(),
        healthy: None,
        restarts: 2,
        last_exit: Some(exit),
        usage: Usage::default(),
        progress: None,
    };
    store.heartbeat(machine, &heartbeat(vec![failed]), 1000).await.expect("heartbeat");
    let app = store.app(canopy_api::auth::Scope::Team(team), "web").await.expect("app");
    let row = app.tasks.iter().find(|t| t.id == replacement).expect("replacement row");
    assert_eq!((row.state.as_str(), row.exit_code, row.restarts), ("failed", Some(3), 2));
}

/// Heartbeats `machine` reporting every task it should run as running and healthy.
async fn run_desired(store: &Store, machine: uuid::Uuid) -> Vec<uuid::Uuid> {
    let request = |tasks| HeartbeatRequest { protocol: PROTOCOL_VERSION, agent_endpoint: "127.0.0.1:1".into(), tasks };
    let desired = store.heartbeat(machine, &request(vec![]), 1000).await.expect("heartbeat").desired;
    let reports: Vec<TaskReport> = desired
        .iter()
        .map(|d| TaskReport {
            task_id: d.task_id,
            state: RunState::Running,
            pid: Some(1),
            ports: BTreeMap::new(),
            healthy: Some(true),
            restarts: 0,
            last_exit: None,
            usage: Usage::default(),
            progress: None,
        })
        .collect();
    store.heartbeat(machine, &request(reports), 1000).await.expect("heartbeat");
    desired.iter().map(|d| d.task_id).collect()
}

#[tokio::test]
async fn consolidation_drains_a_machine_and_moves_its_task_before_stopping_it() {
    let (db, store) = TestDb::create("canopy_ctl").await;
    let team = store.create_team("test", "alpha").await.expect("team").id;
    let (m1, m2) = (join(&store, "m1", &[]).await, join(&store, "m2", &[]).await);
    // Make them bought machines with a price, as the provisioning controller would have.
    let url = db.url();
    let mut connection = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query("UPDATE machines SET provisioned = true, price_micros = 10000, provider = 'aws', region = 'us-east-1', offering = 't3a.nano'")
        .execute(&mut connection)
        .await
        .expect("update");

    store.apply_app("test", team, &spec(2)).await.expect("apply");
    store.reconcile_apps().await.expect("reconcile");
    assert_eq!(store.place_pending(&no_catalog(), &Default::default()).await.expect("place").placed, 2);
    run_desired(&store, m1).await;
    run_desired(&store, m2).await;
    // Arrange: app `other` runs next to web's instance 1, so that once web scales down to one
    // instance each machine holds one task and consolidation has a task to move.
    let scope = canopy_api::auth::Scope::Team(team);
    let web = store.app(scope, "web").await.expect("app");
    let beside = web.tasks.iter().find(|t| t.instance == 1).and_then(|t| t.machine.clone()).expect("instance 1");
    store.apply_app("test", team, &named_spec("other", 1)).await.expect("apply");
    store.reconcile_apps().await.expect("reconcile");
    sqlx::query("UPDATE tasks SET state = 'assigned', machine_id = (SELECT id FROM machines WHERE name = $1) WHERE state = 'pending'")
        .bind(&beside)
        .execute(&mut connection)
        .await
        .expect("assign");
    run_desired(&store, m1).await;
    run_desired(&store, m2).await;
    store.scale_app("test", scope, "web", 1).await.expect("scale");
    store.reconcile_apps().await.expect("reconcile");
    run_desired(&store, m1).await;
    run_desired(&store, m2).await;

    let snapshot = store.consolidation_snapshot().await.expect("snapshot").expect("no machine is being bought");
    let plan = canopy_core::schedule::consolidate(&snapshot, &Default::default(), 1);
    assert_eq!(plan.drains.len(), 1, "{plan:?}");
    assert_eq!(store.drain_machines(&[plan.drains[0].machine]).await.expect("drain"), 1);
    let (drained, kept) = if plan.drains[0].machine == m1 { (m1, m2) } else { (m2, m1) };

    // Its task gets a successor on the kept machine, and stops only once that runs.
    store.reconcile_apps().await.expect("reconcile");
    store.place_pending(&no_catalog(), &Default::default()).await.expect("place");
    let on_drained = run_desired(&store, drained).await;
    run_desired(&store, kept).await;
    store.reconcile_apps().await.expect("reconcile");
    let still_desired = run_desired(&store, drained).await;
    assert!(still_desired.is_empty(), "the drained machine runs nothing once the successor is healthy");
    assert_eq!(on_drained.len(), 1, "the drained machine had one task to move");
    let kept_name = if kept == m1 { "m1" } else { "m2" };
    let mut running = 0;
    for name in ["web", "other"] {
        let app = store.app(scope, name).await.expect("app");
        for task in app.tasks.iter().filter(|t| t.state == "running") {
            assert_eq!(task.machine.as_deref(), Some(kept_name), "{name}: {task:?}");
            running += 1;
        }
        if let Some(old) = app.tasks.iter().find(|t| on_drained.contains(&t.id)) {
            assert_eq!(old.state, "stopped", "the moved task stopped once its successor ran");
        }
    }
    assert_eq!(running, 2, "both apps still run, now on one machine");
    let to_terminate = store.to_terminate().await.expect("to terminate");
    assert_eq!(to_terminate.iter().map(|m| m.id).collect::<Vec<_>>(), vec![drained]);
}
