//! `Notifier`: delivers webhooks from the outbox (`deliveries` table).
//!
//! A new delivery is attempted at once (`Deliver`); every second the outbox is read for deliveries that
//! are due (retries, and anything left from before a restart). Any 2xx is delivered, whatever the body.
//! Otherwise it is retried with exponential backoff and jitter until its give-up time. Messages are
//! signed per Standard Webhooks when a secret is configured; the `webhook-id` stays the same across
//! retries, so receivers de-duplicate on it (delivery is at least once). Each attempt sets the stored
//! outputs' `url`s of the payload afresh (`blob::urls`): the outbox keeps the payload without them.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use rand::Rng;
use sea_orm::DatabaseConnection;
use tracing::{debug, info, warn};

use super::recorder::{RecordAttempt, Recorder};
use super::retry_delay;
use crate::blob::OutputUrls;
use crate::db::{self, deliveries::AttemptOutcome};
use crate::entity::delivery;
use crate::outbound::{sign_webhook, Outbound};
use crate::task::TaskRecord;

/// How often the outbox is read for due deliveries.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Deliveries attempted at once, at most.
const MAX_CONCURRENT: usize = 64;

#[derive(Debug, Clone)]
pub struct NotifierConfig {
    pub secret: String,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

pub struct Notifier {
    cfg: NotifierConfig,
    db: DatabaseConnection,
    recorder: Addr<Recorder>,
    outbound: Outbound,
    in_progress: HashSet<String>,
    polling: bool,
    /// Sets the outputs' `url`s of each payload as it is sent (see `blob::urls`); none: sent as stored.
    urls: Option<OutputUrls>,
}

impl Notifier {
    pub fn new(
        cfg: NotifierConfig,
        db: DatabaseConnection,
        recorder: Addr<Recorder>,
        outbound: Outbound,
    ) -> Notifier {
        Notifier {
            cfg,
            db,
            recorder,
            outbound,
            in_progress: HashSet::new(),
            polling: false,
            urls: None,
        }
    }

    /// Payloads get their outputs' `url`s, fresh for each attempt (a presigned URL made when the
    /// task ended would have expired by a late retry).
    pub fn with_urls(mut self, urls: OutputUrls) -> Notifier {
        self.urls = Some(urls);
        self
    }

