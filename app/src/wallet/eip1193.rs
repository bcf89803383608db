//! The page's wallet, through EIP-1193 (`window.ethereum.request`, what MetaMask, Rabby and
//! other extensions inject). alloy has no EIP-1193 transport; requests and answers cross as
//! JSON.

use js_sys::{Function, Promise, Reflect, JSON};
use serde_json::Value;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::error::AppError;

/// Sends `{method, params}` to the injected wallet and returns its answer.
pub async fn request(method: &str, params: Value) -> Result<Value, AppError> {
    request_detailed(method, params).await.map_err(|f| match f {
        Failure::Wallet(e) => wallet_err(e),
        Failure::App(e) => e,
    })
}

/// Why a request failed: the wallet's EIP-1193 error as it came, or the page's own.
pub enum Failure {
    /// The wallet's error object (`code`, `message`, `data`).
    Wallet(JsValue),
    /// No wallet, or an answer the page cannot read.
    App(AppError),
}

impl Failure {
    /// The revert data a failed transaction's error carries (`data`, or `data.data`, or
    /// `data.originalError.data`, where wallets put what the node said), if any.
    pub fn revert_data(&self) -> Option<alloy_primitives::Bytes> {
        let Failure::Wallet(e) = self else { return None };
        let get = |v: &JsValue, k: &str| Reflect::get(v, &JsValue::from_str(k)).ok().filter(|v| !v.is_undefined());
        let data = get(e, "data")?;
        [Some(data.clone()), get(&data, "data"), get(&data, "originalError").and_then(|o| get(&o, "data"))]
            .into_iter()
            .flatten()
            .find_map(|d| d.as_string()?.parse().ok())
    }

    /// Whether the wallet says the node reverted it (EIP-1474 code 3, revert data, or a
    /// message that says so).
    pub fn is_revert(&self) -> bool {
        match self {
            Failure::Wallet(e) => {
                let code = Reflect::get(e, &JsValue::from_str("code")).ok().and_then(|c| c.as_f64());
                code == Some(3.0) || self.revert_data().is_some() || self.to_string().to_lowercase().contains("revert")
            }
            Failure::App(_) => false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Wallet(e) => write!(f, "{}", wallet_err(e.clone())),
            Failure::App(e) => write!(f, "{e}"),
        }
    }
}

/// [`request`], with the wallet's error object kept whole.
pub async fn request_detailed(method: &str, params: Value) -> Result<Value, Failure> {
    let app = Failure::App;
    let window = web_sys::window().ok_or_else(|| app(AppError::Wallet("no window".into())))?;
    let ethereum = Reflect::get(&window, &JsValue::from_str("ethereum")).unwrap_or(JsValue::UNDEFINED);
    if ethereum.is_undefined() || ethereum.is_null() {
        return Err(app(AppError::Wallet(
            "no wallet in this browser: install a wallet extension (MetaMask, Rabby, …)".into(),
        )));
    }
    let f: Function = Reflect::get(&ethereum, &JsValue::from_str("request"))
        .ok()
        .and_then(|f| f.dyn_into().ok())
        .ok_or_else(|| app(AppError::Wallet("the wallet has no request method (not EIP-1193)".into())))?;
    let args = serde_json::json!({ "method": method, "params": params }).to_string();
    let args = JSON::parse(&args).map_err(|e| app(AppError::Wallet(crate::http::js_err(e))))?;
    let promise: Promise = f
        .call1(&ethereum, &args)
        .map_err(Failure::Wallet)?
        .dyn_into()
        .map_err(|_| app(AppError::Wallet("not a promise".into())))?;
    let answer = JsFuture::from(promise).await.map_err(Failure::Wallet)?;
    if answer.is_undefined() || answer.is_null() {
        return Ok(Value::Null);
    }
    let text = JSON::stringify(&answer).map_err(|e| app(wallet_err(e)))?.as_string().unwrap_or_default();
    serde_json::from_str(&text).map_err(|e| app(AppError::Wallet(format!("{method}: {e}"))))
}

/// A wallet's refusal: EIP-1193 errors carry `code` (4001: the user said no) and `message`.
fn wallet_err(e: JsValue) -> AppError {
    let code = Reflect::get(&e, &JsValue::from_str("code")).ok().and_then(|c| c.as_f64());
    let message = Reflect::get(&e, &JsValue::from_str("message"))
        .ok()
        .and_then(|m| m.as_string())
        .unwrap_or_else(|| crate::http::js_err(e));
    match code {
        Some(4001.0) => AppError::Wallet(format!("you declined in the wallet ({message})")),
        Some(c) => AppError::Wallet(format!("the wallet refused ({c}): {message}")),
        None => AppError::Wallet(message),
    }
}
