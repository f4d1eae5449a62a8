//! The ComfyUI protocol: serde-level decoding of its websocket frames and history entries
//! ([`protocol`]), its HTTP calls ([`client`]), the websocket frame limit ([`ws_limit`]), and the rule
//! every name a server reports is held to before it becomes a path, key or query ([`names`]). Only
//! `dispatch::backend` and the uploader's `/view` fetch use it, so a new ComfyUI version changes this module and the backend actor, nothing else.
pub mod client;
pub mod names;
pub mod protocol;
pub mod ws_limit;

pub use client::{ComfyClient, ComfyError, Limits};
pub use protocol::{FileRef, WsEvent};
