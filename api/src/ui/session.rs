//! Signing in and out, and who a page request comes from.
//!
//! Signing in exchanges an API token for a session: a random secret in an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` when the request came over TLS, as a proxy in front
//! says with `X-Forwarded-Proto: https`), stored in Postgres as a digest. Every form that
//! changes something carries the session's CSRF token, and every POST must come from a page
//! of this origin (its `Origin`, or failing that its `Referer`): a cross-site form is refused
//! before anything else is looked at.

use super::{UiError, render};
use crate::auth::{Caller, Role};
use crate::http::AppState;
use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

/// The session cookie's name.
pub const COOKIE: &str = "canopy_session";

/// How long a session lasts after signing in.
const SESSION_TTL_HOURS: i64 = 12;

/// A signed-in person, as a page handler sees them.
pub struct Session {
    pub caller: Caller,
    pub team: Option<String>,
    pub csrf: String,
}

impl Session {
    /// Admins and developers change things; finance only reads.
    pub fn can_write(&self) -> bool {
        matches!(self.caller.role, Role::Admin | Role::Developer)
    }

    /// The context every page starts from: who is signed in, the navigation for their role,
    /// and the CSRF token for their forms.
    pub fn context(&self, current: &str) -> tera::Context {
        let mut context = tera::Context::new();
        context.insert(
            "user",
            &serde_json::json!({
                "name": self.caller.name,
                "role": self.caller.role.as_str(),
                "team": self.team,
            }),
        );
        context.insert("nav", &navigation(self.caller.role, current));
        context.insert("csrf", &self.csrf);
        context.insert("can_write", &self.can_write());
        context
    }

    /// Checks a state-changing form: the caller's role may change things, the request comes
    /// from our own pages, and it carries this session's CSRF token.
    pub fn check_form(&self, headers: &HeaderMap, csrf: &str, action: &str) -> Result<(), UiError> {
        same_origin(headers)?;
        if !constant_time_eq(csrf.as_bytes(), self.csrf.as_bytes()) {
            return Err(UiError::new(StatusCode::FORBIDDEN, "csrf: the form is stale or not ours; reload the page"));
        }
        self.caller.require(&[Role::Admin, Role::Developer], action)?;
        Ok(())
    }
}

#[derive(serde::Serialize)]
struct NavItem {
    href: &'static str,
    label: &'static str,
    current: bool,
}

