//! Request and response shapes of the Messages API, as sent and received on
//! the wire (`POST /v1/messages`). Field names are the API's.
//!
//! Content blocks that this crate does not model (images, documents, search
//! results, thinking, server tools) pass through untouched as JSON values, so
//! a conversation rebuilt from a log never loses a block it cannot interpret.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A prompt-cache breakpoint (`cache_control`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheControl {
    /// Always `ephemeral`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Optional TTL, `5m` or `1h`; the API default (5 minutes) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

impl CacheControl {
    /// The default ephemeral breakpoint.
    pub fn ephemeral() -> Self {
        Self {
            kind: "ephemeral".to_owned(),
            ttl: None,
        }
    }
}

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The user (and tool results).
    User,
    /// The model.
    Assistant,
}

/// One block of a request message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    /// Plain text.
    Text {
        /// The text.
        text: String,
        /// Cache breakpoint on this block.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    /// A tool call the model made earlier (in an assistant message).
    ToolUse {
        /// The tool-use id the result refers to.
        id: String,
        /// Tool name.
        name: String,
        /// Tool input (a JSON object).
        input: Value,
        /// Cache breakpoint on this block.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    /// The result of a tool call (in a user message).
    ToolResult {
        /// The `id` of the matching `tool_use` block.
        tool_use_id: String,
        /// Result blocks (text, image, document, ...), passed through.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        content: Vec<Value>,
        /// Whether the tool failed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
        /// Cache breakpoint on this block.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    /// Any other block (image, document, thinking, ...), sent as is.
    #[serde(untagged)]
    Other(Value),
}

impl ContentBlock {
    /// A text block without a cache breakpoint.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text {
            text: text.into(),
            cache_control: None,
        }
    }

    /// Set (or clear) the cache breakpoint on this block. Returns false for
    /// a pass-through block that is not a JSON object.
    pub fn set_cache_control(&mut self, cc: Option<CacheControl>) -> bool {
        match self {
            Self::Text { cache_control, .. }
            | Self::ToolUse { cache_control, .. }
            | Self::ToolResult { cache_control, .. } => {
                *cache_control = cc;
                true
            }
            Self::Other(Value::Object(map)) => {
                match cc {
                    Some(cc) => match serde_json::to_value(cc) {
                        Ok(v) => {
                            map.insert("cache_control".to_owned(), v);
                        }
                        Err(_) => return false,
                    },
                    None => {
                        map.remove("cache_control");
                    }
                }
                true
            }
            Self::Other(_) => false,
        }
    }
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: Vec<ContentBlock>,
}

/// A text block of the system prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemBlock {
    /// Always `text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    pub text: String,
    /// Cache breakpoint on this block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<CacheControl>,
}

impl SystemBlock {
    /// A system text block.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            kind: "text".to_owned(),
            text: text.into(),
            cache_control: None,
        }
    }
}

/// A client tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// Tool name (`[A-Za-z0-9_-]{1,128}`).
    pub name: String,
    /// What the tool does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the input object.
    pub input_schema: Value,
    /// Cache breakpoint after this tool definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<CacheControl>,
}

/// A Messages API request. The client adds `stream: true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesRequest {
    /// Model id.
    pub model: String,
    /// Output token cap for this response.
    pub max_tokens: u32,
    /// System prompt blocks (omitted when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub system: Vec<SystemBlock>,
    /// The conversation, alternating user/assistant, starting with user.
    pub messages: Vec<Message>,
    /// Client tools (omitted when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDefinition>,
    /// `tool_choice`, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// `metadata` (e.g. `user_id`), passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

impl MessagesRequest {
    /// Place prompt-cache breakpoints: after the last tool definition, on the
    /// last system block (which caches tools + system), on the last block of
    /// the final message, and on the last block of the previous user message
    /// (so the prefix written by the previous request is read back). At most
    /// four breakpoints, the API's limit. Existing breakpoints are cleared
    /// first so the result depends only on the conversation.
    pub fn apply_cache_breakpoints(&mut self) {
        for t in &mut self.tools {
            t.cache_control = None;
        }
        for s in &mut self.system {
            s.cache_control = None;
        }
        for m in &mut self.messages {
            for b in &mut m.content {
                b.set_cache_control(None);
            }
        }
        if let Some(s) = self.system.last_mut() {
            s.cache_control = Some(CacheControl::ephemeral());
        } else if let Some(t) = self.tools.last_mut() {
            t.cache_control = Some(CacheControl::ephemeral());
        }
        let n = self.messages.len();
        let mut marked = 0;
        // The final message, then the user message before it.
        for (i, m) in self.messages.iter_mut().enumerate().rev() {
            if marked == 2 {
                break;
            }
            let wanted = i + 1 == n || (m.role == Role::User && marked == 1);
            if !wanted {
                continue;
            }
            if let Some(b) = m
                .content
                .iter_mut()
                .rev()
                .find(|b| !matches!(b, ContentBlock::Other(v) if is_thinking(v)))
            {
                if b.set_cache_control(Some(CacheControl::ephemeral())) {
                    marked += 1;
                }
            }
        }
    }
}

