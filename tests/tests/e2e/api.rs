//! The API refuses bad input with a 4xx naming the problem, and enforces roles and teams.

use canopy_e2e::{Api, Stack, hello_spec};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn bad_specs_are_refused_with_the_field_named_and_nothing_stored() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let valid: serde_json::Value = serde_json::to_value(canopy_core::spec::AppSpec::from_toml(&hello_spec("web", 1))?)?;
    let cases = [
        ("unknown field", json!({"colour": "red"}), "colour"),
        ("wrong type", json!({"instances": "two"}), "instances"),
        ("invalid value", json!({"resources": {"cpu": 0, "memory": "64Mi"}}), "resources.cpu"),
        ("bad memory unit", json!({"resources": {"cpu": 100, "memory": "64Qi"}}), "resources.memory"),
        ("bad name", json!({"name": "Web App"}), "name"),
    ];
    for (what, patch, field) in cases {
        let mut body = valid.clone();
        for (key, value) in patch.as_object().expect("object") {
            body[key] = value.clone();
        }
        let path = format!("/v1/apps/{}", body["name"].as_str().unwrap_or("web"));
        let reply = stack.developer.call(Method::PUT, &path, Some(body)).await?;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {reply:?}");
        assert!(reply.message().contains(field), "{what}: message {:?} should name {field}", reply.message());
    }
    let malformed =
        stack.developer.raw(Method::PUT, "/v1/apps/web", "application/json", b"{\"name\": ".to_vec()).await?;
    assert_eq!(malformed.status, StatusCode::UNPROCESSABLE_ENTITY, "{malformed:?}");
    let oversized = vec![b' '; 300 * 1024];
    let reply = stack.developer.raw(Method::PUT, "/v1/apps/web", "application/json", oversized).await?;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{reply:?}");
    let reply = stack.developer.call(Method::POST, "/v1/apps/web/scale", Some(json!({"instances": -1}))).await?;
    assert!(reply.status.is_client_error(), "{reply:?}");

    // Nothing was stored by any of the refused requests.
    assert_eq!(stack.developer.get("/v1/apps").await?, json!([]));
    let events = stack.admin.get("/v1/events").await?;
    assert!(events.as_array().expect("events").iter().all(|e| e["kind"] != "app.deployed"));
    Ok(())
}

#[tokio::test]
async fn tokens_roles_and_teams_are_enforced() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    stack.deploy(&hello_spec("alpha-web", 0)).await?;

    // No token, or a wrong one: 401 on every route.
    for path in ["/v1/apps", "/v1/machines", "/v1/apps/alpha-web", "/v1/events"] {
        let reply = Api::anonymous(&stack.control.url).call(Method::GET, path, None).await?;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
        let reply = Api::new(&stack.control.url, "cnp_forged").call(Method::GET, path, None).await?;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
    }

    // Finance reads its team's apps but cannot change anything.
    let finance = stack
        .admin
        .call(Method::POST, "/v1/tokens", Some(json!({"name": "fin", "role": "finance", "team": "alpha"})))
        .await?
        .ok()?;
    let finance = Api::new(&stack.control.url, finance["token"].as_str().expect("token"));
    assert_eq!(finance.get("/v1/apps/alpha-web").await?["name"], "alpha-web");
    let spec = serde_json::to_value(canopy_core::spec::AppSpec::from_toml(&hello_spec("alpha-web", 1))?)?;
    let reply = finance.call(Method::PUT, "/v1/apps/alpha-web", Some(spec)).await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.message().contains("finance"), "{reply:?}");
    assert_eq!(finance.call(Method::DELETE, "/v1/apps/alpha-web", None).await?.status, StatusCode::FORBIDDEN);
    assert_eq!(
        finance.call(Method::POST, "/v1/apps/alpha-web/scale", Some(json!({"instances": 3}))).await?.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(stack.developer.get("/v1/apps/alpha-web").await?["instances"], 0, "finance changed nothing");

    // Developers cannot administer.
    let reply = stack.developer.call(Method::POST, "/v1/teams", Some(json!({"name": "mine"}))).await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    // Team beta cannot see or touch team alpha's app: it does not exist for them.
    stack.admin.call(Method::POST, "/v1/teams", Some(json!({"name": "beta"}))).await?.ok()?;
    let beta = stack
        .admin
        .call(Method::POST, "/v1/tokens", Some(json!({"name": "dev-beta", "role": "developer", "team": "beta"})))
        .await?
        .ok()?;
    let beta = Api::new(&stack.control.url, beta["token"].as_str().expect("token"));
    assert_eq!(beta.call(Method::GET, "/v1/apps/alpha-web", None).await?.status, StatusCode::NOT_FOUND);
    assert_eq!(beta.call(Method::DELETE, "/v1/apps/alpha-web", None).await?.status, StatusCode::NOT_FOUND);
    assert_eq!(beta.get("/v1/apps").await?, json!([]));
    // Beta may use the same app name in its own team.
    let spec = serde_json::to_value(canopy_core::spec::AppSpec::from_toml(&hello_spec("alpha-web", 0))?)?;
    assert_eq!(beta.call(Method::PUT, "/v1/apps/alpha-web", Some(spec)).await?.status, StatusCode::CREATED);

    // Join tokens are single use.
    let join = stack.admin.call(Method::POST, "/v1/join-tokens", Some(json!({}))).await?.ok()?;
    let request = |name: &str| {
        json!({"protocol": canopy_core::wire::PROTOCOL_VERSION, "join_token": join["token"], "name": name, "address": "127.0.0.1",
               "agent_endpoint": "127.0.0.1:1", "capacity": {"milli_cpu": 1000, "memory_bytes": 1073741824}, "cgroup_version": 1})
    };
    let anonymous = Api::anonymous(&stack.control.url);
    assert_eq!(anonymous.call(Method::POST, "/v1/agent/join", Some(request("j1"))).await?.status, StatusCode::CREATED);
    assert_eq!(
        anonymous.call(Method::POST, "/v1/agent/join", Some(request("j2"))).await?.status,
        StatusCode::UNAUTHORIZED
    );
    Ok(())
}

#[tokio::test]
async fn openapi_document_lists_every_route() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let document = Api::anonymous(&stack.control.url).get("/openapi.json").await?;
    let paths = document["paths"].as_object().expect("paths");
    for path in [
        "/v1/apps",
        "/v1/apps/{name}",
        "/v1/apps/{name}/scale",
        "/v1/apps/{name}/rollback",
        "/v1/apps/{name}/promote",
        "/v1/apps/{name}/endpoints",
        "/v1/apps/{name}/logs",
        "/v1/apps/{name}/dry-run",
        "/v1/apps/{name}/explain",
        "/v1/policies",
        "/v1/policies/{name}",
        "/v1/policies/{name}/versions",
        "/v1/policies/test",
        "/v1/machines",
        "/v1/hosts",
        "/v1/hosts/{name}",
        "/v1/hosts/{name}/restore",
        "/v1/teams",
        "/v1/tokens",
        "/v1/join-tokens",
        "/v1/events",
        "/v1/agent/join",
        "/v1/agent/heartbeat",
        "/v1/reports/cost",
        "/v1/reports/utilization",
        "/v1/reports/savings",
        "/v1/reports/budgets",
        "/v1/cost-policy",
        "/v1/artifacts/{sha256}",
        "/v1/agent/artifacts/{sha256}",
        "/healthz",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    Ok(())
}
