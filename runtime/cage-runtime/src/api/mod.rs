//! The HTTP API of a cage, for processes outside it (scripts a module starts, tools): JSON in
//! and out, every request made *as a running invocation* by presenting its token.
//!
//! - [`auth`]: the bearer token → invocation check.
//! - [`error`]: how failures become HTTP statuses with a JSON body.
//! - [`handlers`]: one function per endpoint.
//!
//! Beside the API: `/metrics` (Prometheus text, no token: the API listens on loopback only)
//! and the cage's own dashboard at `/ui` (see [`crate::dashboard`]).
//!
//! The endpoints are described in `clients/openapi.yaml`.

mod auth;
mod error;
mod handlers;

use crate::config::CageRoute;
use crate::dashboard::gather::Cluster;
use crate::dashboard::guard::Token;
use crate::dashboard::Dashboard;
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
    let cluster = Cluster::single(
        &env.cage,
        CageRoute::single(env.listen, std::time::Duration::from_secs(30)).with_tls(env.tls),
    );
    let token = match Token::of_site(env.site.root()) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(cage = %env.cage, "{e}; the cage's dashboard at /ui is off");
            None
        }
    };
    let ui = token.map(|token| {
        web::Data::new(Dashboard {
            cluster: cluster.clone(),
            token,
            base: "/ui".to_owned(),
            secure: false,
        })
    });
    let own = web::Data::new(cluster);
    let state = web::Data::new(ApiState { env });
    let server = HttpServer::new(move || {
        let app = App::new()
            .app_data(state.clone())
            .app_data(own.clone())
            .route("/metrics", web::get().to(handlers::metrics));
        let app = match &ui {
            Some(dashboard) => app.service(
                web::scope("/ui")
                    .app_data(dashboard.clone())
                    .configure(crate::dashboard::routes),
            ),
            None => app,
        };
        app.app_data(
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
    // One worker: every handler waits off it (`web::block`), and each worker wakes a few times
    // a second for as long as the cage runs, idle or not.
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    actix_rt::spawn(server);
    Ok(())
}
