//! `ait chat`: a terminal chat against a swarm (`--swarm`) or a relay's HTTP API (`--url`),
//! streaming the answer, keeping the conversation for the session; `/reset` forgets it.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};

use anyhow::Context;
use libp2p::Multiaddr;
use serde_json::{json, Value};
use web_node::client::{ClientModel, GenerateOptions, SamplingParams};
use web_node::model::ChatMessage;

use crate::swarm_client::{chain, connect};

/// Options of `ait chat`.
#[derive(Clone, Debug, clap::Args)]
pub struct ChatOpt {
    /// Join the swarm through this relay (repeatable) and run the model from here.
    #[arg(long, value_name = "MULTIADDR")]
    pub swarm: Vec<Multiaddr>,
    /// Or talk to a relay's OpenAI-compatible API, e.g. http://127.0.0.1:8080.
    #[arg(long, conflicts_with = "swarm")]
    pub url: Option<String>,
    /// Bearer token for --url (also AIT_API_KEY).
    #[arg(long, env = "AIT_API_KEY")]
    pub api_key: Option<String>,
    /// With --swarm: the model file (default: the default model). With --url: the model name
    /// (default: the first the relay lists).
    #[arg(long)]
    pub model: Option<String>,
    /// A system prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Random seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// With --swarm: paying servers that charge.
    #[command(flatten)]
    pub pay: crate::settle::node::ClientPayOpt,
    /// With --swarm: spot checks of the servers.
    #[command(flatten)]
    pub audit: crate::swarm_client::AuditOpt,
}

/// Runs the REPL on stdin/stdout until EOF or `/exit`.
pub fn run(o: ChatOpt) -> anyhow::Result<()> {
    let mut backend = if let Some(url) = &o.url {
        Backend::Http(Http::new(url, o.api_key.clone(), o.model.clone())?)
    } else {
        anyhow::ensure!(!o.swarm.is_empty(), "give --swarm MULTIADDR or --url URL");
        let path = match &o.model {
            Some(p) => p.into(),
            None => crate::fetch::default_model()?,
        };
        let model = ClientModel::load(&path).context("loading the model")?;
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let (opts, accuser) = rt.block_on(o.pay.open())?;
        let paying = opts.payer.is_some();
        let handle = rt.block_on(connect(&o.swarm))?;
        Backend::Swarm {
            chain: Box::new(o.audit.apply(chain(handle, &model, opts))),
            model: Box::new(model),
            rt,
            paying,
            accuser,
        }
    };
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("Type a message; /reset forgets the conversation, /exit (or Ctrl-D) quits.");
    }
    let mut history: Vec<ChatMessage> = o.system.iter().map(|s| ChatMessage::system(s.clone())).collect();
    let mut stdout = std::io::stdout();
    let mut lines = std::io::stdin().lock().lines();
    loop {
        if interactive {
            print!("> ");
            stdout.flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.retain(|m| m.role == "system");
                println!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage::user(line));
        let mut print = |piece: &str| {
            let _ = stdout.write_all(piece.as_bytes()).and_then(|()| stdout.flush());
        };
        match backend.answer(&history, &o, &mut print) {
            Ok(text) => history.push(ChatMessage::assistant(text)),
            Err(e) => {
                history.pop();
                eprintln!("\nerror: {e:#}");
            }
        }
        println!();
    }
    Ok(())
}

enum Backend {
    Swarm {
        model: Box<ClientModel>,
        chain: Box<web_node::net::chain::SwarmChain>,
        rt: tokio::runtime::Runtime,
        /// Whether the chain pays servers that charge (then each answer's cost is printed).
        paying: bool,
        /// What accuses faulty nodes on chain (with `--pay`).
        accuser: Option<crate::settle::tribunal::Accuser>,
    },
    Http(Http),
}

impl Backend {
    fn answer(&mut self, history: &[ChatMessage], o: &ChatOpt, print: &mut dyn FnMut(&str)) -> anyhow::Result<String> {
        match self {
            Backend::Swarm { model, chain, rt, paying, accuser } => {
                let opts = GenerateOptions {
                    max_tokens: o.max_tokens,
                    sampling: SamplingParams {
                        temperature: o.temperature,
                        top_p: o.top_p,
                        top_k: 0,
                        seed: o.seed,
                        ..SamplingParams::default()
                    },
                    ..GenerateOptions::default()
                };
                let g = rt.block_on(model.chat(chain.as_mut(), history, &opts, |p| print(p)));
                if *paying {
                    // The answer ended the route: what it paid includes the closing vouchers
                    // (and is said whether the answer completed or not).
                    eprint!("\n(cost: {} AIT)", web_node::settle::format_ait(chain.paid()));
                }
                rt.block_on(crate::swarm_client::audit(chain.as_mut(), accuser.as_ref()));
                Ok(g?.text)
            }
            Backend::Http(h) => h.answer(history, o, print),
        }
    }
}

