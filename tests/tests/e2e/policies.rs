//! Portability policies as a user meets them through the CLI: an admin applies a residency
//! policy, a developer's dry run shows the refusal and changes nothing, the deploy is refused
//! with the policy, the rule and the places named, and an app within the policy is accepted,
//! runs, and is explained.

use canopy_e2e::{Stack, hello_spec};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

/// Runs `canopy ARGS` with `token` against the stack; returns (success, stdout, stderr).
async fn canopy(stack: &Stack, token: &str, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let output = tokio::process::Command::new(&stack.binaries.canopy)
        .args(args)
        .env("CANOPY_API_URL", &stack.control.url)
        .env("CANOPY_TOKEN", token)
        .env("CANOPY_CONFIG", stack.dir.join("no-config.toml"))
        .env_remove("CANOPY_TEAM")
        .output()
        .await?;
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    Ok((output.status.success(), text(output.stdout), text(output.stderr)))
}

async fn token(stack: &Stack, name: &str, role: &str) -> anyhow::Result<String> {
    let body = json!({"name": name, "role": role, "team": if role == "admin" { Value::Null } else { json!("alpha") }});
    let token = stack.admin.call(Method::POST, "/v1/tokens", Some(body)).await?.ok()?;
    Ok(token["token"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn a_deploy_outside_the_residency_policy_is_refused_by_name_and_the_dry_run_shows_why() -> anyhow::Result<()> {
    // One local machine: a bare-metal one, free (no price).
    let stack = Stack::start(1).await?;
    let admin = token(&stack, "ops", "admin").await?;
    let developer = token(&stack, "dev", "developer").await?;

    let policy = stack.dir.join("policy.toml");
    std::fs::write(&policy, "name = \"on-prem\"\nscope = \"org\"\n[residency]\nallowed_providers = [\"baremetal\"]\n")?;
    let (ok, out, err) = canopy(&stack, &admin, &["policy", "apply", policy.to_str().unwrap_or_default()]).await?;
    assert!(ok, "{err}");
    assert_eq!(out, "policy on-prem version 1 applied\n");
    let (ok, out, _) = canopy(&stack, &developer, &["policy", "list"]).await?;
    assert!(ok && out.contains("on-prem") && out.contains("residency"), "{out}");

    // Pinned to aws: the dry run says it would be refused, and why; nothing is stored.
    let cloud = stack.dir.join("cloud.toml");
    std::fs::write(&cloud, format!("{}\n[placement]\nproviders = [\"aws\"]\n", hello_spec("cloud", 1)))?;
    let (ok, out, err) =
        canopy(&stack, &developer, &["deploy", "--dry-run", cloud.to_str().unwrap_or_default()]).await?;
    assert!(ok, "{err}");
    assert!(out.contains("cloud (team alpha) would be REFUSED; nothing was stored"), "{out}");
    assert!(
        out.contains("policy on-prem (residency): the workload asks for providers aws; the policy allows baremetal"),
        "{out}"
    );
    let reply = stack.developer.call(Method::GET, "/v1/apps/cloud", None).await?;
    assert_eq!(reply.status, reqwest::StatusCode::NOT_FOUND);

    // The deploy itself is refused with the same words.
    let (ok, _, err) = canopy(&stack, &developer, &["deploy", cloud.to_str().unwrap_or_default()]).await?;
    assert!(!ok);
    assert!(
        err.contains("policy on-prem (residency): the workload asks for providers aws; the policy allows baremetal"),
        "{err}"
    );

    // Within the policy: the dry run shows the machine it would use and what it costs, as JSON
    // too; the deploy runs it there and explain says why.
    let local = stack.dir.join("local.toml");
    std::fs::write(&local, hello_spec("local", 1))?;
    let path = local.to_str().unwrap_or_default();
    let (ok, out, err) = canopy(&stack, &developer, &["deploy", "--dry-run", "--output", "json", path]).await?;
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out)?;
    assert_eq!(report["accepted"], true);
    assert_eq!(report["placement"][0]["machine"], "m1", "{report}");
    assert_eq!(report["placement"][0]["provider"], "baremetal");
    assert_eq!(report["hourly_cost"], "0.00");
    assert_eq!(report["providers"], json!([{"provider": "baremetal", "cost": "0.00", "unplaced": null}]));
    let (ok, _, err) = canopy(&stack, &developer, &["deploy", "--timeout", "60", path]).await?;
    assert!(ok, "{err}");
    let (ok, out, err) = canopy(&stack, &developer, &["explain", "local"]).await?;
    assert!(ok, "{err}");
    assert!(out.contains("the policies allow only providers baremetal"), "{out}");
    assert!(out.contains("it runs on baremetal"), "{out}");
    stack
        .wait("the app listed as portable", Duration::from_secs(5), || async {
            let app = stack.developer.get("/v1/apps/local").await?;
            Ok(app["portability"] == "")
        })
        .await?;
    Ok(())
}
