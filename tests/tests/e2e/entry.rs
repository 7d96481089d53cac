//! Discovery and the entry point: an app's healthy instances are listed, and one stable URL
//! reaches them in turn, wherever they run.

use canopy_e2e::{Stack, hello_spec, running_tasks};
use reqwest::Method;
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test]
async fn an_app_gets_its_endpoints_listed_and_one_url_that_balances_across_them() -> anyhow::Result<()> {
    let stack = Stack::start(2).await?;
    stack.deploy(&hello_spec("web", 2)).await?;
    stack
        .wait("both instances healthy", Duration::from_secs(30), || async {
            let endpoints = stack.developer.get("/v1/apps/web/endpoints").await?;
            Ok(endpoints.as_array().is_some_and(|e| e.len() == 2))
        })
        .await?;
    let app = stack.developer.get("/v1/apps/web").await?;
    let endpoints = stack.developer.get("/v1/apps/web/endpoints").await?;
    let listed: BTreeSet<(String, u64)> = endpoints
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["address"].as_str().unwrap_or_default().to_string(), e["port"].as_u64().unwrap_or_default()))
        .collect();
    let running: BTreeSet<(String, u64)> = running_tasks(&app)
        .iter()
        .map(|t| {
            (t["address"].as_str().unwrap_or_default().to_string(), t["ports"]["http"].as_u64().unwrap_or_default())
        })
        .collect();
    assert_eq!(listed, running, "{endpoints:#}");
    let bad = stack.developer.call(Method::GET, "/v1/apps/web/endpoints?port=grpc", None).await?;
    assert_eq!(bad.status, 422, "{}", bad.body);
    let hidden = stack.developer.call(Method::GET, "/v1/apps/nope/endpoints", None).await?;
    assert_eq!(hidden.status, 404);

    // One URL; successive requests reach both instances.
    let entry = stack.control.entry_url().await.expect("the test stack has an entry point");
    let client = reqwest::Client::new();
    let mut answered_by = BTreeSet::new();
    for _ in 0..6 {
        let response = client.get(format!("{entry}/alpha/web/")).send().await?;
        assert_eq!(response.status(), 200);
        let body = response.text().await?;
        assert!(body.contains("hello from canopy"), "{body}");
        let task = body.split("task ").nth(1).and_then(|t| t.split(',').next()).unwrap_or_default().to_string();
        answered_by.insert(task);
    }
    assert_eq!(answered_by.len(), 2, "both instances answered: {answered_by:?}");
    let missing = client.get(format!("{entry}/alpha/nope/")).send().await?;
    assert_eq!(missing.status(), 503);
    assert!(missing.text().await?.contains("no healthy instance"));
    let no_team = client.get(format!("{entry}/nobody/web/")).send().await?;
    assert_eq!(no_team.status(), 404);
    Ok(())
}
