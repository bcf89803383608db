//! HTTP from the page: JSON from the relay, downloads with progress, and the browser's Cache
//! Storage, where the tab keeps model parts (so a reload does not fetch them again).

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, Response};

use crate::error::AppError;

/// Name of the Cache Storage bucket holding model parts.
const CACHE: &str = "ait-parts-v1";

/// A message for the user from a failed JavaScript call.
pub fn js_err(e: JsValue) -> String {
    if let Some(err) = e.dyn_ref::<js_sys::Error>() {
        return String::from(err.message());
    }
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}

/// A failed JavaScript call as an [`AppError`].
pub fn browser_err(e: JsValue) -> AppError {
    AppError::Browser(js_err(e))
}

fn window() -> Result<web_sys::Window, AppError> {
    web_sys::window().ok_or_else(|| AppError::Browser("no window".into()))
}

async fn get(url: &str) -> Result<Response, AppError> {
    let resp: Response = JsFuture::from(window()?.fetch_with_str(url))
        .await
        .map_err(|e| AppError::NoAnswer { url: url.into(), reason: js_err(e) })?
        .dyn_into()
        .map_err(browser_err)?;
    if !resp.ok() {
        let body = JsFuture::from(resp.text().map_err(browser_err)?).await.ok().and_then(|t| t.as_string());
        return Err(AppError::Status { url: url.into(), status: resp.status(), body: body.unwrap_or_default() });
    }
    Ok(resp)
}

/// GETs `url` and parses its JSON body.
pub async fn json<T: serde::de::DeserializeOwned>(url: &str) -> Result<T, AppError> {
    let text = JsFuture::from(get(url).await?.text().map_err(browser_err)?).await.map_err(browser_err)?;
    serde_json::from_str(&text.as_string().unwrap_or_default())
        .map_err(|e| AppError::BadBody { url: url.into(), reason: e.to_string() })
}

/// Reads a response body chunk by chunk, reporting the bytes read so far.
async fn read_body(resp: &Response, mut progress: impl FnMut(u64)) -> Result<Vec<u8>, AppError> {
    let Some(body) = resp.body() else {
        return Ok(Vec::new());
    };
    let reader: web_sys::ReadableStreamDefaultReader =
        body.get_reader().dyn_into().map_err(|e| browser_err(e.into()))?;
    let mut out = Vec::new();
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(|e| AppError::Interrupted(js_err(e)))?;
        if Reflect::get(&chunk, &"done".into()).map(|d| d.is_truthy()).unwrap_or(true) {
            break;
        }
        let value: Uint8Array =
            Reflect::get(&chunk, &"value".into()).map_err(browser_err)?.dyn_into().map_err(browser_err)?;
        let start = out.len();
        out.resize(start + value.length() as usize, 0);
        value.copy_to(&mut out[start..]);
        progress(out.len() as u64);
    }
    Ok(out)
}

async fn cache() -> Result<Cache, AppError> {
    let caches = window()?.caches().map_err(|e| AppError::StorageUnavailable(js_err(e)))?;
    JsFuture::from(caches.open(CACHE)).await.map_err(browser_err)?.dyn_into().map_err(browser_err)
}

/// The bytes kept for `url` in Cache Storage, if any.
pub async fn stored_bytes(url: &str) -> Option<Vec<u8>> {
    let cache = cache().await.ok()?;
    let hit = JsFuture::from(cache.match_with_str(url)).await.ok()?;
    let resp = hit.dyn_into::<Response>().ok()?;
    read_body(&resp, |_| {}).await.ok()
}

/// Downloads `url` (reporting `(done, total)` bytes).
pub async fn download(url: &str, mut progress: impl FnMut(u64, u64)) -> Result<Vec<u8>, AppError> {
    let resp = get(url).await?;
    let total = resp.headers().get("content-length").ok().flatten().and_then(|v| v.parse().ok()).unwrap_or(0);
    read_body(&resp, |n| progress(n, total.max(n))).await
}

/// Stores `bytes` as the answer for `url` in Cache Storage. Fails with a message when the
/// storage is full or unavailable.
pub async fn store(url: &str, bytes: &[u8]) -> Result<(), AppError> {
    let cache = cache().await?;
    let body = Uint8Array::from(bytes);
    let resp = Response::new_with_opt_buffer_source(Some(&body)).map_err(browser_err)?;
    JsFuture::from(cache.put_with_str(url, &resp)).await.map_err(|e| {
        let msg = js_err(e);
        if msg.to_lowercase().contains("quota") {
            AppError::StorageFull(msg)
        } else {
            AppError::StorageWrite(msg)
        }
    })?;
    Ok(())
}

/// Removes `url` from Cache Storage (a cached part that failed verification).
pub async fn forget(url: &str) {
    if let Ok(cache) = cache().await {
        let _ = JsFuture::from(cache.delete_with_str(url)).await;
    }
}

/// A query parameter of the page's URL.
pub fn query_param(name: &str) -> Option<String> {
    let search = web_sys::window()?.location().search().ok()?;
    let params = web_sys::UrlSearchParams::new_with_str(&search).ok()?;
    params.get(name)
}
