//! The dashboard, built from `web/` by `build.rs` (esbuild) and embedded in
//! the binary, so one binary serves everything and nothing comes from a CDN.

use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!(concat!(env!("OUT_DIR"), "/web/index.html"));
const APP_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/web/app.js"));
const APP_CSS: &str = include_str!(concat!(env!("OUT_DIR"), "/web/app.css"));

/// `/assets/app.js`, `/assets/app.css`; any other path is the single-page
/// app's `index.html` (its router reads the path).
pub async fn serve(uri: Uri) -> Response {
    let (ctype, body) = match uri.path() {
        "/assets/app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "/assets/app.css" => ("text/css; charset=utf-8", APP_CSS),
        p if p.starts_with("/assets/") => {
            return (StatusCode::NOT_FOUND, "no such asset").into_response();
        }
        _ => ("text/html; charset=utf-8", INDEX),
    };
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
