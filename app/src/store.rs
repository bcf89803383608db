//! Conversations kept in IndexedDB (database `ait`, object store `conversations`, keyed by id).

use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{IdbDatabase, IdbOpenDbRequest, IdbRequest, IdbTransactionMode};

use crate::chat::Conversation;
use crate::error::AppError;
use crate::http::browser_err;

const DB: &str = "ait";
const STORE: &str = "conversations";

/// Resolves when `req` succeeds, with its result.
async fn done(req: &IdbRequest) -> Result<JsValue, AppError> {
    let promise = js_sys::Promise::new(&mut |resolve, reject| {
        let ok = Closure::once_into_js(move || {
            let _ = resolve.call0(&JsValue::NULL);
        });
        let err = Closure::once_into_js(move || {
            let _ = reject.call0(&JsValue::NULL);
        });
        req.set_onsuccess(Some(ok.unchecked_ref()));
        req.set_onerror(Some(err.unchecked_ref()));
    });
    wasm_bindgen_futures::JsFuture::from(promise).await.map_err(|_| {
        let why = req.error().ok().flatten().map(|e| e.message()).unwrap_or_else(|| "unknown error".into());
        AppError::Idb(why)
    })?;
    req.result().map_err(browser_err)
}

async fn open() -> Result<IdbDatabase, AppError> {
    let factory = web_sys::window().and_then(|w| w.indexed_db().ok().flatten()).ok_or(AppError::NoIndexedDb)?;
    let req: IdbOpenDbRequest = factory.open_with_u32(DB, 1).map_err(browser_err)?;
    let upgrade = Closure::<dyn FnMut(web_sys::Event)>::new(move |ev: web_sys::Event| {
        let db = ev
            .target()
            .and_then(|t| t.dyn_into::<IdbOpenDbRequest>().ok())
            .and_then(|r| r.result().ok())
            .and_then(|r| r.dyn_into::<IdbDatabase>().ok());
        if let Some(db) = db {
            let params = web_sys::IdbObjectStoreParameters::new();
            params.set_key_path(&JsValue::from_str("id"));
            let _ = db.create_object_store_with_optional_parameters(STORE, &params);
        }
    });
    req.set_onupgradeneeded(Some(upgrade.as_ref().unchecked_ref()));
    let db = done(&req).await?;
    drop(upgrade);
    db.dyn_into().map_err(browser_err)
}

fn store(db: &IdbDatabase, mode: IdbTransactionMode) -> Result<web_sys::IdbObjectStore, AppError> {
    db.transaction_with_str_and_mode(STORE, mode).and_then(|t| t.object_store(STORE)).map_err(browser_err)
}

/// Every stored conversation, newest first.
pub async fn load_all() -> Result<Vec<Conversation>, AppError> {
    let db = open().await?;
    let all = done(&store(&db, IdbTransactionMode::Readonly)?.get_all().map_err(browser_err)?).await?;
    let json = js_sys::JSON::stringify(&all).map_err(browser_err)?.as_string().unwrap_or_default();
    let mut v: Vec<Conversation> =
        serde_json::from_str(&json).map_err(|e| AppError::StoredConversations(e.to_string()))?;
    v.sort_by(|a, b| b.id.cmp(&a.id));
    Ok(v)
}

/// Saves (creates or replaces) a conversation.
pub async fn save(c: &Conversation) -> Result<(), AppError> {
    let db = open().await?;
    let json = serde_json::to_string(c).map_err(|e| AppError::StoredConversations(e.to_string()))?;
    let value = js_sys::JSON::parse(&json).map_err(browser_err)?;
    done(&store(&db, IdbTransactionMode::Readwrite)?.put(&value).map_err(browser_err)?).await?;
    Ok(())
}

/// Deletes a conversation.
pub async fn delete(id: &str) -> Result<(), AppError> {
    let db = open().await?;
    done(&store(&db, IdbTransactionMode::Readwrite)?.delete(&JsValue::from_str(id)).map_err(browser_err)?).await?;
    Ok(())
}
