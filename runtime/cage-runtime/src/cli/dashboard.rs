//! `cage dashboard`: serve the operator dashboard for every cage of the site's cluster map.

use super::exit;
use cage_runtime::config::Site;
use cage_runtime::dashboard::gather::Cluster;
use cage_runtime::dashboard::guard::Token;
use cage_runtime::dashboard::{routes, Dashboard};
use std::net::SocketAddr;
use std::process::ExitCode;

/// Serves until interrupted; refuses an address beyond this host.
pub fn dashboard(site: &Site, listen: SocketAddr, token: Option<String>) -> ExitCode {
    if !listen.ip().is_loopback() {
        return exit::fail(
            exit::CONFIG,
            format!(
                "cage dashboard: --listen {listen} is not a loopback address; the dashboard serves plain HTTP, \
                 so it binds this host only (use 127.0.0.1 and an SSH tunnel, or a TLS-terminating proxy on this host)"
            ),
        );
    }
    let cluster = match Cluster::from_site(site) {
        Ok(c) => c,
        Err(e) => return exit::fail(exit::CONFIG, e),
    };
    let token = match token {
        Some(t) if t.trim().len() >= 16 => Token::given(&t),
        Some(_) => {
            return exit::fail(
                exit::CONFIG,
                "cage dashboard: the token given (--token or CAGE_DASHBOARD_TOKEN) has fewer than 16 characters",
            )
        }
        None => match Token::of_site(site.root()) {
            Ok(t) => t,
            Err(e) => return exit::fail(exit::OTHER, format!("cage dashboard: {e}")),
        },
    };
    let names = cluster.names();
    let data = actix_web::web::Data::new(Dashboard {
        cluster,
        token: token.clone(),
        base: String::new(),
    });
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .configure(routes)
    })
    .workers(2)
    .bind(listen);
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            return exit::fail(
                exit::OTHER,
                format!("cage dashboard: cannot listen on {listen}: {e}"),
            )
        }
    };
    let addr = server.addrs().first().copied().unwrap_or(listen);
    println!("dashboard for cages {} on http://{addr}/", names.join(", "));
    println!("log in: http://{addr}/login?token={}", token.reveal());
    match actix_web::rt::System::new().block_on(server.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::fail(exit::OTHER, format!("cage dashboard: {e}")),
    }
}