/// Longest line of the relay's event stream `ait chat --url` accepts (an event is one line).
pub const MAX_EVENT_LINE: usize = 1 << 20;

/// Reads the next line of `r` into `buf` (without its `\n` or `\r\n`), or `None` at the end:
/// at most `max` bytes (a `\r` counts), so a server cannot make the client buffer without bound.
pub fn read_line_bounded<'a>(
    r: &mut impl BufRead,
    buf: &'a mut Vec<u8>,
    max: usize,
) -> anyhow::Result<Option<&'a str>> {
    buf.clear();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    if r.by_ref().take(limit).read_until(b'\n', buf)? == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    } else if buf.len() > max {
        anyhow::bail!("the relay sent a line longer than {max} bytes; giving up on this answer");
    }
    Ok(Some(std::str::from_utf8(buf).context("the relay sent a line that is not UTF-8")?))
}

struct Http {
    agent: ureq::Agent,
    base: String,
    key: Option<String>,
    model: String,
}

impl Http {
    fn new(url: &str, key: Option<String>, model: Option<String>) -> anyhow::Result<Http> {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let base = url.trim_end_matches('/').trim_end_matches("/v1").to_string();
        let mut h = Http { agent, base, key, model: model.unwrap_or_default() };
        if h.model.is_empty() {
            let list = h.get("/v1/models")?;
            h.model = list["data"][0]["id"].as_str().context("the relay lists no model")?.to_string();
        }
        Ok(h)
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut resp = req.call().with_context(|| format!("GET {}{path}", self.base))?;
        let status = resp.status();
        let body: Value = resp.body_mut().read_json()?;
        anyhow::ensure!(status.is_success(), "{}: {}", status, body["error"]["message"]);
        Ok(body)
    }

    fn answer(&self, history: &[ChatMessage], o: &ChatOpt, print: &mut dyn FnMut(&str)) -> anyhow::Result<String> {
        let messages: Vec<Value> = history.iter().map(|m| json!({ "role": m.role, "content": m.content })).collect();
        let body = json!({ "model": self.model, "messages": messages, "stream": true, "max_tokens": o.max_tokens,
                           "temperature": o.temperature, "top_p": o.top_p, "seed": o.seed,
                           "stream_options": { "include_usage": true } });
        let mut req = self.agent.post(format!("{}/v1/chat/completions", self.base));
        if let Some(k) = &self.key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut resp = req.send_json(&body).with_context(|| format!("POST {}/v1/chat/completions", self.base))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let err: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
            anyhow::bail!("{}: {}", status, err["error"]["message"]);
        }
        let mut text = String::new();
        let mut events = BufReader::new(resp.into_body().into_reader());
        let mut buf = Vec::new();
        while let Some(line) = read_line_bounded(&mut events, &mut buf, MAX_EVENT_LINE)? {
            let Some(data) = line.strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                break;
            }
            let v: Value = serde_json::from_str(data).context("bad event from the relay")?;
            if let Some(msg) = v["error"]["message"].as_str() {
                anyhow::bail!("{msg}");
            }
            if let Some(piece) = v["choices"][0]["delta"]["content"].as_str() {
                print(piece);
                text.push_str(piece);
            }
            // A relay that pays servers says what the answer cost.
            if let Some(cost) = v["usage"]["cost"].as_str() {
                eprint!("\n(cost: {cost} AIT)");
            }
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded() {
        let mut buf = Vec::new();
        let mut r = std::io::Cursor::new(b"data\r\n\nabcd\nlast".to_vec());
        assert_eq!(read_line_bounded(&mut r, &mut buf, 5).expect("ok"), Some("data"));
        assert_eq!(read_line_bounded(&mut r, &mut buf, 5).expect("ok"), Some(""));
        assert_eq!(read_line_bounded(&mut r, &mut buf, 5).expect("ok"), Some("abcd"));
        assert_eq!(read_line_bounded(&mut r, &mut buf, 5).expect("ok"), Some("last"));
        assert_eq!(read_line_bounded(&mut r, &mut buf, 5).expect("ok"), None);
        let mut long = std::io::Cursor::new(b"abcdef\n".to_vec());
        let e = read_line_bounded(&mut long, &mut buf, 5).expect_err("too long");
        assert!(e.to_string().contains("longer than 5 bytes"), "{e}");
    }
}
