//! OpenAI API request and response shapes (the subset `ait relay --http` serves), and its
//! error shape.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// `stop`: one string or several.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop sequence.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Stop {
    /// As a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// A message's `content`: a string, or parts of which the text ones count.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type": "text", "text": ...}`; others are refused).
    Parts(Vec<Value>),
}

/// One chat message.
#[derive(Clone, Debug, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` (`developer` is treated as `system`).
    pub role: String,
    /// Its content.
    #[serde(default)]
    pub content: Option<Content>,
}

/// `stream_options`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by both endpoints.
#[derive(Clone, Debug, Deserialize)]
pub struct Sampling {
    /// Most new tokens.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Chat API's newer name for `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Temperature (default 1; 0 is greedy).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus threshold (default 1).
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Stop sequences.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Random seed: same seed, same text.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Choices per request: only 1 is supported.
    #[serde(default)]
    pub n: Option<u32>,
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatRequest {
    /// Model name or id.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Sampling.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `prompt`: a string or a list with one string.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One prompt.
    One(String),
    /// A list (only one element is supported).
    Many(Vec<String>),
}

/// `POST /v1/completions`.
#[derive(Clone, Debug, Deserialize)]
pub struct CompletionRequest {
    /// Model name or id.
    pub model: String,
    /// The prompt.
    pub prompt: Prompt,
    /// Sampling.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `usage`.
#[derive(Clone, Debug, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Both.
    pub total_tokens: usize,
    /// What the request cost, in AIT (decimal), when this relay pays servers that charge:
    /// what the vouchers it signed for the request's sessions pay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
}

/// An API error: HTTP status plus OpenAI's error object.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// `error.type`.
    pub kind: &'static str,
    /// `error.code`.
    pub code: Option<&'static str>,
    /// `error.param`.
    pub param: Option<&'static str>,
    /// `error.message`.
    pub message: String,
}

impl ApiError {
    /// 400 `invalid_request_error`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError { status: 400, kind: "invalid_request_error", code: None, param: None, message: message.into() }
    }

    /// 404 for a model this relay does not know.
    pub fn unknown_model(model: &str) -> ApiError {
        ApiError {
            status: 404,
            kind: "invalid_request_error",
            code: Some("model_not_found"),
            param: Some("model"),
            message: format!("The model `{model}` does not exist here; GET /v1/models lists what this relay serves."),
        }
    }

    /// 400 `context_length_exceeded` (`param`: `messages` or `prompt`).
    pub fn too_long(prompt: usize, context: usize, param: &'static str) -> ApiError {
        ApiError {
            status: 400,
            kind: "invalid_request_error",
            code: Some("context_length_exceeded"),
            param: Some(param),
            message: format!(
                "This model's maximum context length is {context} tokens; the prompt has {prompt} tokens, leaving no room to generate."
            ),
        }
    }

    /// 503: the swarm cannot run the model now.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 503,
            kind: "service_unavailable",
            code: Some("no_route"),
            param: None,
            message: message.into(),
        }
    }

    /// 401: missing or wrong API key.
    pub fn unauthorized() -> ApiError {
        ApiError {
            status: 401,
            kind: "invalid_request_error",
            code: Some("invalid_api_key"),
            param: None,
            message: "Missing or incorrect API key (send `Authorization: Bearer <key>`).".into(),
        }
    }

    /// 429: every API slot is taken and the queue is full.
    pub fn queue_full(running: usize, queued: usize) -> ApiError {
        ApiError {
            status: 429,
            kind: "rate_limit_error",
            code: Some("queue_full"),
            param: None,
            message: format!(
                "This relay is busy: {running} requests running and {queued} waiting (the most it queues); retry later."
            ),
        }
    }

    /// 402: the API key's account spent what it paid in advance.
    pub fn credits_used(name: &str, prepaid: alloy::primitives::U256) -> ApiError {
        ApiError {
            status: 402,
            kind: "insufficient_quota",
            code: Some("insufficient_credits"),
            param: None,
            message: format!(
                "The account `{name}` spent the {} AIT it paid in advance; ask this relay's operator to top it up.",
                web_node::settle::format_ait(prepaid)
            ),
        }
    }

    /// 429: the API key's account runs as many requests as it may at once.
    pub fn account_busy(name: &str, most: usize) -> ApiError {
        ApiError {
            status: 429,
            kind: "rate_limit_error",
            code: Some("too_many_requests"),
            param: None,
            message: format!(
                "The account `{name}` runs {most} requests already, the most it may at once; retry when one ends."
            ),
        }
    }

    /// 429: the API key's account used its tokens for today.
    pub fn quota_used(name: &str, quota: u64) -> ApiError {
        ApiError {
            status: 429,
            kind: "insufficient_quota",
            code: Some("daily_quota_exceeded"),
            param: None,
            message: format!(
                "The account `{name}` used its {quota} tokens for today; the quota renews at midnight UTC."
            ),
        }
    }

    /// 413: the request body is larger than `limit` bytes.
    pub fn body_too_large(limit: usize) -> ApiError {
        ApiError {
            status: 413,
            kind: "invalid_request_error",
            code: Some("body_too_large"),
            param: None,
            message: format!("The request body is larger than this relay's limit of {limit} bytes."),
        }
    }

    /// 408: the request body did not arrive within `secs` seconds.
    pub fn body_timeout(secs: u64) -> ApiError {
        ApiError {
            status: 408,
            kind: "invalid_request_error",
            code: Some("request_timeout"),
            param: None,
            message: format!("The request body did not arrive within {secs} s."),
        }
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError { status: 500, kind: "server_error", code: None, param: None, message: message.into() }
    }

    /// The JSON body: `{"error": {...}}`.
    pub fn body(&self) -> Value {
        json!({ "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code } })
    }
}
