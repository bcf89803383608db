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

thread_local! {
    /// The page's connection to the database, once opened (IndexedDB connections are meant to
    /// be kept; each open would otherwise be one more).
    static CONNECTION: std::cell::RefCell<Option<IdbDatabase>> = const { std::cell::RefCell::new(None) };
}

/// The database connection, opened (and upgraded) on first use. When another tab opens a
/// newer version, this one closes its connection (so the upgrade is not blocked) and opens
/// again on its next use.
async fn open() -> Result<IdbDatabase, AppError> {
    if let Some(db) = CONNECTION.with(|c| c.borrow().clone()) {
        return Ok(db);
    }
    let db = open_new().await?;
    let closing = db.clone();
    let on_change = Closure::<dyn FnMut()>::new(move || {
        closing.close();
        CONNECTION.with(|c| c.borrow_mut().take());
    });
    db.set_onversionchange(Some(on_change.as_ref().unchecked_ref()));
    // Closed by the browser (site data cleared, an I/O error): the next use opens again.
    let on_close = Closure::<dyn FnMut()>::new(move || {
        CONNECTION.with(|c| c.borrow_mut().take());
    });
    db.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    // One listener of each per connection, for the connection's life.
    on_change.forget();
    on_close.forget();
    CONNECTION.with(|c| *c.borrow_mut() = Some(db.clone()));
    Ok(db)
}

async fn open_new() -> Result<IdbDatabase, AppError> {
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

/// Writes `value` (JSON) under `key` in the ledger store, replacing what was there, in a
/// transaction with strict durability (the browser flushes it to disk before it commits);
/// returns once it has committed.
pub async fn ledger_save(key: &str, value: &serde_json::Value) -> Result<(), AppError> {
    let db = open().await?;
    let record = serde_json::json!({ "key": key, "value": value });
    let record = js_sys::JSON::parse(&record.to_string()).map_err(browser_err)?;
    // `durability` is not in web-sys's stable API: pass the options object as JavaScript.
    let transaction: js_sys::Function =
        js_sys::Reflect::get(&db, &JsValue::from_str("transaction")).and_then(|f| f.dyn_into()).map_err(browser_err)?;
    let options = js_sys::Object::new();
    js_sys::Reflect::set(&options, &JsValue::from_str("durability"), &JsValue::from_str("strict"))
        .map_err(browser_err)?;
    let txn: web_sys::IdbTransaction = transaction
        .call3(&db, &JsValue::from_str(LEDGER), &JsValue::from_str("readwrite"), &options)
        .and_then(|t| t.dyn_into())
        .map_err(browser_err)?;
    txn.object_store(LEDGER).and_then(|s| s.put(&record)).map_err(browser_err)?;
    committed(&txn).await
}

/// Takes the page-wide Web Lock `name` for the page's life if no other page holds it;
/// returns whether it got it (a browser without the Web Locks API: always).
pub async fn hold_lock(name: &str) -> Result<bool, AppError> {
    let Some(window) = web_sys::window() else { return Ok(true) };
    let locks = js_sys::Reflect::get(&window.navigator(), &JsValue::from_str("locks")).map_err(browser_err)?;
    if locks.is_undefined() || locks.is_null() {
        return Ok(true);
    }
    let request: js_sys::Function =
        js_sys::Reflect::get(&locks, &JsValue::from_str("request")).and_then(|f| f.dyn_into()).map_err(browser_err)?;
    let options = js_sys::Object::new();
    js_sys::Reflect::set(&options, &JsValue::from_str("ifAvailable"), &JsValue::TRUE).map_err(browser_err)?;
    let (tx, rx) = futures::channel::oneshot::channel();
    // Called with the lock, or null when another page holds it; the lock is held until the
    // promise it returns settles, which is never.
    let granted = Closure::once_into_js(move |lock: JsValue| {
        let _ = tx.send(!lock.is_null());
        js_sys::Promise::new(&mut |_, _| {})
    });
    request.call3(&locks, &JsValue::from_str(name), &options, &granted).map_err(browser_err)?;
    rx.await.map_err(|_| AppError::Idb("the lock request was dropped".into()))
}

/// What the ledger store keeps under `key`, if anything.
pub async fn ledger_load(key: &str) -> Result<Option<serde_json::Value>, AppError> {
    let db = open().await?;
    let store = db
        .transaction_with_str_and_mode(LEDGER, IdbTransactionMode::Readonly)
        .and_then(|t| t.object_store(LEDGER))
        .map_err(browser_err)?;
    let found = done(&store.get(&JsValue::from_str(key)).map_err(browser_err)?).await?;
    if found.is_undefined() || found.is_null() {
        return Ok(None);
    }
    let json = js_sys::JSON::stringify(&found).map_err(browser_err)?.as_string().unwrap_or_default();
    let mut record: serde_json::Value = serde_json::from_str(&json).map_err(|e| AppError::Idb(e.to_string()))?;
    Ok(record.get_mut("value").map(serde_json::Value::take))
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
