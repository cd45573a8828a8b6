//! The console's CSS and JS, embedded in the binary (no CDN, no Node).

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

/// The stylesheet.
pub const CSS: &str = include_str!("../static/console.css");
/// The script (progressive: live status and timeline; pages work without it).
pub const JS: &str = include_str!("../static/console.js");

/// `GET /console/static/{file}` (no sign-in needed: nothing secret).
pub async fn serve(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such file").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        body,
    )
        .into_response()
}
