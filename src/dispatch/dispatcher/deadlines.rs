//! The deadline sweep: every few seconds the Dispatcher fails each task past its deadline that has not
//! run to the end: taken off its queue, or stopped on its backend. Tasks whose outputs are being
//! stored are left to finish.

use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use serde_json::Value;
use tracing::warn;

use super::Dispatcher;
use crate::db;
use crate::task::ids::TaskId;
use crate::task::{error_code, Status};

/// How often tasks past their deadline are looked for.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(2);

impl Dispatcher {
    pub(super) fn sweep_deadlines(&mut self, ctx: &mut Context<Self>) {
        let db = self.db.clone();
        async move { db::tasks::overdue(&db, Utc::now()).await }
            .into_actor(self)
            .map(|res, act, ctx| {
                let overdue = match res {
                    Ok(t) => t,
                    Err(e) => return warn!(error = %e, "deadline sweep failed"),
                };
                for t in overdue {
                    let task_id = TaskId::from(t.id);
                    act.withdraw(&task_id);
                    let msg = format!(
                        "deadline passed ({} after it was accepted)",
                        t.deadline_at - t.created_at
                    );
                    act.fail(
                        task_id,
                        &Status::BEFORE_STORING,
                        error_code::OTHER,
                        msg,
                        Value::Null,
                        ctx,
                    );
                }
                act.dispatch(ctx);
            })
            .spawn(ctx);
    }
}
