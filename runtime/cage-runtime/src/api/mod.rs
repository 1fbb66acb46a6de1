//! The HTTP API of a cage, for processes outside it (scripts a module starts, tools): JSON in
//! and out, every request made *as a running invocation* by presenting its token.
//!
//! - [`auth`]: the bearer token → invocation check.
//! - [`error`]: how failures become HTTP statuses with a JSON body.
//! - [`handlers`]: one function per endpoint.
//!
//! The endpoints are described in `clients/openapi.yaml`.

mod auth;
mod error;
mod handlers;

use crate::host::HostEnv;
use actix_web::{web, App, HttpServer};
use std::sync::Arc;

pub use error::ApiError;

/// What every handler needs.
pub struct ApiState {
    /// The cage's host environment (mailboxes, routes, own address).
    pub env: Arc<HostEnv>,
}

/// Serves the API on `listener` within the running actix system.
pub fn start(
    listener: std::net::TcpListener,
    env: Arc<HostEnv>,
    max_body: usize,
) -> std::io::Result<()> {
    let state = web::Data::new(ApiState { env });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(max_body)
                    .error_handler(error::json_error),
            )
            .route("/v1/messages/send", web::post().to(handlers::send))
            .route("/v1/messages/receive", web::post().to(handlers::receive))
            .route("/v1/call", web::post().to(handlers::call))
            .route("/v1/enqueue", web::post().to(handlers::enqueue))
            .route("/v1/pending", web::get().to(handlers::pending))
            .route("/v1/jobs", web::post().to(handlers::add_job))
            .route("/v1/jobs", web::get().to(handlers::jobs))
            .route("/v1/whoami", web::get().to(handlers::whoami))
            .default_service(web::to(handlers::not_found))
    })
    .workers(2)
    .disable_signals()
    .listen(listener)?
    .run();
    actix_rt::spawn(server);
    Ok(())
}
