//! The staff web UI's files, embedded in the binary from `frontend/` (no CDN, nothing fetched at run time).

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use rust_embed::RustEmbed;

use super::ApiError;

#[derive(RustEmbed)]
#[folder = "../frontend/static/"]
struct Assets;

pub async fn asset(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    serve(&path)
}

/// `GET /favicon.ico`: browsers ask for it whatever the page says; the SVG icon answers.
pub async fn favicon() -> Result<HttpResponse, ApiError> {
    serve("favicon.svg")
}

fn serve(path: &str) -> Result<HttpResponse, ApiError> {
    // rust-embed looks names up in its compiled-in table, so `..` cannot reach the filesystem.
    let file = Assets::get(path).ok_or_else(|| ApiError::not_found("no such file"))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, file.metadata.mimetype()))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(file.data.into_owned()))
}
