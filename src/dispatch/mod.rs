//! Dispatch: comfyd's queue, its routing, and one actor per ComfyUI server.
//!
//! - [`dispatcher::Dispatcher`]: the actor that owns the queue and hands tasks to backends (in its
//!   folder: what a job's end leads to, recovery at start and after an outage, the deadline sweep);
//! - [`queue`]: the queue of task ids, in dispatch order (plain data);
//! - [`routing`]: which task goes to which backend next (a pure function, tested alone);
//! - [`backend::Backend`]: one actor per ComfyUI server, the only part that speaks its protocol;
//! - [`messages`]: what routes, startup, the Dispatcher and the backends send each other.
//!
//! Dispatch sits above post-processing: the Dispatcher sends to the Recorder, Uploader and Cleaner;
//! nothing in `postprocess` knows dispatch (the Cleaner reaches a backend as a `Recipient<Clean>`).
pub mod backend;
pub mod dispatcher;
pub mod messages;
pub mod queue;
pub mod routing;
