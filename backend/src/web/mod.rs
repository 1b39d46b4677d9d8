//! HTTP: the route table and the server. Handlers stay thin; logic lives in plain functions.

pub(crate) mod api;
mod auth;
mod connect;
pub mod error;
mod guard;
mod health;
mod intake;
mod pages;
mod password;
mod setup;
mod ui;

use actix_web::dev::Server;
use actix_web::middleware::{ErrorHandlers, NormalizePath, TrailingSlash};
use actix_web::{App, HttpServer, web};

use crate::app::AppState;
pub use error::ApiError;

/// Declares routes once: the actix configuration and the `(method, pattern)` list that the
/// authorisation-matrix test checks, so a new route cannot go unclassified.
macro_rules! route_table {
    ($(#[$meta:meta])* $vis:vis fn $name:ident, const $list:ident { $( $method:ident $path:literal => $handler:path ),* $(,)? }) => {
        #[doc = concat!("Every `(method, pattern)` that `", stringify!($name), "` serves.")]
        $vis const $list: &[(&str, &str)] = &[ $( (stringify!($method), $path) ),* ];

        $(#[$meta])*
        $vis fn $name(cfg: &mut actix_web::web::ServiceConfig) {
            $crate::web::register(cfg, vec![ $( ($path, actix_web::web::$method().to($handler)) ),* ]);
        }
    };
}
pub(crate) use route_table;

/// Registers one resource per pattern, in order of first appearance, holding all of its
/// methods: a known path asked with a method it does not serve answers 405, not 404.
pub(crate) fn register(cfg: &mut web::ServiceConfig, routes: Vec<(&'static str, actix_web::Route)>) {
    let mut resources: Vec<(&'static str, actix_web::Resource)> = Vec::new();
    for (path, route) in routes {
        match resources.iter_mut().find(|(known, _)| *known == path) {
            Some((_, resource)) => {
                let grown = std::mem::replace(resource, web::resource(path)).route(route);
                *resource = grown;
            }
            None => resources.push((path, web::resource(path).route(route))),
        }
    }
    for (_, resource) in resources {
        cfg.service(resource);
    }
}

route_table! {
    /// Routes shared by the server and by in-process tests. The webhook routes come first:
    /// routes are tried in order, and each dynamic pattern before them would cost every webhook
    /// a regex match. The benchmark's ceiling route sits beside them.
    pub fn page_routes, const PAGE_ROUTES {
        post "/webhooks/milesight" => intake::receive,
        post "/webhooks/milesight/{source}" => intake::receive,
        get "/webhooks/milesight" => intake::probe,
        get "/webhooks/milesight/{source}" => intake::probe,
        head "/webhooks/milesight" => intake::probe,
        head "/webhooks/milesight/{source}" => intake::probe,
        post "/bench/discard" => intake::discard,
        get "/healthz" => health::healthz,
        get "/readyz" => health::readyz,
        get "/metrics" => health::metrics,
        get "/" => pages::overview,
        get "/devices" => pages::devices,
        get "/devices/{id}" => pages::device,
        get "/webhooks" => pages::webhooks_page,
        get "/tokens" => pages::tokens,
        get "/polling" => pages::polling,
        get "/alerts" => pages::alerts_page,
        get "/alerts/{id}" => pages::alert,
        get "/scheduler" => pages::scheduler,
        get "/settings" => pages::settings,
        get "/settings/staff" => pages::staff_page,
        get "/settings/audit" => pages::audit_page,
        get "/account" => pages::account,
        get "/reset-password" => password::reset_page,
        post "/reset-password" => password::reset_password,
        get "/connections/new" => pages::new_connection,
        get "/connections/{id}" => pages::connection,
        get "/oauth/callback" => connect::callback,
        post "/api/connections/{id}/authorize" => connect::authorize,
        get "/setup" => setup::setup_page,
        post "/setup" => setup::create_admin,
        get "/login" => auth::login_page,
        post "/login" => auth::login,
        post "/logout" => auth::logout,
        get "/api/me" => auth::me,
        get "/api/users" => auth::users,
        post "/api/users" => auth::add_user,
        patch "/api/users/{id}" => auth::update_user,
        delete "/api/users/{id}" => auth::delete_user,
        post "/api/users/{id}/reset-link" => password::reset_link,
        post "/api/me/password" => password::change_own_password,
        get "/api/api-tokens" => auth::api_tokens,
        post "/api/api-tokens" => auth::add_api_token,
        delete "/api/api-tokens/{id}" => auth::delete_api_token,
        // One segment: the assets are flat, and a `{path:.*}` pattern made the HTTP metrics
        // middleware warn on every request for one.
        get "/static/{file}" => ui::asset,
        get "/favicon.ico" => ui::favicon,
    }
}

/// Every route the service serves.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(page_routes).configure(api::routes);
}

/// Every `(method, pattern)` the service serves, for the authorisation matrix.
pub fn all_routes() -> Vec<(&'static str, &'static str)> {
    PAGE_ROUTES.iter().chain(api::ROUTES).copied().collect()
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

/// Request spans without the query string: a caller may put a secret there (the code of an
/// OAuth callback), and every log line written inside a request carries its span.
pub struct PathOnlySpans;

impl tracing_actix_web::RootSpanBuilder for PathOnlySpans {
    fn on_request_start(request: &actix_web::dev::ServiceRequest) -> tracing::Span {
        let route = request.match_pattern().unwrap_or_else(|| "default".into());
        let client = request
            .connection_info()
            .realip_remote_addr()
            .unwrap_or_default()
            .to_owned();
        tracing::info_span!(
            "HTTP request",
            http.method = %request.method(),
            http.route = %route,
            http.target = %request.path(),
            http.client_ip = %client,
            http.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            exception.message = tracing::field::Empty,
            exception.details = tracing::field::Empty,
        )
    }

    fn on_request_end<B: actix_web::body::MessageBody>(
        span: tracing::Span,
        outcome: &Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>,
    ) {
        tracing_actix_web::DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
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
            .wrap(actix_web::middleware::from_fn(guard::guard))
            .wrap(security_headers())
            .wrap(ErrorHandlers::new().default_handler(error::jsonify_error))
            .wrap(NormalizePath::new(TrailingSlash::Trim))
            .wrap(state.metrics.http.clone())
            .wrap(tracing_actix_web::TracingLogger::<PathOnlySpans>::new())
    })
    // Signals are ours (see `app::shutdown_signal`), so shutdown also stops jobs and the pool.
    .disable_signals()
    .shutdown_timeout(shutdown_timeout)
    .listen(listener)?
    .run();
    Ok(server)
}
