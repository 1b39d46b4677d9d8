//! HTTP: the route table and the server. Handlers stay thin; logic lives in plain functions.

mod api;
mod auth;
pub mod error;
mod health;
mod pages;
mod ui;
mod webhooks;

use actix_web::dev::Server;
use actix_web::middleware::{ErrorHandlers, NormalizePath, TrailingSlash};
use actix_web::{App, HttpServer, web};

use crate::app::AppState;
pub use error::ApiError;

/// Routes shared by the server and by in-process tests.
pub fn routes(cfg: &mut web::ServiceConfig) {
    // The webhook route first: routes are tried in order, and each dynamic pattern before it
    // would cost every webhook a regex match. The benchmark's ceiling route sits beside it.
    cfg.service(
        web::resource(["/webhooks/milesight", "/webhooks/milesight/{source}"])
            .route(web::post().to(webhooks::receive))
            .route(web::get().to(webhooks::probe))
            .route(web::head().to(webhooks::probe)),
    )
    .route("/bench/discard", web::post().to(webhooks::discard))
    .route("/healthz", web::get().to(health::healthz))
    .route("/readyz", web::get().to(health::readyz))
    .route("/metrics", web::get().to(health::metrics))
    .route("/", web::get().to(pages::overview))
    .route("/devices", web::get().to(pages::devices))
    .route("/devices/{id}", web::get().to(pages::device))
    .route("/webhooks", web::get().to(pages::webhooks_page))
    .route("/tokens", web::get().to(pages::tokens))
    .route("/polling", web::get().to(pages::polling))
    .route("/alerts", web::get().to(pages::alerts_page))
    .route("/alerts/{id}", web::get().to(pages::alert))
    .route("/scheduler", web::get().to(pages::scheduler))
    .route("/settings", web::get().to(pages::settings))
    .route("/login", web::get().to(auth::login_page))
    .route("/login", web::post().to(auth::login))
    .route("/logout", web::post().to(auth::logout))
    .route("/api/me", web::get().to(auth::me))
    .route("/api/users", web::get().to(auth::users))
    .route("/api/users", web::post().to(auth::add_user))
    .route("/api/users/{id}", web::patch().to(auth::update_user))
    .route("/api/users/{id}", web::delete().to(auth::delete_user))
    .route("/api/api-tokens", web::get().to(auth::api_tokens))
    .route("/api/api-tokens", web::post().to(auth::add_api_token))
    .route("/api/api-tokens/{id}", web::delete().to(auth::delete_api_token))
    .route("/static/{path:.*}", web::get().to(ui::asset))
    .configure(api::routes);
}

/// JSON-body, path and query errors become the shared error shape instead of actix's text.
fn extractor_configs(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(1024 * 1024)
            .error_handler(|err, _| ApiError::bad_request("invalid_json", err.to_string()).into()),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|err, _| ApiError::bad_request("invalid_path", err.to_string()).into()),
    )
    .app_data(
        web::QueryConfig::default()
            .error_handler(|err, _| ApiError::bad_request("invalid_query", err.to_string()).into()),
    );
}

/// Every response: no inline or third-party scripts, no framing, no MIME sniffing.
fn security_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add((
            "content-security-policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ))
        .add(("x-content-type-options", "nosniff"))
        .add(("x-frame-options", "DENY"))
        .add(("referrer-policy", "same-origin"))
}

pub fn http_server(state: AppState, listener: std::net::TcpListener) -> anyhow::Result<Server> {
    let shutdown_timeout = state.config.shutdown_timeout_secs.as_secs();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .configure(extractor_configs)
            .configure(routes)
            .default_service(web::to(|| async {
                Err::<actix_web::HttpResponse, _>(ApiError::not_found("no such route"))
            }))
            .wrap(actix_web::middleware::from_fn(crate::auth::guard::guard))
            .wrap(security_headers())
            .wrap(ErrorHandlers::new().default_handler(error::jsonify_error))
            .wrap(NormalizePath::new(TrailingSlash::Trim))
            .wrap(state.metrics.http.clone())
            .wrap(tracing_actix_web::TracingLogger::default())
    })
    // Signals are ours (see `app::shutdown_signal`), so shutdown also stops jobs and the pool.
    .disable_signals()
    .shutdown_timeout(shutdown_timeout)
    .listen(listener)?
    .run();
    Ok(server)
}
