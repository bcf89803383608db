//! What the page keeps in IndexedDB (database `ait`): conversations (object store
//! `conversations`, keyed by id) and a seeding tab's voucher ledger (object store `ledger`,
//! keyed by `key`: the vouchers, authorizations and allocations it has yet to redeem).

use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{IdbDatabase, IdbOpenDbRequest, IdbRequest, IdbTransactionMode};

use crate::chat::Conversation;
use crate::error::AppError;
use crate::http::browser_err;

const DB: &str = "ait";
const STORE: &str = "conversations";
const LEDGER: &str = "ledger";

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
    // Version 2 added the ledger.
    let req: IdbOpenDbRequest = factory.open_with_u32(DB, 2).map_err(browser_err)?;
    let upgrade = Closure::<dyn FnMut(web_sys::Event)>::new(move |ev: web_sys::Event| {
        let db = ev
            .target()
            .and_then(|t| t.dyn_into::<IdbOpenDbRequest>().ok())
            .and_then(|r| r.result().ok())
            .and_then(|r| r.dyn_into::<IdbDatabase>().ok());
        if let Some(db) = db {
            // A store that exists already (an older version's) is refused here, and kept.
            for (name, key) in [(STORE, "id"), (LEDGER, "key")] {
                let params = web_sys::IdbObjectStoreParameters::new();
                params.set_key_path(&JsValue::from_str(key));
                let _ = db.create_object_store_with_optional_parameters(name, &params);
            }
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

/// Resolves when `txn` has committed (its writes are on disk, as far as the browser says).
async fn committed(txn: &web_sys::IdbTransaction) -> Result<(), AppError> {
    let promise = js_sys::Promise::new(&mut |resolve, reject| {
        let ok = Closure::once_into_js(move || {
            let _ = resolve.call0(&JsValue::NULL);
        });
        let fail = reject.clone();
        let err = Closure::once_into_js(move || {
            let _ = fail.call0(&JsValue::NULL);
        });
        let abort = Closure::once_into_js(move || {
            let _ = reject.call0(&JsValue::NULL);
        });
        txn.set_oncomplete(Some(ok.unchecked_ref()));
        txn.set_onerror(Some(err.unchecked_ref()));
        txn.set_onabort(Some(abort.unchecked_ref()));
    });
    wasm_bindgen_futures::JsFuture::from(promise).await.map_err(|_| {
        let why = txn.error().map(|e| e.message()).unwrap_or_else(|| "the transaction was aborted".into());
        AppError::Idb(why)
    })?;
    Ok(())
}

/// Keeps `value` (JSON) under `key` in the ledger store, replacing what was there; returns
/// once the write has committed.
pub async fn ledger_put(key: &str, value: &serde_json::Value) -> Result<(), AppError> {
    let db = open().await?;
    let record = serde_json::json!({ "key": key, "value": value });
    let record = js_sys::JSON::parse(&record.to_string()).map_err(browser_err)?;
    let txn = db.transaction_with_str_and_mode(LEDGER, IdbTransactionMode::Readwrite).map_err(browser_err)?;
    txn.object_store(LEDGER).and_then(|s| s.put(&record)).map_err(browser_err)?;
    committed(&txn).await
}

/// Removes `key` from the ledger store.
pub async fn ledger_delete(key: &str) -> Result<(), AppError> {
    let db = open().await?;
    let txn = db.transaction_with_str_and_mode(LEDGER, IdbTransactionMode::Readwrite).map_err(browser_err)?;
    txn.object_store(LEDGER).and_then(|s| s.delete(&JsValue::from_str(key))).map_err(browser_err)?;
    committed(&txn).await
}

/// Everything in the ledger store: (key, value).
pub async fn ledger_all() -> Result<Vec<(String, serde_json::Value)>, AppError> {
    let db = open().await?;
    let store = db
        .transaction_with_str_and_mode(LEDGER, IdbTransactionMode::Readonly)
        .and_then(|t| t.object_store(LEDGER))
        .map_err(browser_err)?;
    let all = done(&store.get_all().map_err(browser_err)?).await?;
    let json = js_sys::JSON::stringify(&all).map_err(browser_err)?.as_string().unwrap_or_default();
    let records: Vec<serde_json::Value> = serde_json::from_str(&json).map_err(|e| AppError::Idb(e.to_string()))?;
    Ok(records
        .into_iter()
        .filter_map(|mut r| Some((r.get("key")?.as_str()?.to_string(), r.get_mut("value")?.take())))
        .collect())
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
