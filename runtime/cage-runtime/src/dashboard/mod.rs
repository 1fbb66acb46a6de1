//! The operator dashboard: what is pending on which cage, why, and when it runs next, in a
//! browser; plus every cage's metrics in the Prometheus text format.
//!
//! - [`gather`]: asks the cages (over their ordinary protocol) what the pages show.
//! - [`pages`]: server-rendered HTML, one file per page, a little plain JavaScript for
//!   countdowns and sorting; no build step, nothing fetched from elsewhere.
//! - [`chart`]: a queue's attempts and failures per minute as inline SVG.
//! - [`guard`]: the dashboard token (login cookie or bearer) and the CSRF check of actions.
//! - [`redirect`]: where an action sends the browser back to (a page of this dashboard only).
//!
//! `cage dashboard` serves it for every cage of the site's cluster map; each cage also serves
//! its own at `/ui` on its HTTP API address.

pub mod chart;
pub mod gather;
pub mod guard;
pub mod pages;
pub mod redirect;

use crate::metrics::exposition;
use crate::transport::protocol::Redrive;
use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use gather::{Action, Cluster};
use guard::Token;
use maud::{html, Markup};
use pages::Frame;
use serde::Deserialize;

/// A dashboard: the cages it covers, the token that opens it, the path it is served under.
pub struct Dashboard {
    /// The cages.
    pub cluster: Cluster,
    /// The token.
    pub token: Token,
    /// Path prefix ("" or "/ui").
    pub base: String,
    /// Served over TLS (the login cookie is then marked Secure).
    pub secure: bool,
}

/// Adds the dashboard's routes to an actix-web scope; the [`Dashboard`] must be app data.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(cages))
        .route("/login", web::get().to(login))
        .route("/login", web::post().to(login_form))
        .route("/modules", web::get().to(modules))
        .route("/queue/{cage}/{queue}", web::get().to(queue))
        .route("/call/{cage}/{id}", web::get().to(call))
        .route("/dead", web::get().to(dead))
        .route("/revive", web::get().to(revive_confirm))
        .route("/revive", web::post().to(revive))
        .route("/jobs", web::get().to(jobs))
        .route("/metrics", web::get().to(metrics))
        .route("/action", web::post().to(action));
}

#[derive(Deserialize, Default)]
struct Notice {
    #[serde(default)]
    notice: Option<String>,
}

fn notice(req: &HttpRequest) -> Option<String> {
    web::Query::<Notice>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.into_inner().notice)
}

fn html_response(status: StatusCode, markup: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("x-frame-options", "DENY"))
        .body(markup.into_string())
}

fn login_page(d: &Dashboard, status: StatusCode, why: &str) -> HttpResponse {
    let frame = Frame {
        base: &d.base,
        csrf: "",
        notice: Some(why),
    };
    html_response(
        status,
        pages::page(
            &frame,
            "Log in",
            html! {
                p { "The dashboard token is in " code { (guard::TOKEN_FILE) } " of the site (or what "
                    code { "cage dashboard" } " printed at start)." }
                form method="post" action={(d.base) "/login"} {
                    label { "token " input type="password" name="token" autofocus; }
                    " " button type="submit" { "Log in" }
                }
            },
        ),
    )
}

/// Nothing if the request holds the token; else the login page (401) to answer instead.
fn refusal(d: &Dashboard, req: &HttpRequest) -> Option<HttpResponse> {
    match guard::presented(req) {
        Some(t) if d.token.opens(&t) => None,
        Some(_) => Some(login_page(
            d,
            StatusCode::UNAUTHORIZED,
            "That token does not open this dashboard.",
        )),
        None => Some(login_page(
            d,
            StatusCode::UNAUTHORIZED,
            "Log in with the dashboard token.",
        )),
    }
}

fn logged_in(d: &Dashboard, token: &str) -> HttpResponse {
    if !d.token.opens(token) {
        return login_page(
            d,
            StatusCode::UNAUTHORIZED,
            "That token does not open this dashboard.",
        );
    }
    let path = if d.base.is_empty() {
        "/"
    } else {
        d.base.as_str()
    };
    let cookie = Cookie::build(guard::COOKIE, token.trim().to_owned())
        .path(path.to_owned())
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(d.secure)
        .finish();
    HttpResponse::SeeOther()
        .cookie(cookie)
        .insert_header((header::LOCATION, format!("{}/", d.base)))
        .finish()
}

#[derive(Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