    fn attempt(&mut self, d: delivery::Model, ctx: &mut Context<Self>) {
        if self.in_progress.len() >= MAX_CONCURRENT || !self.in_progress.insert(d.id.clone()) {
            return; // already under way, or the next poll picks it up
        }
        let outbound = self.outbound.clone();
        let recorder = self.recorder.clone();
        let cfg = self.cfg.clone();
        let urls = self.urls.clone();
        let id = d.id.clone();
        async move {
            let payload = match &urls {
                Some(urls) => with_urls(urls, &d.payload).await,
                None => d.payload.clone(),
            };
            let started = Instant::now();
            let now = Utc::now();
            let mut headers = vec![
                ("webhook-id".to_string(), d.id.clone()),
                ("webhook-timestamp".to_string(), now.timestamp().to_string()),
            ];
            if !cfg.secret.is_empty() {
                let sig = sign_webhook(&cfg.secret, &d.id, now.timestamp(), payload.as_bytes());
                headers.push(("webhook-signature".to_string(), sig));
            }
            let result = outbound.post_webhook(&d.url, bytes::Bytes::from(payload), &headers).await;
            let duration_ms = started.elapsed().as_millis() as i64;
            let (status_code, error) = match &result {
                Ok(code) => (Some(*code as i32), None),
                Err(e) => (None, Some(e.to_string())),
            };
            let delivered = matches!(result, Ok(200..=299));
            crate::metrics::webhook_attempt(result.as_ref().ok().copied());
            // Its first delivery only: a redelivery (the API's) of one delivered before is not a
            // task's completion.
            if delivered && d.delivered_at.is_none() {
                let took = (Utc::now() - d.created_at).to_std().unwrap_or_default();
                crate::metrics::completion_to_webhook(took);
            }
            let attempt_no = (d.attempts + 1) as u32;
            let next = now
                + chrono::Duration::from_std(retry_delay(attempt_no, cfg.first_backoff, cfg.max_backoff, rand::thread_rng().gen()))
                    .unwrap_or(chrono::Duration::seconds(60));
            // A URL the policy refuses will not be accepted later either.
            let permanent = matches!(&result, Err(crate::outbound::OutboundError::BadUrl(_)));
            let new_status = if delivered {
                "delivered"
            } else if next > d.give_up_at || permanent {
                "failed"
            } else {
                "pending"
            };
            match new_status {
                "delivered" => debug!(task.id = %d.task_id, delivery.id = %d.id, "webhook delivered"),
                "failed" => warn!(task.id = %d.task_id, delivery.id = %d.id, ?status_code, ?error, "webhook given up"),
                _ => info!(task.id = %d.task_id, delivery.id = %d.id, ?status_code, ?error, attempt = attempt_no, "webhook failed; will retry"),
            }
            let outcome = AttemptOutcome {
                delivery_id: d.id.clone(),
                task_id: d.task_id.clone(),
                status_code,
                error,
                duration_ms,
                new_status,
                next_attempt_at: next,
            };
            // Unrecorded, the delivery stays due and is sent again: at least once, never lost.
            match recorder.send(RecordAttempt(outcome)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(delivery.id = %d.id, error = %e, "could not record webhook attempt"),
                Err(e) => warn!(delivery.id = %d.id, error = %e, "could not record webhook attempt"),
            }
        }
        .into_actor(self)
        .map(move |_, act, _| {
            act.in_progress.remove(&id);
        })
        .spawn(ctx);
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.polling || self.in_progress.len() >= MAX_CONCURRENT {
            return;
        }
        self.polling = true;
        let db = self.db.clone();
        async move { db::deliveries::due(&db, Utc::now(), MAX_CONCURRENT as u64).await }
            .into_actor(self)
            .map(|res, act, ctx| {
                act.polling = false;
                match res {
                    Ok(due) => {
                        for d in due {
                            act.attempt(d, ctx);
                        }
                    }
                    Err(e) => warn!(error = %e, "reading the webhook outbox failed"),
                }
            })
            .spawn(ctx);
    }
}

impl Actor for Notifier {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1 << 16);
        ctx.run_interval(POLL_INTERVAL, |act, ctx| act.poll(ctx));
    }
}

/// A delivery was just put in the outbox: attempt it now.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Deliver(pub delivery::Model);

impl Handler<Deliver> for Notifier {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        self.attempt(msg.0, ctx);
    }
}

/// Read the outbox now (after a redeliver).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct PollNow;

impl Handler<PollNow> for Notifier {
    type Result = ();

    fn handle(&mut self, _: PollNow, ctx: &mut Context<Self>) {
        self.poll(ctx);
    }
}

/// `payload` with its stored outputs' `url`s set; as stored when it has none (byte for byte), or
/// when they cannot be made (logged: the webhook still goes out, without them).
async fn with_urls(urls: &OutputUrls, payload: &str) -> String {
    let mut record: TaskRecord = match serde_json::from_str(payload) {
        Ok(record) => record,
        Err(e) => {
            warn!(error = %e, "webhook payload is not a task record; sent as stored");
            return payload.to_owned();
        }
    };
    if !record.outputs.iter().any(|o| o.stored) {
        return payload.to_owned();
    }
    if let Err(e) = urls.fill(&mut record).await {
        warn!(task.id = %record.id, error = %e, "no output URLs for the webhook; sent without them");
        return payload.to_owned();
    }
    serde_json::to_string(&record).unwrap_or_else(|_| payload.to_owned())
}
