//! Dispatch: the [`dispatcher::Dispatcher`] (comfyd's queue and routing) and one [`backend::Backend`]
//! actor per ComfyUI server.
pub mod backend;
pub mod dispatcher;
