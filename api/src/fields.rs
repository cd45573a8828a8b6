//! Reading request bodies field by field, so every rejection names the
//! field (`tools.0.configs.1.permission_policy.type: ...`).

use serde_json::{Map, Value};

use crate::error::ApiError;

/// A present-or-absent-or-null field of an update.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Patch<T> {
    /// Not in the request: keep.
    Keep,
    /// `null`: clear.
    Clear,
    /// A new value.
    Set(T),
}

/// A JSON object at a dotted path of the request.
#[derive(Debug, Clone)]
pub(crate) struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

/// The name of a JSON value's type, for messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `parent.key` (or `key` at the root).
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl<'a> Obj<'a> {
    /// `value` as an object at `path` (the root is `""`).
    pub(crate) fn new(path: &str, value: &'a Value) -> Result<Self, ApiError> {
        match value {
            Value::Object(map) => Ok(Obj {
                path: path.to_owned(),
                map,
            }),
            other => Err(ApiError::invalid(
                if path.is_empty() { "body" } else { path },
                format!("expected an object, got {}", type_name(other)),
            )),
        }
    }

    /// The path of `key` in this object.
    pub(crate) fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Refuses keys not in `allowed`.
    pub(crate) fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        for key in self.map.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(ApiError::invalid(&self.path(key), "unknown field"));
            }
        }
        Ok(())
    }

    /// The raw value of `key` (null counts as absent).
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Whether `key` is present (even as null).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// A required string.
    pub(crate) fn req_str(&self, key: &str) -> Result<&'a str, ApiError> {
        self.opt_str(key)?
            .ok_or_else(|| ApiError::invalid(&self.path(key), "field required"))
    }

    /// A required non-empty string.
    pub(crate) fn req_nonempty(&self, key: &str) -> Result<&'a str, ApiError> {
        let s = self.req_str(key)?;
        if s.trim().is_empty() {
            return Err(ApiError::invalid(&self.path(key), "must not be empty"));
        }
        Ok(s)
    }

    /// An optional string (null = absent).
    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(ApiError::invalid(
                &self.path(key),
                format!("expected a string, got {}", type_name(other)),
            )),
        }
    }

    /// An optional string of an update: absent keeps, null (or "") clears.
    pub(crate) fn patch_str(&self, key: &str) -> Result<Patch<&'a str>, ApiError> {
        match self.map.get(key) {
            None => Ok(Patch::Keep),
            Some(Value::Null) => Ok(Patch::Clear),
            Some(Value::String(s)) if s.is_empty() => Ok(Patch::Clear),
            Some(Value::String(s)) => Ok(Patch::Set(s)),
            Some(other) => Err(ApiError::invalid(
                &self.path(key),
                format!("expected a string or null, got {}", type_name(other)),
            )),
        }
    }

    /// An optional boolean.
    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(ApiError::invalid(
                &self.path(key),
                format!("expected a boolean, got {}", type_name(other)),
            )),
        }
    }

    /// An optional non-negative integer.
    pub(crate) fn opt_u64(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                ApiError::invalid(
                    &self.path(key),
                    format!("expected a non-negative integer, got {}", type_name(v)),
                )
            }),
        }
    }

    /// An optional array.
    pub(crate) fn opt_array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(other) => Err(ApiError::invalid(
                &self.path(key),
                format!("expected an array, got {}", type_name(other)),
            )),
        }
    }

    /// An optional nested object.
    pub(crate) fn opt_obj(&self, key: &str) -> Result<Option<Obj<'a>>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => Obj::new(&self.path(key), v).map(Some),
        }
    }
}

/// Limits of `metadata` maps (as published).
const METADATA_MAX_PAIRS: usize = 16;
const METADATA_MAX_KEY_CHARS: usize = 64;
const METADATA_MAX_VALUE_CHARS: usize = 512;

/// Validates a `metadata` map of a create request.
pub(crate) fn metadata(path: &str, value: Option<&Value>) -> Result<Map<String, Value>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Map::new());
    };
    let Value::Object(map) = value else {
        return Err(ApiError::invalid(
            path,
            format!("expected an object, got {}", type_name(value)),
        ));
    };
    for (k, v) in map {
        if !v.is_string() {
            return Err(ApiError::invalid(
                &join(path, k),
                format!("expected a string, got {}", type_name(v)),
            ));
        }
    }
    check_metadata(path, map)?;
    Ok(map.clone())
}