async fn login(d: web::Data<Dashboard>, q: web::Query<LoginQuery>) -> HttpResponse {
    match &q.token {
        Some(t) => logged_in(&d, t),
        None => login_page(&d, StatusCode::OK, "Log in with the dashboard token."),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login_form(d: web::Data<Dashboard>, f: web::Form<LoginForm>) -> HttpResponse {
    logged_in(&d, &f.token)
}

/// Runs `gather` off the async threads (it waits on the network) and renders what it found.
async fn show<T: Send + 'static>(
    d: web::Data<Dashboard>,
    req: HttpRequest,
    gather: impl FnOnce(&Cluster) -> T + Send + 'static,
    render: impl FnOnce(&Frame, T) -> Markup,
) -> HttpResponse {
    if let Some(refused) = refusal(&d, &req) {
        return refused;
    }
    let dash = d.clone();
    let found = match web::block(move || gather(&dash.cluster)).await {
        Ok(found) => found,
        Err(e) => {
            return HttpResponse::InternalServerError()
                .body(format!("dashboard: gathering failed: {e}"))
        }
    };
    let csrf = d.token.csrf();
    let notice = notice(&req);
    let frame = Frame {
        base: &d.base,
        csrf: &csrf,
        notice: notice.as_deref(),
    };
    html_response(StatusCode::OK, render(&frame, found))
}

/// Where to come back to after an action on this page: its path and query, without a notice.
fn here(req: &HttpRequest) -> String {
    let query: Vec<&str> = req
        .query_string()
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("notice="))
        .collect();
    match query.is_empty() {
        true => req.path().to_owned(),
        false => format!("{}?{}", req.path(), query.join("&")),
    }
}

async fn cages(d: web::Data<Dashboard>, req: HttpRequest) -> HttpResponse {
    show(d, req, Cluster::summaries, |f, s| {
        pages::cages::render(f, &s)
    })
    .await
}

async fn modules(d: web::Data<Dashboard>, req: HttpRequest) -> HttpResponse {
    show(d, req, Cluster::summaries, |f, s| {
        pages::modules::render(f, &s)
    })
    .await
}

async fn queue(
    d: web::Data<Dashboard>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    filter: web::Query<pages::queue::QueueFilter>,
) -> HttpResponse {
    let (cage, queue) = path.into_inner();
    let back = here(&req);
    let (c, q) = (cage.clone(), queue.clone());
    show(
        d,
        req,
        move |cluster| (cluster.cage_metrics(&c).ok(), cluster.pending(&c, &q)),
        move |f, (metrics, calls)| {
            pages::queue::render(f, &cage, &queue, metrics.as_ref(), calls, &filter, &back)
        },
    )
    .await
}

async fn call(
    d: web::Data<Dashboard>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (cage, id) = path.into_inner();
    let back = here(&req);
    let (c, i) = (cage.clone(), id.clone());
    show(
        d,
        req,
        move |cluster| cluster.call(&c, &i),
        move |f, detail| pages::call::render(f, &cage, &id, detail, &back),
    )
    .await
}

async fn dead(
    d: web::Data<Dashboard>,
    req: HttpRequest,
    filter: web::Query<pages::dead::DeadFilter>,
) -> HttpResponse {
    let back = here(&req);
    let filter = filter.into_inner();
    let asked = filter.clone();
    show(
        d,
        req,
        move |cluster| cluster.dead(asked.cage(), &asked.filter()),
        move |f, dead| pages::dead::render(f, &dead, &filter, &back),
    )
    .await
}

/// The revive of every dead letter a filter selects, counted by a dry run, to confirm.
async fn revive_confirm(
    d: web::Data<Dashboard>,
    req: HttpRequest,
    filter: web::Query<pages::dead::DeadFilter>,
) -> HttpResponse {
    let filter = filter.into_inner();
    let order = Redrive {
        dead: true,
        filter: filter.filter(),
        dry_run: true,
        ..Redrive::default()
    };
    let cage = filter.cage().map(str::to_owned);
    show(
        d,
        req,
        move |cluster| cluster.redrive(cage.as_deref(), &order),
        move |f, counted| pages::dead::confirm(f, &counted, &filter),
    )
    .await
}

#[derive(Deserialize)]
struct ReviveForm {
    csrf: Option<String>,
    #[serde(flatten)]
    filter: pages::dead::DeadFilter,
    spread: Option<String>,
}

/// Revives every dead letter the confirmed filter selects, due times spread as asked.
async fn revive(
    d: web::Data<Dashboard>,
    req: HttpRequest,
    form: web::Form<ReviveForm>,
) -> HttpResponse {
    let form = form.into_inner();
    if let Some(refused) = order_refused(&d, &req, form.csrf.as_deref()) {
        return refused;
    }
    let spread = match form
        .spread
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => std::time::Duration::ZERO,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) => d,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    &format!("spread {text:?} is not a span such as 10m: {e}"),
                )
            }
        },
    };
    let order = Redrive {
        dead: true,
        filter: form.filter.filter(),
        dry_run: false,
        spread_ms: spread.as_millis() as u64,
        by: format!("the dashboard ({})", form.filter.words()),
    };
    let dash = d.clone();
    let cage = form.filter.cage().map(str::to_owned);
    let done = web::block(move || dash.cluster.redrive(cage.as_deref(), &order)).await;
    let message = match done {
        Ok(answers) => {
            let revived: usize = answers
                .iter()
                .map(|(_, a)| a.as_ref().map_or(0, |(n, _)| *n))
                .sum();
            let failed: Vec<String> = answers
                .iter()
                .filter_map(|(cage, a)| a.as_ref().err().map(|e| format!("cage {cage}: {e}")))
                .collect();
            tracing::info!(
                "dashboard: {revived} dead letter(s) revived by an operator ({})",
                form.filter.words()
            );
            match failed.is_empty() {
                true => format!("revived {revived} call(s)"),
                false => format!(
                    "revived {revived} call(s); not done on {}",
                    failed.join("; ")
                ),
            }
        }
        Err(e) => format!("revive failed: {e}"),
    };
    let query = form.filter.query();
    let sep = if query.is_empty() { "" } else { "&" };
    HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            format!(
                "{}/dead?{query}{sep}notice={}",
                d.base,
                pages::enc(&message)
            ),
        ))
        .finish()
}

