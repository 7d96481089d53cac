//! The web UI over real HTTP against a real Postgres: signing in and out, CSRF and origin
//! checks on every form, roles (finance changes nothing), team isolation.

#[allow(dead_code)] // the helpers this test does not need
mod common;

use canopy_api::auth::{Role, Scope};
use canopy_api::server::{self, ServeConfig};
use canopy_api::store::Store;
use canopy_core::Resources;
use canopy_core::spec::AppSpec;
use canopy_core::wire::{JoinRequest, PROTOCOL_VERSION};
use common::TestDb;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};

struct Ui {
    url: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Ui {
    async fn start(store: &Store) -> Ui {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(server::run(listener, None, store.clone(), ServeConfig::default(), async move {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Ui { url, http, stop: Some(stop), server: Some(server) }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.url));
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        request.send().await.expect("get")
    }

    /// Posts a form as a browser on our own page would (`Origin` is this service), unless
    /// `origin` says otherwise.
    async fn post(
        &self,
        path: &str,
        cookie: Option<&str>,
        origin: Option<&str>,
        form: &[(&str, &str)],
    ) -> reqwest::Response {
        let body: Vec<String> = form.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        let mut request = self
            .http
            .post(format!("{}{path}", self.url))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body.join("&"));
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        request.send().await.expect("post")
    }

    /// Signs in with `token` and returns the session cookie (`name=value`) and the page's
    /// CSRF token.
    async fn sign_in(&self, token: &str) -> (String, String) {
        let response = self.post("/ui/sign-in", None, Some(&self.url), &[("token", token)]).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let cookie = set_cookie(response.headers()).split(';').next().expect("cookie").to_string();
        let page = self.get("/ui/", Some(&cookie)).await.text().await.expect("page");
        (cookie, csrf(&page))
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn set_cookie(headers: &HeaderMap) -> String {
    headers.get(header::SET_COOKIE).expect("set-cookie").to_str().expect("ascii").to_string()
}

/// The CSRF token in a page's forms.
fn csrf(page: &str) -> String {
    let start = page.find(r#"name="csrf" value=""#).expect("a form with a csrf token") + 19;
    page[start..].split('"').next().expect("value").to_string()
}

fn spec(name: &str) -> AppSpec {
    AppSpec::from_toml(&format!(
        "name = \"{name}\"\ncommand = \"sleep\"\nargs = [\"60\"]\ninstances = 1\n[resources]\ncpu = 100\nmemory = \"16Mi\"\n"
    ))
    .expect("spec")
}

async fn instances(store: &Store, team: uuid::Uuid, name: &str) -> i32 {
    store.app(Scope::Team(team), name).await.expect("app").summary.instances
}

#[tokio::test]
async fn sign_in_sessions_csrf_and_roles() {
    let (_db, store) = TestDb::create("canopy_ui").await;
    let alpha = store.create_team("test", "alpha").await.expect("team").id;
    store.create_team("test", "beta").await.expect("team");
    let developer = store.create_token("test", "dev-alpha", Role::Developer, Some("alpha")).await.expect("token").token;
    let finance = store.create_token("test", "fin-alpha", Role::Finance, Some("alpha")).await.expect("token").token;
    let other = store.create_token("test", "dev-beta", Role::Developer, Some("beta")).await.expect("token").token;
    store.apply_app("test", alpha, &spec("web")).await.expect("deploy");
    let ui = Ui::start(&store).await;

    // Not signed in: every page sends you to the sign-in form.
    let response = ui.get("/ui/", None).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/ui/sign-in");
    let response = ui.get("/ui/sign-in", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[header::CONTENT_SECURITY_POLICY].to_str().expect("csp").contains("default-src 'none'"));

    // A wrong token, a cross-site sign-in, one without any origin: refused, no session.
    let response = ui.post("/ui/sign-in", None, Some(&ui.url), &[("token", "cnp_nope")]).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.text().await.expect("page").contains("token: not valid"));
    for origin in [Some("http://evil.example"), None] {
        let response = ui.post("/ui/sign-in", None, origin, &[("token", &developer)]).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "origin {origin:?}");
        assert!(response.headers().get(header::SET_COOKIE).is_none());
    }
    let response = ui.post("/ui/sign-in", None, Some(&ui.url), &[]).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(response.text().await.expect("page").contains("token: "));
    assert!(!store.events(None, 100).await.expect("events").iter().any(|e| e.kind == "ui.signed_in"));

    // An agent's token is for the agent protocol only.
    let join = store.create_join_token("test", chrono::Duration::hours(1)).await.expect("join token");
    let agent = store
        .join(&JoinRequest {
            protocol: PROTOCOL_VERSION,
            join_token: join,
            name: "m1".into(),
            address: "127.0.0.1".into(),
            agent_endpoint: "127.0.0.1:1".into(),
            capacity: Resources::new(1000, 1 << 30),
            cgroup_version: 1,
            labels: Default::default(),
        })
        .await
        .expect("join")
        .agent_token;
    let response = ui.post("/ui/sign-in", None, Some(&ui.url), &[("token", &agent)]).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // The developer signs in: an HttpOnly, SameSite=Strict cookie, Secure only over TLS.
    let response = ui.post("/ui/sign-in", None, Some(&ui.url), &[("token", &developer)]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = set_cookie(response.headers());
    assert!(cookie.contains("; HttpOnly") && cookie.contains("; SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(!cookie.contains(&developer), "the cookie is a session, not the token");
    let tls = ui
        .http
        .post(format!("{}/ui/sign-in", ui.url))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("x-forwarded-proto", "https")
        .header(header::ORIGIN, ui.url.replace("http://", "https://"))
        .body(format!("token={developer}"))
        .send()
        .await
        .expect("post");
    assert!(set_cookie(tls.headers()).ends_with("; Secure"));

    let (dev_cookie, dev_csrf) = ui.sign_in(&developer).await;
    let page = ui.get("/ui/apps/alpha/web", Some(&dev_cookie)).await.text().await.expect("page");
    assert!(page.contains("dev-alpha (developer, team alpha)") && page.contains("/ui/apps/alpha/web/scale"), "{page}");

    // Scaling from the app page: only with this session's CSRF token, from our own origin.
    let scale = "/ui/apps/alpha/web/scale";
    let response =
        ui.post(scale, Some(&dev_cookie), Some(&ui.url), &[("csrf", "csrf_wrong"), ("instances", "3")]).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.text().await.expect("page").contains("csrf: "));
    let response = ui
        .post(scale, Some(&dev_cookie), Some("http://evil.example"), &[("csrf", &dev_csrf), ("instances", "3")])
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = ui.post(scale, Some(&dev_cookie), None, &[("csrf", &dev_csrf), ("instances", "3")]).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response =
        ui.post(scale, Some(&dev_cookie), Some(&ui.url), &[("csrf", &dev_csrf), ("instances", "three")]).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(response.text().await.expect("page").contains("instances: &quot;three&quot; is not a whole number"));
    assert_eq!(instances(&store, alpha, "web").await, 1, "nothing changed");

    let response = ui.post(scale, Some(&dev_cookie), Some(&ui.url), &[("csrf", &dev_csrf), ("instances", "3")]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/ui/apps/alpha/web");
    assert_eq!(instances(&store, alpha, "web").await, 3);
    let events = store.events(Some(alpha), 10).await.expect("events");
    assert!(events.iter().any(|e| e.kind == "app.scaled" && e.actor == "developer:dev-alpha"), "{events:?}");

    // Finance reads, and is refused every change server-side, even with a valid form.
    let (fin_cookie, fin_csrf) = ui.sign_in(&finance).await;
    let page = ui.get("/ui/apps/alpha/web", Some(&fin_cookie)).await.text().await.expect("page");
    assert!(page.contains("fin-alpha (finance, team alpha)") && !page.contains("/scale"), "{page}");
    for (action, form) in [
        ("scale", vec![("csrf", fin_csrf.as_str()), ("instances", "5")]),
        ("promote", vec![("csrf", fin_csrf.as_str())]),
        ("rollback", vec![("csrf", fin_csrf.as_str()), ("to", "1")]),
    ] {
        let response = ui.post(&format!("/ui/apps/alpha/web/{action}"), Some(&fin_cookie), Some(&ui.url), &form).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "finance {action}");
    }
    assert_eq!(instances(&store, alpha, "web").await, 3, "finance changed nothing");

    // Another team's app does not exist for a beta developer, in pages or forms.
    let (beta_cookie, beta_csrf) = ui.sign_in(&other).await;
    assert_eq!(ui.get("/ui/apps/alpha/web", Some(&beta_cookie)).await.status(), StatusCode::NOT_FOUND);
    let apps = ui.get("/ui/apps", Some(&beta_cookie)).await.text().await.expect("page");
    assert!(!apps.contains("/ui/apps/alpha/web"), "{apps}");
    let dashboard = ui.get("/ui/", Some(&beta_cookie)).await.text().await.expect("page");
    assert!(!dashboard.contains("app.scaled"), "beta sees alpha's events: {dashboard}");
    let response = ui.post(scale, Some(&beta_cookie), Some(&ui.url), &[("csrf", &beta_csrf), ("instances", "0")]).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(instances(&store, alpha, "web").await, 3);

    // Signing out needs the CSRF token; then the cookie opens nothing.
    let response = ui.post("/ui/sign-out", Some(&dev_cookie), Some(&ui.url), &[("csrf", "csrf_wrong")]).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = ui.post("/ui/sign-out", Some(&dev_cookie), Some(&ui.url), &[("csrf", &dev_csrf)]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(set_cookie(response.headers()).contains("Max-Age=0"));
    let response = ui.get("/ui/", Some(&dev_cookie)).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/ui/sign-in");
    let kinds: Vec<String> =
        store.events(Some(alpha), 100).await.expect("events").into_iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&"ui.signed_in".to_string()) && kinds.contains(&"ui.signed_out".to_string()), "{kinds:?}");

    ui.stop().await;
}

#[tokio::test]
async fn the_cost_page_filters_scopes_and_links_the_report_apis_csv() {
    let (_db, store) = TestDb::create("canopy_ui").await;
    store.create_team("test", "alpha").await.expect("team");
    store.create_team("test", "beta").await.expect("team");
    let finance = store.create_token("test", "fin-alpha", Role::Finance, Some("alpha")).await.expect("token").token;
    let ui = Ui::start(&store).await;

    // Finance lands on the cost page.
    let response = ui.post("/ui/sign-in", None, Some(&ui.url), &[("token", &finance)]).await;
    assert_eq!(response.headers()[header::LOCATION], "/ui/costs");
    let (cookie, _) = ui.sign_in(&finance).await;
    let page = ui.get("/ui/costs?month=2026-10&team=alpha&provider=aws", Some(&cookie)).await;
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.expect("page");
    assert!(page.contains("Cost and utilization, 2026-10") && page.contains(r#"id="total-cost">$0.00<"#), "{page}");
    let link = "/ui/reports/cost?by=team,provider&month=2026-10&team=alpha&provider=aws&format=csv";
    assert!(page.contains(&link.replace('&', "&amp;")), "{page}");

    // The CSV link answers with the report API's CSV for the session; without one, nothing.
    let csv = ui.get(link, Some(&cookie)).await;
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(csv.headers()[header::CONTENT_TYPE].to_str().expect("type").starts_with("text/csv"));
    assert!(csv.text().await.expect("csv").starts_with("team,provider,"));
    assert_eq!(ui.get(link, None).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(ui.get("/ui/reports/nonsense?format=csv", Some(&cookie)).await.status(), StatusCode::NOT_FOUND);

    // Bad filters name the parameter; another team is not found; nothing else is shown.
    let response = ui.get("/ui/costs?month=2026-13", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.text().await.expect("page").contains("month: "));
    let response = ui.get("/ui/costs?colour=red", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.text().await.expect("page").contains("colour"));
    assert_eq!(ui.get("/ui/costs?team=beta", Some(&cookie)).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(ui.get("/ui/reports/cost?team=beta&format=csv", Some(&cookie)).await.status(), StatusCode::NOT_FOUND);

    ui.stop().await;
}
