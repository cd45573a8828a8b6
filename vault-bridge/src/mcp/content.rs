//! MCP tool-result content → Anthropic content blocks: text as text; images
//! as `{"type":"image","source":{"type":"base64","media_type","data"}}`;
//! embedded text resources as text; what has no Anthropic form (audio,
//! binary resources, resource links) as a text line saying what it was.
//! A result with no content but `structuredContent` becomes its JSON text.

use serde_json::{json, Value};

fn text(t: impl Into<String>) -> Value {
    json!({"type": "text", "text": t.into()})
}

fn str_of<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// Convert one MCP content item.
pub fn block(item: &Value) -> Value {
    match str_of(item, "type") {
        Some("text") => text(str_of(item, "text").unwrap_or_default()),
        Some("image") => json!({
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": str_of(item, "mimeType").unwrap_or("application/octet-stream"),
                "data": str_of(item, "data").unwrap_or_default(),
            }
        }),
        Some("resource") => {
            let r = item.get("resource").unwrap_or(&Value::Null);
            match str_of(r, "text") {
                Some(t) => text(t),
                None => text(format!(
                    "[binary resource {} ({}) omitted]",
                    str_of(r, "uri").unwrap_or("?"),
                    str_of(r, "mimeType").unwrap_or("unknown type")
                )),
            }
        }
        Some("resource_link") => text(format!(
            "[resource link: {} {}]",
            str_of(item, "name").unwrap_or_default(),
            str_of(item, "uri").unwrap_or_default()
        )),
        Some("audio") => text(format!(
            "[audio ({}) omitted]",
            str_of(item, "mimeType").unwrap_or("unknown type")
        )),
        _ => text(item.to_string()),
    }
}

/// Convert a `tools/call` result's `content` (and `structuredContent` when
/// there is no content).
pub fn blocks(content: &[Value], structured: Option<&Value>) -> Vec<Value> {
    let mut out: Vec<Value> = content.iter().map(block).collect();
    if out.is_empty() {
        if let Some(s) = structured {
            out.push(text(s.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcp_content_becomes_anthropic_blocks() {
        let c = vec![
            json!({"type": "text", "text": "hi"}),
            json!({"type": "image", "data": "aGk=", "mimeType": "image/png"}),
            json!({"type": "resource", "resource": {"uri": "file:///a", "text": "body"}}),
            json!({"type": "resource", "resource": {"uri": "file:///b", "blob": "AA==", "mimeType": "application/pdf"}}),
            json!({"type": "audio", "data": "AA==", "mimeType": "audio/wav"}),
        ];
        let b = blocks(&c, None);
        assert_eq!(b[0], json!({"type": "text", "text": "hi"}));
        assert_eq!(
            b[1],
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGk="}})
        );
        assert_eq!(b[2], json!({"type": "text", "text": "body"}));
        assert!(b[3]["text"].as_str().unwrap().contains("file:///b"));
        assert!(b[4]["text"].as_str().unwrap().contains("audio/wav"));
        let s = json!({"n": 1});
        assert_eq!(
            blocks(&[], Some(&s)),
            vec![json!({"type": "text", "text": "{\"n\":1}"})]
        );
    }
}
