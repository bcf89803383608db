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
    let window = web_sys::window().ok_or_else(|| AppError::Wallet("no window".into()))?;
    let ethereum = Reflect::get(&window, &JsValue::from_str("ethereum")).unwrap_or(JsValue::UNDEFINED);
    if ethereum.is_undefined() || ethereum.is_null() {
        return Err(AppError::Wallet(
            "no wallet in this browser: install a wallet extension (MetaMask, Rabby, …)".into(),
        ));
    }
    let f: Function = Reflect::get(&ethereum, &JsValue::from_str("request"))
        .ok()
        .and_then(|f| f.dyn_into().ok())
        .ok_or_else(|| AppError::Wallet("the wallet has no request method (not EIP-1193)".into()))?;
    let args = serde_json::json!({ "method": method, "params": params }).to_string();
    let args = JSON::parse(&args).map_err(|e| AppError::Wallet(crate::http::js_err(e)))?;
    let promise: Promise = f
        .call1(&ethereum, &args)
        .map_err(wallet_err)?
        .dyn_into()
        .map_err(|_| AppError::Wallet("not a promise".into()))?;
    let answer = JsFuture::from(promise).await.map_err(wallet_err)?;
    if answer.is_undefined() || answer.is_null() {
        return Ok(Value::Null);
    }
    let text = JSON::stringify(&answer).map_err(wallet_err)?.as_string().unwrap_or_default();
    serde_json::from_str(&text).map_err(|e| AppError::Wallet(format!("{method}: {e}")))
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
