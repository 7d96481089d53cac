//! One error shape for the whole API: `{"error": {"code": "...", "message": "..."}}` with a
//! status that says whose fault it is. Internal details are logged, never returned.

use crate::store::StoreError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use canopy_core::spec::SpecError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<SpecError> for ApiError {
    fn from(error: SpecError) -> Self {
        ApiError::invalid(error.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(message) => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            StoreError::Conflict(message) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            StoreError::Invalid(message) => ApiError::invalid(message),
            StoreError::Unauthorized(message) => ApiError::unauthorized(message),
            StoreError::Forbidden(message) => ApiError::forbidden(message),
            StoreError::PolicyRefused(message) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "policy_refused", message)
            }
            other => {
                tracing::error!(error = %other, "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the control service's log",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}
