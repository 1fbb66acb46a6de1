//! `cage dashboard`: serve the operator dashboard for every cage of the site's cluster map.

use super::exit;
use cage_runtime::config::Site;
use cage_runtime::dashboard::gather::Cluster;
use cage_runtime::dashboard::guard::Token;
use cage_runtime::dashboard::{routes, Dashboard};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Certificate chain and private key files (PEM) to serve HTTPS with.
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Serves until interrupted; an address beyond this host only with TLS.
pub fn dashboard(
    site: &Site,
    listen: SocketAddr,
    token: Option<String>,
    tls: Option<TlsFiles>,
) -> ExitCode {
    if !listen.ip().is_loopback() && tls.is_none() {
        return exit::fail(
            exit::CONFIG,
            format!(
                "cage dashboard: --listen {listen} is not a loopback address; serving beyond this host needs TLS \
                 (--tls-cert FILE --tls-key FILE); actions also need the dashboard token, which every page asks for"
            ),
        );
    }
    let tls_config = match tls.as_ref().map(server_config).transpose() {
        Ok(c) => c,
        Err(e) => return exit::fail(exit::CONFIG, format!("cage dashboard: {e}")),
    };
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
        secure: tls_config.is_some(),
    });
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .configure(routes)
    })
    .workers(2);
    let server = match tls_config {
        Some(config) => server.bind_rustls_0_23(listen, config),
        None => server.bind(listen),
    };
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
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "dashboard for cages {} on {scheme}://{addr}/",
        names.join(", ")
    );
    println!("log in: {scheme}://{addr}/login?token={}", token.reveal());
    match actix_web::rt::System::new().block_on(server.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::fail(exit::OTHER, format!("cage dashboard: {e}")),
    }
}

/// The TLS settings of `files`, or what is wrong with them (naming the file).
fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in the file (expected PEM \"BEGIN CERTIFICATE\")",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("--tls-key {}: {e}", files.key.display()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "--tls-cert {} / --tls-key {}: {e}",
                files.cert.display(),
                files.key.display()
            )
        })
}
