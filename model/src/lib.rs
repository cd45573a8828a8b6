//! Model clients: the Anthropic Messages API over hyper and rustls with
//! streaming SSE, behind a small provider trait.
//!
//! This crate owns the wire conversation with a model provider: building the
//! `POST /v1/messages` request (system prompt, tools, messages, prompt-cache
//! breakpoints), decoding the event stream, assembling the final message with
//! its usage, and classifying failures into typed errors (overloaded, rate
//! limited with `retry-after`, other API errors with the envelope's
//! `error.type`, transport, timeouts, malformed streams). It does not retry,
//! does not know about sessions or the log, and does not decide what a tool
//! call means: that is the harness's job.
//!
//! ```text
//!  MessagesRequest ──► Provider::stream ──► ModelStream::next ─► StreamItem::Event(..)*
//!                                                             └► StreamItem::Done(Response)
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod anthropic;
pub mod error;
pub mod sse;
pub mod stream;
pub mod types;

pub use anthropic::{AnthropicConfig, AnthropicProvider, ApiKey, RawAnthropicConfig};
pub use error::{ModelError, ModelErrorKind, TimeoutPhase};
pub use stream::{BlockDelta, BlockStart, EventStream, ModelStream, StreamEvent, StreamItem};
pub use types::{
    CacheControl, ContentBlock, Message, MessagesRequest, Response, ResponseBlock, Role,
    StopReason, SystemBlock, ToolDefinition, Usage,
};

/// A model provider: turns a request into a stream of events.
///
/// Implementations translate their own wire format into [`StreamEvent`]s and
/// their failures into [`ModelError`]s; the assembly and order checks in
/// [`ModelStream`] are shared.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Short provider name for logs and errors (e.g. `anthropic`).
    fn name(&self) -> &str;

    /// Start a streamed call. Returns once the provider accepted the request
    /// (response head received); the events follow on the stream.
    async fn stream(&self, request: &MessagesRequest) -> Result<ModelStream, ModelError>;
}
