//! Chat prompts: a model's Jinja chat template applied to a conversation.
//!
//! Main type: [`ChatTemplate`], a template (as found in GGUF `tokenizer.chat_template` or
//! `tokenizer_config.json`) compiled once with [minijinja] and rendered for a list of
//! [`ChatMessage`]s, the way Hugging Face's `apply_chat_template` does: `trim_blocks` and
//! `lstrip_blocks` on, Python string methods (`.strip()`, `.startswith()` ...) through
//! `minijinja_contrib::pycompat`, plus `raise_exception` and `strftime_now`. Variables:
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token`.
//!
//! This module does not tokenize (see [`super::tokenizer`]); the rendered prompt already holds
//! any special tokens as text, so it is encoded without adding BOS a second time.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use super::tokenizer::Tokenizer;
use super::ModelError;

/// Name under which the template is stored in its environment.
const NAME: &str = "chat";

/// Template instructions one render may run, besides [`FUEL_PER_MESSAGE`] per message. Real
/// templates (SmolLM, Llama 3, Qwen2, Mistral) spend tens of instructions per message and a
/// few hundred in all; a template with nested loops over `range` stops here within
/// milliseconds instead of pinning a worker.
pub const FUEL_BASE: u64 = 1_000_000;
/// Template instructions allowed per message, on top of [`FUEL_BASE`].
pub const FUEL_PER_MESSAGE: u64 = 10_000;
/// Longest prompt a render may produce, in bytes: the template's own text plus this. A
/// conversation is echoed about once (plus role markers), so four times the messages' length
/// is ample.
pub const MAX_OUTPUT_BASE: usize = 1 << 20;
/// Longest template source accepted, in bytes (real ones are a few KiB).
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;

/// ChatML, the fallback for models that ship no template.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks: `system`, `user` or `assistant`.
    pub role: String,
    /// What is said.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template with the model's BOS/EOS strings.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

fn template_err(e: Error) -> ModelError {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    ModelError::Template(msg)
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the texts the template sees under
    /// those names (see [`Tokenizer::bos_str`], [`Tokenizer::eos_str`]).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ModelError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(ModelError::Template(format!(
                "{} bytes of template source, at most {MAX_TEMPLATE_BYTES}",
                source.len()
            )));
        }
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.to_string()).map_err(template_err)?;
        Ok(ChatTemplate { env, bos_token: bos_token.to_string(), eos_token: eos_token.to_string() })
    }

    /// ChatML (`<|im_start|>role\ncontent<|im_end|>\n`), for models without a template.
    pub fn chatml() -> Self {
        Self::new(CHATML, "", "<|im_end|>").expect("the built-in ChatML template compiles")
    }

    /// The model's template (`source`), or ChatML when it has none, with the tokenizer's
    /// BOS/EOS texts.
    pub fn for_model(source: Option<&str>, tokenizer: &Tokenizer) -> Result<Self, ModelError> {
        let bos = tokenizer.bos_str().unwrap_or_default();
        let eos = tokenizer.eos_str().unwrap_or_default();
        match source {
            Some(s) => Self::new(s, &bos, &eos),
            None => Ok(Self::chatml()),
        }
    }

    /// The prompt for `messages`; with `add_generation_prompt`, it ends where the assistant's
    /// reply begins.
    ///
    /// Bounded: at most [`FUEL_BASE`] + [`FUEL_PER_MESSAGE`] per message template
    /// instructions, and [`MAX_OUTPUT_BASE`] + 4 times the messages' bytes of output; past
    /// either the render stops with [`ModelError::Template`].
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, ModelError> {
        let n = messages.len() as u64;
        let fuel = FUEL_BASE.saturating_add(FUEL_PER_MESSAGE.saturating_mul(n));
        let text: usize = messages.iter().map(|m| m.role.len().saturating_add(m.content.len())).sum();
        let max_out = MAX_OUTPUT_BASE.saturating_add(text.saturating_mul(4));
        // Fuel is set on the environment: a clone (templates are shared) per render.
        let mut env = self.env.clone();
        env.set_fuel(Some(fuel));
        let template = env.get_template(NAME).map_err(template_err)?;
        let mut out = Bounded { buf: Vec::new(), max: max_out };
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        match template.render_captured_to(ctx, &mut out) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::OutOfFuel => {
                return Err(ModelError::Template(format!(
                    "ran out of fuel: more than {fuel} instructions for {n} messages"
                )))
            }
            Err(_) if out.buf.len() > max_out => {
                return Err(ModelError::Template(format!("output longer than {max_out} bytes for {n} messages")))
            }
            Err(e) => return Err(template_err(e)),
        }
        String::from_utf8(out.buf).map_err(|e| ModelError::Template(format!("output is not UTF-8: {e}")))
    }
}

/// A writer that fails once more than `max` bytes were written (`buf` then holds `max + 1`
/// or more, which is how the caller tells this failure from others).
struct Bounded {
    buf: Vec<u8>,
    max: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.max {
            self.buf.resize(self.max + 1, 0);
            return Err(std::io::Error::other("template output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `raise_exception(message)`: templates call it to reject a conversation.
fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("template raised: {message}")))
}

/// `strftime_now(format)`: the current UTC date/time; supports `%Y %y %m %d %-d %e %B %b %A %a
/// %H %M %S %j %%`, other directives are kept as written.
fn strftime_now(format: String) -> String {
    let secs = web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    strftime(&format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// Formats `unix_secs` (UTC) with a subset of C `strftime`.
fn strftime(format: &str, unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs_of_day = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let is_leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[(m - 1) as usize] + d + u32::from(is_leap && m > 2);
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('-') => match chars.next() {
                Some('d') => out.push_str(&d.to_string()),
                Some('m') => out.push_str(&m.to_string()),
                Some(other) => {
                    out.push_str("%-");
                    out.push(other);
                }
                None => out.push_str("%-"),
            },
            Some('B') => out.push_str(month),
            Some('b') => out.push_str(&month[..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{:02}", secs_of_day / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs_of_day / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs_of_day % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRANCE_PROMPT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

    #[test]
    fn smollm_template_and_tokens() {
        let md = crate::model::test_model::metadata();
        let tk = Tokenizer::from_gguf(&md).expect("tokenizer");
        let source = md.str("tokenizer.chat_template").expect("string").expect("template present");
        let t = ChatTemplate::for_model(Some(source), &tk).unwrap();
        let messages = [ChatMessage::user("What is the capital of France?")];
        let prompt = t.render(&messages, true).unwrap();
        assert_eq!(prompt, FRANCE_PROMPT);
        let ids = tk.encode(&prompt).unwrap();
        assert_eq!(ids.len(), 37, "{ids:?}");
        assert_eq!(ids[0], 1);
        assert_eq!(tk.token_str(ids[36]).as_deref(), Some("Ċ"), "ends with a newline token");
        assert_eq!(tk.decode(&ids).unwrap(), prompt.replace("<|im_start|>", "").replace("<|im_end|>", ""));

        // An explicit system message replaces the default one; no generation prompt.
        let messages = [ChatMessage::system("Be brief."), ChatMessage::user("Hi"), ChatMessage::assistant("Hello!")];
        assert_eq!(
            t.render(&messages, false).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        );
    }

    #[test]
    fn chatml_fallback() {
        let t = ChatTemplate::chatml();
        let p = t.render(&[ChatMessage::system("S"), ChatMessage::user("U")], true).unwrap();
        assert_eq!(p, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
        assert_eq!(t.render(&[ChatMessage::user("U")], false).unwrap(), "<|im_start|>user\nU<|im_end|>\n");
    }

    #[test]
    fn python_methods_bos_and_exceptions() {
        // Llama-2-like: bos/eos variables, `.strip()`, raise_exception, loop controls, lstrip/trim.
        let source = r#"{{ bos_token }}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {{- '[INST] ' + message['content'].strip() + ' [/INST]' }}
    {%- else %}
        {{- ' ' + message.content.strip() + ' ' + eos_token }}
    {%- endif %}
{%- endfor %}"#;
        let t = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        let p = t.render(&[ChatMessage::user("  Hi  "), ChatMessage::assistant("Hello\n")], false).unwrap();
        assert_eq!(p, "<s>[INST] Hi [/INST] Hello </s>");
        let e = t.render(&[ChatMessage::assistant("x")], false).unwrap_err().to_string();
        assert!(e.contains("Conversation roles must alternate"), "{e}");

        let t = ChatTemplate::new("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content|upper }}{% endfor %}{{ messages|tojson }}", "", "").unwrap();
        assert_eq!(
            t.render(&[ChatMessage::user("a"), ChatMessage::user("b")], false).unwrap(),
            r#"A[{"role":"user","content":"a"},{"role":"user","content":"b"}]"#
        );
        let t = ChatTemplate::new("{{ 'x' if 'abc'.startswith('ab') }}{{ ' a b '.split()|length }}", "", "").unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "x2");
    }

    #[test]
    fn runaway_templates_stop_with_a_clear_error() {
        let tk = Tokenizer::from_gguf(&crate::model::test_model::metadata()).expect("tokenizer");
        let msgs = [ChatMessage::user("hi")];
        let nested = "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}";
        let t = ChatTemplate::for_model(Some(nested), &tk).expect("compiles");
        let started = std::time::Instant::now();
        let e = t.render(&msgs, true).unwrap_err().to_string();
        assert!(e.contains("ran out of fuel") && e.contains("for 1 messages"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
        // Few instructions, huge output: 100 strings of 100 MB.
        let wide = "{% for a in range(100) %}{{ 'x' * 100000000 }}{% endfor %}";
        let e = ChatTemplate::for_model(Some(wide), &tk).unwrap().render(&msgs, true).unwrap_err().to_string();
        assert!(e.contains("output longer than"), "{e}");
        let e = ChatTemplate::new(&"x".repeat(MAX_TEMPLATE_BYTES + 1), "", "").unwrap_err().to_string();
        assert!(e.contains("bytes of template source"), "{e}");
        // The default model's own template still renders a long conversation.
        let real = crate::model::test_model::metadata().str("tokenizer.chat_template").unwrap().unwrap().to_string();
        let t = ChatTemplate::for_model(Some(&real), &tk).unwrap();
        let long: Vec<ChatMessage> = (0..2000).map(|i| ChatMessage::user(format!("message {i}"))).collect();
        assert!(t.render(&long, true).unwrap().contains("message 1999"));
    }

    #[test]
    fn bad_templates() {
        let e = ChatTemplate::new("{% for x in %}", "", "").unwrap_err();
        assert!(matches!(e, ModelError::Template(_)), "{e}");
        let t = ChatTemplate::new("{{ messages[0].content.nosuchmethod() }}", "", "").unwrap();
        let e = t.render(&[ChatMessage::user("a")], false).unwrap_err();
        assert!(matches!(e, ModelError::Template(_)) && e.to_string().contains("nosuchmethod"), "{e}");
    }

    #[test]
    fn strftime_formats() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        let t = 1_722_000_000 - 1_722_000_000 % 86_400 + 13 * 3600 + 5 * 60 + 9;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(strftime("%A %B %-d, %y %H:%M:%S %j %%", t), "Friday July 26, 24 13:05:09 208 %");
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(strftime("%Y-%m-%d %a", 951_782_400), "2000-02-29 Tue");
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}", "", "").unwrap();
        assert!(t.render(&[], false).unwrap().parse::<u32>().unwrap() >= 2024);
    }

    #[test]
    fn message_serde() {
        let m: ChatMessage = serde_json::from_str(r#"{"role": "user", "content": "hi"}"#).unwrap();
        assert_eq!(m, ChatMessage::user("hi"));
        assert_eq!(serde_json::to_string(&ChatMessage::system("s")).unwrap(), r#"{"role":"system","content":"s"}"#);
    }
}
