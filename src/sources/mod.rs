//! Where events come from: the Fondo WebSocket stream and signed webhooks.

use std::collections::BTreeMap;
use std::sync::Mutex;

pub mod webhook;
pub mod websocket;

/// What each part of the bridge says about its readiness, for `/readyz`.
/// Keys are like `websocket:<client_id>`, `webhook`, `sink:<name>`; `Err` says what is wrong.
#[derive(Debug, Default)]
pub struct Readiness {
    parts: Mutex<BTreeMap<String, Result<(), String>>>,
}

impl Readiness {
    pub fn set(&self, part: impl Into<String>, state: Result<(), String>) {
        if let Ok(mut p) = self.parts.lock() {
            p.insert(part.into(), state);
        }
    }

    pub fn remove(&self, part: &str) {
        if let Ok(mut p) = self.parts.lock() {
            p.remove(part);
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, Result<(), String>> {
        self.parts.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Ready when every part is `Ok`.
    pub fn is_ready(&self) -> bool {
        self.snapshot().values().all(Result::is_ok)
    }
}