/// Applies the `metadata` patch `patch` (see [`patch_metadata`]) to the
/// `metadata` object of the resource body `body`, in place.
pub(crate) fn apply_metadata_patch(
    body: &mut Map<String, Value>,
    patch: &Value,
    empty_deletes: bool,
) -> Result<(), ApiError> {
    let current = body
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let next = patch_metadata("metadata", &current, patch, empty_deletes)?;
    body.insert("metadata".into(), Value::Object(next));
    Ok(())
}

/// Applies a metadata patch (a string upserts, null deletes; with
/// `empty_deletes`, "" deletes too) to `current`.
pub(crate) fn patch_metadata(
    path: &str,
    current: &Map<String, Value>,
    patch: &Value,
    empty_deletes: bool,
) -> Result<Map<String, Value>, ApiError> {
    let Value::Object(patch) = patch else {
        return Err(ApiError::invalid(
            path,
            format!("expected an object, got {}", type_name(patch)),
        ));
    };
    let mut out = current.clone();
    for (k, v) in patch {
        match v {
            Value::Null => {
                out.remove(k);
            }
            Value::String(s) if s.is_empty() && empty_deletes => {
                out.remove(k);
            }
            Value::String(_) => {
                out.insert(k.clone(), v.clone());
            }
            other => {
                return Err(ApiError::invalid(
                    &join(path, k),
                    format!("expected a string or null, got {}", type_name(other)),
                ))
            }
        }
    }
    check_metadata(path, &out)?;
    Ok(out)
}

fn check_metadata(path: &str, map: &Map<String, Value>) -> Result<(), ApiError> {
    if map.len() > METADATA_MAX_PAIRS {
        return Err(ApiError::invalid(
            path,
            format!(
                "at most {METADATA_MAX_PAIRS} pairs are allowed, got {}",
                map.len()
            ),
        ));
    }
    for (k, v) in map {
        if k.is_empty() || k.chars().count() > METADATA_MAX_KEY_CHARS {
            return Err(ApiError::invalid(
                &join(path, k),
                format!("keys must be 1 to {METADATA_MAX_KEY_CHARS} characters"),
            ));
        }
        if v.as_str()
            .is_some_and(|s| s.chars().count() > METADATA_MAX_VALUE_CHARS)
        {
            return Err(ApiError::invalid(
                &join(path, k),
                format!("values must be at most {METADATA_MAX_VALUE_CHARS} characters"),
            ));
        }
    }
    Ok(())
}

/// `a, b or c` (for "expected ..." messages).
pub(crate) fn or_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    match names.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_the_field() {
        let v = json!({"name": 3, "tools": {}, "ok": "x", "empty": " "});
        let o = Obj::new("", &v).unwrap();
        assert_eq!(
            o.req_str("name").unwrap_err().to_string(),
            "name: expected a string, got a number"
        );
        assert_eq!(
            o.req_str("missing").unwrap_err().to_string(),
            "missing: field required"
        );
        assert_eq!(
            o.req_nonempty("empty").unwrap_err().to_string(),
            "empty: must not be empty"
        );
        assert_eq!(
            o.opt_array("tools").unwrap_err().to_string(),
            "tools: expected an array, got an object"
        );
        assert_eq!(
            o.only(&["name", "tools", "ok"]).unwrap_err().to_string(),
            "empty: unknown field"
        );
        assert_eq!(
            Obj::new("", &json!([1])).unwrap_err().to_string(),
            "body: expected an object, got an array"
        );
        let inner = json!({"a": {"b": 1}});
        let o = Obj::new("x", &inner).unwrap();
        let a = o.opt_obj("a").unwrap().unwrap();
        assert_eq!(
            a.req_str("b").unwrap_err().to_string(),
            "x.a.b: expected a string, got a number"
        );
    }

    #[test]
    fn metadata_limits_and_patches() {
        assert!(metadata("metadata", Some(&json!({"k": "v"}))).is_ok());
        assert_eq!(
            metadata("metadata", Some(&json!({"k": 1})))
                .unwrap_err()
                .to_string(),
            "metadata.k: expected a string, got a number"
        );
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert!(metadata("metadata", Some(&Value::Object(many)))
            .unwrap_err()
            .to_string()
            .contains("16 pairs"));
        let cur = metadata("m", Some(&json!({"a": "1", "b": "2"}))).unwrap();
        let out = patch_metadata("m", &cur, &json!({"a": null, "c": "3", "b": ""}), true).unwrap();
        assert_eq!(Value::Object(out), json!({"c": "3"}));
        let out = patch_metadata("m", &cur, &json!({"b": ""}), false).unwrap();
        assert_eq!(out["b"], json!(""));
    }
}
