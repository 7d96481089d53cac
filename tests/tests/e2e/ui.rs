//! The web UI in a real browser: headless Chromium (Debian's) loads the cost page of a control
//! service on a seeded database, signed in as finance over HTTP; the totals it shows are the
//! seeded ones, and a screenshot is saved as a test artifact.

use anyhow::{Context, Result, bail};
use canopy_e2e::browser::Browser;
use canopy_e2e::{Stack, hello_spec};
use reqwest::Method;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// Signs in through the sign-in form's POST, as a browser on the page would, and returns the
/// session cookie (`name=value`).
async fn sign_in(url: &str, token: &str) -> Result<String> {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let response = client
        .post(format!("{url}/ui/sign-in"))
        .header(reqwest::header::ORIGIN, url)
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await?;
    if response.status() != reqwest::StatusCode::SEE_OTHER {
        bail!("sign-in answered {}", response.status());
    }
    let cookie = response.headers().get(reqwest::header::SET_COOKIE).context("no session cookie")?.to_str()?;
    Ok(cookie.split(';').next().context("empty cookie")?.to_string())
}

/// Where test artifacts go: `<target dir>/test-artifacts/`.
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artifacts")
}

/// `$1,234.57` as cents.
fn cents(text: &str) -> Result<i64> {
    let digits: String = text.chars().filter(|c| c.is_ascii_digit()).collect();
    let value: i64 = digits.parse().with_context(|| format!("{text:?} is not an amount"))?;
    Ok(if text.starts_with('-') { -value } else { value })
}

/// The amount shown in the element with `id`.
fn figure(dom: &str, id: &str) -> Result<i64> {
    let start = dom.find(&format!("id=\"{id}\">")).with_context(|| format!("no #{id} in the page"))? + id.len() + 6;
    cents(dom[start..].split('<').next().unwrap_or(""))
}

fn micros_to_cents(micros: i64) -> i64 {
    (micros + 5_000).div_euclid(10_000)
}

/// What the seeded history holds for the page to show.
struct Seeded {
    /// The month with the most cost, `YYYY-MM`.
    month: String,
    /// What the report API says team `payments` was charged that month.
    team_micros: i64,
}

/// Fills the stack's database with past metering (`canopy seed-history`: teams, apps and
/// machines on four providers over past weeks) and reads what the report API makes of it.
async fn seed(stack: &Stack) -> Result<Seeded> {
    let status = tokio::process::Command::new(&stack.binaries.canopy)
        .args(["seed-history", "--days", "40", "--machines", "12", "--seed", "7"])
        .env("DATABASE_URL", &stack.database.url)
        .stdout(std::process::Stdio::null())
        .status()
        .await?;
    if !status.success() {
        bail!("canopy seed-history failed: {status}");
    }
    let from = chrono::Utc::now().date_naive() - chrono::Days::new(60);
    let months = stack.admin.get(&format!("/v1/reports/cost?by=month&from={from}")).await?;
    let busiest = months["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .max_by_key(|row| row["total_micros"].as_i64().unwrap_or(0))
        .context("the seeded history has no cost")?;
    let month = busiest["month"].as_str().context("month")?.to_string();
    let teams = stack.admin.get(&format!("/v1/reports/cost?by=team&month={month}&team=payments")).await?;
    let team_micros = teams["rows"].as_array().into_iter().flatten().filter_map(|r| r["total_micros"].as_i64()).sum();
    if team_micros <= 0 {
        bail!("team payments has no cost in {month}: {teams}");
    }
    Ok(Seeded { month, team_micros })
}

#[tokio::test]
async fn the_finance_page_in_a_real_browser_shows_the_seeded_totals() -> Result<()> {
    let stack = Stack::start(0).await?;
    let seeded = seed(&stack).await?;
    let finance = stack
        .admin
        .call(Method::POST, "/v1/tokens", Some(json!({"name": "fin-payments", "role": "finance", "team": "payments"})))
        .await?
        .ok()?;
    let token = finance["token"].as_str().context("finance token")?;
    let cookie = sign_in(&stack.control.url, token).await?;

    let upstream = stack.control.url.trim_start_matches("http://").to_string();
    let browser = Browser::start(&upstream, &cookie, &stack.dir.join("chromium")).await?;
    let page = format!("{}/ui/costs?month={}", stack.control.url, seeded.month);
    let dom = browser.dump_dom(&page).await?;
    assert!(dom.contains("fin-payments (finance, team payments)"), "not signed in: {dom}");
    assert!(!dom.contains("/ui/apps\""), "finance sees workload pages: {dom}");

    // A finance token sees its team: what the seed charged it, and no idle cost.
    assert_eq!(figure(&dom, "total-cost")?, micros_to_cents(seeded.team_micros), "total");
    assert_eq!(figure(&dom, "allocated-cost")?, micros_to_cents(seeded.team_micros), "allocated");
    assert_eq!(figure(&dom, "idle-cost")?, 0, "idle");
    assert!(dom.contains("<svg") && dom.contains("Cost by team"), "no chart: {dom}");

    let screenshot = artifacts().join("finance.png");
    browser.screenshot(&page, &screenshot, (1280, 3200)).await?;
    let png = std::fs::read(&screenshot)?;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "{} is no screenshot", screenshot.display());
    Ok(())
}

#[tokio::test]
async fn a_developer_sees_the_pool_the_app_and_its_log_in_a_real_browser() -> Result<()> {
    let stack = Stack::start(1).await?;
    stack.deploy(&hello_spec("hello", 1)).await?;
    stack.wait_running("hello", 1, Duration::from_secs(30)).await?;
    let token = stack
        .admin
        .call(Method::POST, "/v1/tokens", Some(json!({"name": "dev-ui", "role": "developer", "team": "alpha"})))
        .await?
        .ok()?;
    let cookie = sign_in(&stack.control.url, token["token"].as_str().context("token")?).await?;
    let upstream = stack.control.url.trim_start_matches("http://").to_string();
    let browser = Browser::start(&upstream, &cookie, &stack.dir.join("chromium")).await?;

    // The dashboard: the machine in the pool, the deploy among the recent events.
    let dom = browser.dump_dom(&format!("{}/ui/", stack.control.url)).await?;
    assert!(dom.contains("<td>baremetal</td>") && dom.contains("app.deployed"), "{dom}");

    // The app page: its running instance on m1, and the tail of its log, read from the agent.
    let dom = browser.dump_dom(&format!("{}/ui/apps/alpha/hello", stack.control.url)).await?;
    assert!(dom.contains("App hello") && dom.contains("<td>running</td>") && dom.contains("<td>m1</td>"), "{dom}");
    assert!(dom.contains("listening on http://"), "no log tail: {dom}");
    assert!(dom.contains("/ui/apps/alpha/hello/scale"), "a developer gets the scale form: {dom}");

    let dom = browser.dump_dom(&format!("{}/ui/machines", stack.control.url)).await?;
    assert!(dom.contains("<td>m1</td>") && dom.contains("<td>ready</td>"), "{dom}");
    Ok(())
}
