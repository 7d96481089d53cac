//! The web UI: server-rendered pages under `/ui/` on the API listener, readable without
//! JavaScript.
//!
//! People sign in with an API token and get a session (`session.rs`); every page is a tera
//! template from the top-level `templates/ui/` (embedded in the binary) filled with view models
//! computed from the store (`view.rs`, `finance.rs` for the cost pages); charts are SVG drawn
//! in Rust (`chart.rs`). Pages show
//! what the `/v1` API lets the same token read, and forms do what it lets the token change:
//! the same store calls, roles and team scopes, so a finance token changes nothing here either.

mod chart;
mod finance;
mod pages;
mod session;
mod view;

use crate::http::{ApiError, AppState};
use crate::store::StoreError;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use std::sync::LazyLock;

pub use session::COOKIE;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::dashboard))
        .route("/ui/sign-in", get(session::sign_in_page).post(session::sign_in))
        .route("/ui/sign-out", post(session::sign_out))
        .route("/ui/apps", get(pages::apps))
        .route("/ui/jobs", get(pages::jobs))
        .route("/ui/apps/{team}/{name}", get(pages::app))
        .route("/ui/apps/{team}/{name}/scale", post(pages::scale))
        .route("/ui/apps/{team}/{name}/promote", post(pages::promote))
        .route("/ui/apps/{team}/{name}/rollback", post(pages::rollback))
        .route("/ui/machines", get(pages::machines))
        .route("/ui/costs", get(finance::costs))
        .route("/ui/reports/{name}", get(finance::report))
        .route("/ui/{*rest}", get(|| async { UiError::new(StatusCode::NOT_FOUND, "no such page") }))
        .layer(axum::middleware::map_response(protect))
}

/// Headers for every UI response: no scripts, no framing, no caching of pages that show a
/// team's data, forms only to ourselves.
async fn protect(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The page templates, embedded in the binary. Their names end in `.html`, so tera escapes
/// every value placed in them.
const TEMPLATES: [(&str, &str); 8] = [
    ("base.html", include_str!("../../../templates/ui/base.html")),
    ("error.html", include_str!("../../../templates/ui/error.html")),
    ("sign_in.html", include_str!("../../../templates/ui/sign_in.html")),
    ("dashboard.html", include_str!("../../../templates/ui/dashboard.html")),
    ("apps.html", include_str!("../../../templates/ui/apps.html")),
    ("app.html", include_str!("../../../templates/ui/app.html")),
    ("machines.html", include_str!("../../../templates/ui/machines.html")),
    ("costs.html", include_str!("../../../templates/ui/costs.html")),
];

static TERA: LazyLock<Result<tera::Tera, String>> = LazyLock::new(|| {
    let mut tera = tera::Tera::default();
    tera.add_raw_templates(TEMPLATES).map_err(|e| format!("{e:?}"))?;
    Ok(tera)
});

/// Renders page `name`; a template error is logged and shown as an internal error.
fn render(name: &str, context: &tera::Context) -> Result<String, UiError> {
    let internal = |error: String| {
        tracing::error!(template = name, %error, "rendering a page failed");
        UiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the control service's log")
    };
    let tera = TERA.as_ref().map_err(|e| internal(e.clone()))?;
    tera.render(name, context).map_err(|e| internal(format!("{e:?}")))
}

/// What went wrong, as a page: the status says whose fault it is, the message what to fix.
#[derive(Debug)]
pub struct UiError {
    status: StatusCode,
    message: String,
}

impl UiError {
    fn new(status: StatusCode, message: impl Into<String>) -> UiError {
        UiError { status, message: message.into() }
    }
}

impl From<ApiError> for UiError {
    fn from(error: ApiError) -> UiError {
        UiError::new(error.status, error.message)
    }
}

impl From<StoreError> for UiError {
    fn from(error: StoreError) -> UiError {
        ApiError::from(error).into()
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let mut context = tera::Context::new();
        context.insert("status", &self.status.as_u16());
        context.insert("reason", self.status.canonical_reason().unwrap_or(""));
        context.insert("message", &self.message);
        match TERA
            .as_ref()
            .map_err(String::clone)
            .and_then(|t| t.render("error.html", &context).map_err(|e| e.to_string()))
        {
            Ok(page) => (self.status, Html(page)).into_response(),
            Err(error) => {
                tracing::error!(%error, "rendering the error page failed");
                (self.status, self.message).into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests;
