//! The JSON body of a request, read under the size limit.

use axum::extract::{FromRequest, Request};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use crate::edge::BodyLimit;
use crate::error::ApiError;
use crate::fields::type_name;

/// A request body that is a JSON object.
#[derive(Debug)]
pub(crate) struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(crate::config::DEFAULT_MAX_BODY_BYTES, |l| l.0);
        let body = Limited::new(
            req.into_body(),
            usize::try_from(limit).unwrap_or(usize::MAX),
        );
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ApiError::TooLarge { limit_bytes: limit })
            }
            Err(e) => return Err(ApiError::invalid("body", format!("could not be read: {e}"))),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid(
                "body",
                "expected a JSON object, got an empty body",
            ));
        }
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid("body", format!("invalid JSON: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::invalid(
                "body",
                format!("expected a JSON object, got {}", type_name(&value)),
            ));
        }
        Ok(JsonBody(value))
    }
}