/// The pages a role works with, most used first: finance starts from costs and sees no
/// workload pages; the others start from the pool.
fn navigation(role: Role, current: &str) -> Vec<NavItem> {
    let items: &[(&str, &str)] = match role {
        Role::Finance => &[("/ui/costs", "Costs"), ("/ui/", "Dashboard"), ("/ui/machines", "Machines")],
        _ => &[
            ("/ui/", "Dashboard"),
            ("/ui/apps", "Apps"),
            ("/ui/jobs", "Jobs"),
            ("/ui/machines", "Machines"),
            ("/ui/costs", "Costs"),
        ],
    };
    items.iter().map(|&(href, label)| NavItem { href, label, current: href == current }).collect()
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(secret) = cookie(&parts.headers, COOKIE) else {
            return Err(Redirect::to("/ui/sign-in").into_response());
        };
        match state.store.session(secret).await {
            Ok(Some(row)) => Ok(Session { caller: row.caller, team: row.team, csrf: row.csrf }),
            // Expired, signed out, or its token revoked: sign in again.
            Ok(None) => Err((clear_cookie(), Redirect::to("/ui/sign-in")).into_response()),
            Err(error) => Err(UiError::from(error).into_response()),
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Whether the request reached the proxy in front of us over TLS.
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// Refuses a request that does not come from a page of this origin. Browsers send `Origin`
/// with every POST; `Referer` is the fallback some privacy settings leave. A request with
/// neither is refused too: forms are only ever posted by browsers showing our pages.
fn same_origin(headers: &HeaderMap) -> Result<(), UiError> {
    let refuse = |why: String| UiError::new(StatusCode::FORBIDDEN, format!("origin: {why}"));
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| refuse("the request has no Host header".into()))?;
    let scheme = if over_tls(headers) { "https" } else { "http" };
    let ours = format!("{scheme}://{host}");
    let header_text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    match (header_text(header::ORIGIN), header_text(header::REFERER)) {
        (Some(origin), _) if origin == ours => Ok(()),
        (Some(origin), _) => Err(refuse(format!("a form from {origin} may not post to {ours}"))),
        (None, Some(referer)) if referer.strip_prefix(&ours).is_some_and(|rest| rest.starts_with('/')) => Ok(()),
        (None, Some(_)) => Err(refuse(format!("a form from another site may not post to {ours}"))),
        (None, None) => Err(refuse("the request carries neither Origin nor Referer".into())),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn session_cookie(secret: &str, secure: bool) -> (header::HeaderName, String) {
    let max_age = SESSION_TTL_HOURS * 3600;
    let secure = if secure { "; Secure" } else { "" };
    (header::SET_COOKIE, format!("{COOKIE}={secret}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"))
}

fn clear_cookie() -> [(header::HeaderName, String); 1] {
    [(header::SET_COOKIE, format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"))]
}

fn sign_in_form(status: StatusCode, error: Option<&str>) -> Result<Response, UiError> {
    let mut context = tera::Context::new();
    context.insert("error", &error);
    Ok((status, Html(render("sign_in.html", &context)?)).into_response())
}

pub async fn sign_in_page() -> Result<Response, UiError> {
    sign_in_form(StatusCode::OK, None)
}

#[derive(Deserialize)]
pub struct SignInForm {
    token: String,
}

pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<SignInForm>, FormRejection>,
) -> Result<Response, UiError> {
    // Signing a victim into someone else's session is an attack too (login CSRF).
    same_origin(&headers)?;
    let Form(form) =
        form.map_err(|e| UiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("token: {}", e.body_text())))?;
    let token = form.token.trim();
    if token.is_empty() {
        return sign_in_form(StatusCode::UNPROCESSABLE_ENTITY, Some("token: paste an API token"));
    }
    let Some(caller) = state.store.authenticate(token).await? else {
        tracing::info!("ui sign-in refused: unknown or revoked token");
        return sign_in_form(StatusCode::UNAUTHORIZED, Some("token: not valid (unknown or revoked)"));
    };
    if caller.role == Role::Agent {
        return sign_in_form(StatusCode::FORBIDDEN, Some("token: agent tokens cannot sign in"));
    }
    let session = state.store.open_session(&caller, chrono::Duration::hours(SESSION_TTL_HOURS)).await?;
    tracing::info!(actor = %caller.actor(), "ui signed in");
    // Finance works from the cost pages; everyone else from the pool.
    let home = if caller.role == Role::Finance { "/ui/costs" } else { "/ui/" };
    Ok(([session_cookie(&session.secret, over_tls(&headers))], Redirect::to(home)).into_response())
}

#[derive(Deserialize)]
pub struct CsrfForm {
    pub csrf: String,
}

/// Signing out needs the form's CSRF token (so another site cannot sign people out) but no
/// particular role.
pub async fn sign_out(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, UiError> {
    same_origin(&headers)?;
    let Form(form) =
        form.map_err(|e| UiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("csrf: {}", e.body_text())))?;
    if !constant_time_eq(form.csrf.as_bytes(), session.csrf.as_bytes()) {
        return Err(UiError::new(StatusCode::FORBIDDEN, "csrf: the form is stale or not ours; reload the page"));
    }
    if let Some(secret) = cookie(&headers, COOKIE) {
        state.store.close_session(secret).await?;
    }
    tracing::info!(actor = %session.caller.actor(), "ui signed out");
    Ok((clear_cookie(), Redirect::to("/ui/sign-in")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    #[test]
    fn cookies_are_found_among_others() {
        let h = headers(&[("cookie", "a=1; canopy_session=cns_x"), ("cookie", "b=2")]);
        assert_eq!(cookie(&h, COOKIE), Some("cns_x"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
        assert_eq!(cookie(&headers(&[("cookie", "xcanopy_session=1")]), COOKIE), None);
    }

    #[test]
    fn only_forms_from_our_own_origin_pass() {
        let ok = |pairs: &[(&'static str, &str)]| same_origin(&headers(pairs)).is_ok();
        assert!(ok(&[("host", "127.0.0.1:7070"), ("origin", "http://127.0.0.1:7070")]));
        assert!(ok(&[("host", "127.0.0.1:7070"), ("referer", "http://127.0.0.1:7070/ui/apps")]));
        assert!(ok(&[
            ("host", "canopy.example"),
            ("x-forwarded-proto", "https"),
            ("origin", "https://canopy.example")
        ]));
        assert!(!ok(&[("host", "127.0.0.1:7070"), ("origin", "http://evil.example")]));
        assert!(!ok(&[("host", "127.0.0.1:7070"), ("origin", "null")]));
        assert!(!ok(&[("host", "canopy.example"), ("origin", "https://canopy.example")]), "scheme must match");
        assert!(!ok(&[("host", "127.0.0.1:7070"), ("referer", "http://127.0.0.1:70701/ui/")]));
        assert!(!ok(&[("host", "127.0.0.1:7070"), ("referer", "http://127.0.0.1:7070.evil.example/")]));
        assert!(!ok(&[("host", "127.0.0.1:7070")]));
        // Origin decides when present, even if the Referer would pass.
        assert!(!ok(&[
            ("host", "127.0.0.1:7070"),
            ("origin", "http://evil.example"),
            ("referer", "http://127.0.0.1:7070/ui/")
        ]));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_tls() {
        let (_, plain) = session_cookie("cns_x", false);
        assert_eq!(plain, "canopy_session=cns_x; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=43200");
        assert!(session_cookie("cns_x", true).1.ends_with("; Secure"));
        assert!(over_tls(&headers(&[("x-forwarded-proto", "HTTPS")])));
        assert!(!over_tls(&headers(&[("x-forwarded-proto", "http")])));
    }

    #[test]
    fn finance_navigation_has_no_workload_pages() {
        let labels = |role| navigation(role, "/ui/").into_iter().map(|i| i.label).collect::<Vec<_>>();
        assert!(!labels(Role::Finance).contains(&"Apps"));
        assert!(labels(Role::Developer).contains(&"Apps"));
        assert!(navigation(Role::Admin, "/ui/machines").iter().any(|i| i.current && i.label == "Machines"));
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
