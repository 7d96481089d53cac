//! An app's `[placement]` table against a real Postgres: the placement step sends its tasks only
//! to machines it allows, and work no machine is allowed for stays pending with the rule named.

mod common;

use common::{TestDb, no_catalog};
use sqlx::Connection;

use canopy_api::auth::Scope;
use canopy_api::store::Store;
use canopy_core::spec::AppSpec;

/// A 300m / 64Mi app whose placement is the inline table `{ placement }` (none when empty).
fn spec(name: &str, instances: u32, placement: &str) -> AppSpec {
    let placement = if placement.is_empty() { String::new() } else { format!("placement = {{ {placement} }}\n") };
    AppSpec::from_toml(&format!(
        "name = \"{name}\"\ncommand = \"sleep\"\nargs = [\"60\"]\ninstances = {instances}\n{placement}\
         [resources]\ncpu = 300\nmemory = \"64Mi\"\n"
    ))
    .expect("spec")
}

/// Joins a hand-added 1-cpu machine through the agent join path, then sets its region and zone
/// (a hand-added machine's join names only its provider, through the `provider` label; bought
/// machines get region and zone from their provisioning record).
async fn join(store: &Store, db: &TestDb, name: &str, labels: &[(&str, &str)], region: &str, zone: &str) {
    let machine = common::join(store, name, labels).await;
    let mut connection = sqlx::PgConnection::connect(&db.url()).await.expect("connect");
    sqlx::query("UPDATE machines SET region = $2, zone = $3 WHERE id = $1")
        .bind(machine)
        .bind(region)
        .bind(zone)
        .execute(&mut connection)
        .await
        .expect("set region");
}

#[tokio::test]
async fn tasks_go_only_where_their_placement_allows_and_otherwise_wait_with_the_rule_named() {
    let (db, store) = TestDb::create("canopy_place").await;
    let team = store.create_team("test", "alpha").await.expect("team").id;
    let scope = Scope::Team(team);
    join(&store, &db, "us-box", &[("provider", "aws")], "us-east-1", "us-east-1a").await;
    join(&store, &db, "eu-box", &[("provider", "openstack"), ("residency", "eu")], "RegionOne", "nova").await;

    // By resources alone, any of these fits on either machine, and all of them fit together.
    let apps = [
        (
            "eu-only",
            2,
            r#"providers = ["openstack"], regions = ["RegionOne"], zones = ["nova"], labels = { residency = "eu" }"#,
        ),
        ("us-only", 1, r#"providers = ["aws"], regions = ["us-east-1"]"#),
        ("on-azure", 1, r#"providers = ["azure"]"#),
        ("in-ireland", 1, r#"regions = ["eu-west-1"]"#),
        ("in-us-zone-b", 1, r#"zones = ["us-east-1b"]"#),
        ("us-resident", 1, r#"labels = { residency = "us" }"#),
        // Stored without a `placement` key, like every version written before the field existed.
        ("anywhere", 1, ""),
    ];
    for (name, instances, placement) in apps {
        store.apply_app("test", team, &spec(name, instances, placement)).await.expect("apply");
    }
    store.reconcile_apps().await.expect("reconcile");

    let outcome = store.place_pending(&no_catalog(), &Default::default()).await.expect("place");
    assert_eq!((outcome.placed, outcome.unplaced, outcome.machines_requested), (4, 4, 0), "{outcome:?}");

    for (app, machine) in [("eu-only", "eu-box"), ("us-only", "us-box")] {
        let detail = store.app(scope, app).await.expect("app");
        assert!(!detail.tasks.is_empty());
        for task in &detail.tasks {
            assert_eq!((task.state.as_str(), task.machine.as_deref()), ("assigned", Some(machine)), "{app}: {task:?}");
        }
    }
    let anywhere = store.app(scope, "anywhere").await.expect("app");
    assert_eq!(anywhere.tasks.len(), 1);
    assert_eq!(anywhere.tasks[0].state, "assigned", "no placement means anywhere: {:?}", anywhere.tasks[0]);

    // Nothing matches: the task waits, and its message says which rule turned each machine away.
    for (app, rule) in [
        ("on-azure", "provider filtered 2"),
        ("in-ireland", "region filtered 2"),
        ("in-us-zone-b", "zone filtered 2"),
        ("us-resident", "label filtered 2"),
    ] {
        let detail = store.app(scope, app).await.expect("app");
        assert_eq!(detail.tasks.len(), 1, "{app}");
        let task = &detail.tasks[0];
        assert_eq!((task.state.as_str(), task.machine.as_deref()), ("pending", None), "{app}: {task:?}");
        assert!(task.message.contains(rule), "{app}: {:?} should contain {rule:?}", task.message);
    }

    // A second pass changes nothing: what was placed stays, what cannot be placed still waits.
    let again = store.place_pending(&no_catalog(), &Default::default()).await.expect("place");
    assert_eq!((again.placed, again.unplaced), (0, 4), "{again:?}");
}