async fn jobs(d: web::Data<Dashboard>, req: HttpRequest) -> HttpResponse {
    show(d, req, Cluster::jobs, |f, jobs| {
        pages::jobs::render(f, &jobs)
    })
    .await
}

async fn metrics(d: web::Data<Dashboard>, req: HttpRequest) -> HttpResponse {
    if let Some(refused) = refusal(&d, &req) {
        return refused;
    }
    let dash = d.clone();
    match web::block(move || dash.cluster.metrics()).await {
        Ok(snapshots) => HttpResponse::Ok()
            .content_type(exposition::CONTENT_TYPE)
            .body(exposition::encode(snapshots)),
        Err(e) => {
            HttpResponse::InternalServerError().body(format!("dashboard: gathering failed: {e}"))
        }
    }
}

#[derive(Deserialize)]
struct ActionForm {
    csrf: Option<String>,
    cage: String,
    id: String,
    action: String,
    back: Option<String>,
}

fn refuse(status: StatusCode, why: &str) -> HttpResponse {
    tracing::warn!(status = status.as_u16(), "dashboard action refused: {why}");
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(format!("refused: {why}\n"))
}

/// Why an operator's order is refused, if it is: it needs the token, the CSRF value of a page
/// of this dashboard and, when the browser names one, this dashboard's origin.
fn order_refused(d: &Dashboard, req: &HttpRequest, csrf: Option<&str>) -> Option<HttpResponse> {
    match guard::presented(req) {
        Some(t) if d.token.opens(&t) => {}
        Some(_) => {
            return Some(refuse(
                StatusCode::UNAUTHORIZED,
                "the token does not open this dashboard",
            ))
        }
        None => return Some(refuse(StatusCode::UNAUTHORIZED, "no token: log in first")),
    }
    if !csrf.is_some_and(|c| d.token.csrf_ok(c)) {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF value: send the form of a dashboard page",
        ));
    }
    if !guard::same_origin(req) {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "the request comes from another site (Origin does not match)",
        ));
    }
    None
}

/// An operator's order about one call (see [`order_refused`]).
async fn action(
    d: web::Data<Dashboard>,
    req: HttpRequest,
    form: web::Form<ActionForm>,
) -> HttpResponse {
    let form = form.into_inner();
    if let Some(refused) = order_refused(&d, &req, form.csrf.as_deref()) {
        return refused;
    }
    let Some(act) = Action::parse(&form.action) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "unknown action (retry-now, revive or cancel)",
        );
    };
    // Checked before the action runs: a value the answer cannot carry refuses the whole order.
    let back = match redirect::back_to(&d.base, form.back.as_deref()) {
        Ok(redirect::Back::Page(p)) => p.to_owned(),
        Ok(redirect::Back::Default) => {
            if let Some(b) = form.back.as_deref().filter(|b| !b.is_empty()) {
                tracing::warn!("dashboard action: back {b:?} is not a page of this dashboard; going back to the page list");
            }
            format!("{}/", d.base)
        }
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let dash = d.clone();
    let (cage, id) = (form.cage.clone(), form.id.clone());
    let outcome = web::block(move || dash.cluster.act(&cage, act, &id)).await;
    let message = match outcome {
        Ok(Ok(0)) => format!(
            "{}: cage {} holds no such call {} (finished or gone)",
            act.name(),
            form.cage,
            form.id
        ),
        Ok(Ok(_)) => {
            tracing::info!(cage = %form.cage, call_id = %form.id, "dashboard: {} by an operator", act.name());
            format!(
                "{}: done for call {} on cage {}",
                act.name(),
                form.id,
                form.cage
            )
        }
        Ok(Err(e)) => format!("{} failed: {e}", act.name()),
        Err(e) => format!("{} failed: {e}", act.name()),
    };
    let sep = if back.contains('?') { '&' } else { '?' };
    HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            format!("{back}{sep}notice={}", pages::enc(&message)),
        ))
        .finish()
}
