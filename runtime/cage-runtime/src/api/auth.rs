//! Who is asking: the `Authorization: Bearer TOKEN` of a running invocation.

use super::{ApiError, ApiState};
use actix_web::{dev::Payload, http::StatusCode, web, FromRequest, HttpRequest};
use std::future::{ready, Ready};

/// The running invocation a request acts as (its number on this cage).
pub struct Invocation(pub u64);

impl FromRequest for Invocation {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(check(req))
    }
}

fn check(req: &HttpRequest) -> Result<Invocation, ApiError> {
    let header = req.headers().get("authorization").and_then(|h| h.to_str().ok()).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "missing token: send `Authorization: Bearer TOKEN` with the CAGE_TOKEN of the invocation you act as",
        )
    })?;
    let token = header.strip_prefix("Bearer ").unwrap_or(header).trim();
    let state = req.app_data::<web::Data<ApiState>>().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "API state missing",
        )
    })?;
    state.env.mailboxes.invocation_of(token).map(Invocation).ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_token",
            "token not valid: it belongs to no running invocation of this cage (did the invocation finish?)",
        )
    })
}
