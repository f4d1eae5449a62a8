//! The ComfyUI protocol: serde-level decoding of its websocket frames and history entries
//! ([`protocol`]) and its HTTP calls ([`client`]). Only `dispatch::backend` and the uploader's `/view`
//! fetch use it, so a new ComfyUI version changes this module and the backend actor, nothing else.
pub mod client;
pub mod protocol;

pub use client::{ComfyClient, ComfyError};
pub use protocol::{FileRef, WsEvent};
