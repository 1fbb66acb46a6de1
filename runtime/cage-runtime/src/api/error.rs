//! Failures as HTTP: a status and `{"error": kind, "message": text}`.

use actix_web::error::JsonPayloadError;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use cage_sdk::{CallError, ErrorKind};
use std::fmt;

/// An API failure.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: String,
    message: String,
}

impl ApiError {
    /// A failure with `status`, a machine-readable `kind` and a message for people.
    pub fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind: kind.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status)
            .json(serde_json::json!({ "error": self.kind, "message": self.message }))
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        let status = match e.kind {
            ErrorKind::BadArguments => StatusCode::BAD_REQUEST,
            ErrorKind::UnknownCage
            | ErrorKind::UnknownModule
            | ErrorKind::UnknownMethod
            | ErrorKind::UnknownInvocation => StatusCode::NOT_FOUND,
            ErrorKind::InvocationFinished => StatusCode::GONE,
            ErrorKind::ReceiveTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Unreachable => StatusCode::BAD_GATEWAY,
            // The module's process died serving the call; the body's `error` says "crashed".
            ErrorKind::Crashed => StatusCode::BAD_GATEWAY,
            ErrorKind::Refused => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::ModuleError
            | ErrorKind::Panic
            | ErrorKind::Permanent
            | ErrorKind::ChildFailed => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        ApiError {
            status,
            kind,
            message: e.message,
        }
    }
}

/// Turns a body that is not the JSON expected into a 4xx saying what was wrong.
pub fn json_error(err: JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    let e = match &err {
        JsonPayloadError::OverflowKnownLength { length, limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("body of {length} bytes exceeds the limit of {limit} bytes"),
        ),
        JsonPayloadError::Overflow { limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("body exceeds the limit of {limit} bytes"),
        ),
        JsonPayloadError::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            "expected Content-Type: application/json",
        ),
        JsonPayloadError::Deserialize(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("malformed JSON body: {e}"),
        ),
        other => ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("cannot read the body: {other}"),
        ),
    };
    e.into()
}