fn is_thinking(v: &Value) -> bool {
    matches!(
        v.get("type").and_then(Value::as_str),
        Some("thinking" | "redacted_thinking")
    )
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The model finished its turn.
    EndTurn,
    /// It wants tool results.
    ToolUse,
    /// Output token cap reached.
    MaxTokens,
    /// A stop sequence matched.
    StopSequence,
    /// A long server-tool turn was paused.
    PauseTurn,
    /// The model refused.
    Refusal,
    /// A value this client does not know.
    Unknown(String),
}

impl StopReason {
    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            Self::EndTurn => "end_turn",
            Self::ToolUse => "tool_use",
            Self::MaxTokens => "max_tokens",
            Self::StopSequence => "stop_sequence",
            Self::PauseTurn => "pause_turn",
            Self::Refusal => "refusal",
            Self::Unknown(s) => s,
        }
    }

    /// Parse the wire string.
    pub fn parse(s: &str) -> Self {
        match s {
            "end_turn" => Self::EndTurn,
            "tool_use" => Self::ToolUse,
            "max_tokens" => Self::MaxTokens,
            "stop_sequence" => Self::StopSequence,
            "pause_turn" => Self::PauseTurn,
            "refusal" => Self::Refusal,
            other => Self::Unknown(other.to_owned()),
        }
    }
}

impl Serialize for StopReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for StopReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Self::parse(&s))
    }
}

/// Token usage of one response (the API's `usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Uncached input tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// Input tokens written to the prompt cache.
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    /// Input tokens read from the prompt cache.
    #[serde(default)]
    pub cache_read_input_tokens: u64,
}

impl Usage {
    /// All tokens billed for this response.
    pub fn total(&self) -> u64 {
        self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
    }

    /// Add another response's usage.
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_creation_input_tokens += other.cache_creation_input_tokens;
        self.cache_read_input_tokens += other.cache_read_input_tokens;
    }
}

/// One block of the assembled response.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ResponseBlock {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// A tool call; `input` is the parsed JSON object.
    ToolUse {
        /// The model's tool-use id.
        id: String,
        /// Tool name.
        name: String,
        /// Tool input.
        input: Value,
    },
    /// Any other block (thinking, server tool use, ...) as the final JSON.
    Other(Value),
}

/// The assembled response of one streamed call.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The provider's message id.
    pub id: String,
    /// The model that answered.
    pub model: String,
    /// Content blocks in order.
    pub content: Vec<ResponseBlock>,
    /// Why it stopped.
    pub stop_reason: Option<StopReason>,
    /// The stop sequence that matched, if any.
    pub stop_sequence: Option<String>,
    /// Usage, combining `message_start` and the final `message_delta`.
    pub usage: Usage,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blocks_serialize_as_the_api_expects() {
        let m = Message {
            role: Role::User,
            content: vec![
                ContentBlock::text("hi"),
                ContentBlock::ToolResult {
                    tool_use_id: "t1".into(),
                    content: vec![json!({"type":"text","text":"ok"})],
                    is_error: false,
                    cache_control: None,
                },
                ContentBlock::Other(json!({"type":"image","source":{"type":"url","url":"u"}})),
            ],
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v,
            json!({"role":"user","content":[
                {"type":"text","text":"hi"},
                {"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"ok"}]},
                {"type":"image","source":{"type":"url","url":"u"}}
            ]})
        );
        let back: Message = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn cache_breakpoints_land_on_system_last_and_previous_user_message() {
        let mut r = MessagesRequest {
            model: "m".into(),
            max_tokens: 10,
            system: vec![SystemBlock::text("sys")],
            messages: vec![
                Message {
                    role: Role::User,
                    content: vec![ContentBlock::text("a")],
                },
                Message {
                    role: Role::Assistant,
                    content: vec![ContentBlock::ToolUse {
                        id: "t".into(),
                        name: "bash".into(),
                        input: json!({}),
                        cache_control: Some(CacheControl::ephemeral()),
                    }],
                },
                Message {
                    role: Role::User,
                    content: vec![ContentBlock::ToolResult {
                        tool_use_id: "t".into(),
                        content: vec![],
                        is_error: true,
                        cache_control: None,
                    }],
                },
            ],
            tools: vec![ToolDefinition {
                name: "bash".into(),
                description: None,
                input_schema: json!({"type":"object"}),
                cache_control: None,
            }],
            tool_choice: None,
            temperature: None,
            metadata: None,
        };
        r.apply_cache_breakpoints();
        let v = serde_json::to_value(&r).unwrap();
        let count = v.to_string().matches("cache_control").count();
        assert_eq!(count, 3, "{v}");
        assert!(v["system"][0]["cache_control"].is_object());
        assert!(v["messages"][2]["content"][0]["cache_control"].is_object());
        assert!(v["messages"][0]["content"][0]["cache_control"].is_object());
        assert!(v["messages"][1]["content"][0]
            .get("cache_control")
            .is_none());
    }

    #[test]
    fn stop_reason_round_trips_unknown_values() {
        let s: StopReason = serde_json::from_value(json!("model_context_window_exceeded")).unwrap();
        assert_eq!(
            s,
            StopReason::Unknown("model_context_window_exceeded".into())
        );
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!("model_context_window_exceeded")
        );
    }
}
