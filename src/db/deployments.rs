//! The `deployments` and `deployment_backends` tables (#19): creating a deployment (one at a time,
//! by the database's unique index on `active`), its state transitions, its per-backend results,
//! history, and the served release (the newest succeeded deployment's). Called by the deployer
//! (`deploy`), `routes::deployments` and startup.
//!
//! Written straight to the pool, like `releases` and `backend_checks`: a rare admin write that
//! nothing on the hot path waits on. Transitions are conditional updates (`WHERE state IN ...`), so
//! a cancel and the deployer's next step cannot both win.

use chrono::Utc;
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{
    ActiveValue, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, SqlErr, TransactionTrait,
};

use crate::entity::{deployment, deployment_backend};

/// A deployment's state, as stored in `deployments.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Checking,
    Rolling,
    Succeeded,
    Failed,
    Cancelled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Checking => "checking",
            State::Rolling => "rolling",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    pub fn terminal(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Cancelled)
    }

    /// The states a deployment is in while it runs.
    pub const RUNNING: [State; 3] = [State::Pending, State::Checking, State::Rolling];
}

/// A backend's state in a deployment, as stored in `deployment_backends.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    Pending,
    Checking,
    Passed,
    Failed,
    Switched,
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Pending => "pending",
            BackendState::Checking => "checking",
            BackendState::Passed => "passed",
            BackendState::Failed => "failed",
            BackendState::Switched => "switched",
        }
    }
}

/// What [`create`] did.
#[derive(Debug, Clone)]
pub enum Created {
    /// A new pending deployment.
    New(deployment::Model),
    /// One is not terminal: that one, and nothing was written.
    Running(deployment::Model),
}

/// Creates a pending deployment of `release_version`, one `pending` row per backend, unless one is
/// running (then that one). Race-safe across instances: two creates meet at the unique index on
/// `active`, and the loser reads the winner back.
pub async fn create(
    db: &DatabaseConnection,
    release_version: i32,
    max_unavailable: i32,
    backends: &[String],
) -> Result<Created, DbErr> {
    if let Some(running) = active(db).await? {
        return Ok(Created::Running(running));
    }
    let previous_version = served(db).await?;
    let now = Utc::now();
    let txn = db.begin().await?;
    let row = deployment::ActiveModel {
        id: ActiveValue::NotSet,
        release_version: ActiveValue::Set(release_version),
        previous_version: ActiveValue::Set(previous_version),
        state: ActiveValue::Set(State::Pending.as_str().into()),
        max_unavailable: ActiveValue::Set(max_unavailable),
        reason: ActiveValue::Set(None),
        active: ActiveValue::Set(Some(1)),
        owner: ActiveValue::Set(None),
        lease_expires_at: ActiveValue::Set(None),
        created_at: ActiveValue::Set(now),
        started_at: ActiveValue::Set(None),
        ended_at: ActiveValue::Set(None),
        updated_at: ActiveValue::Set(now),
    };
    let inserted = match deployment::Entity::insert(row)
        .exec_with_returning(&txn)
        .await
    {
        Ok(model) => model,
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            txn.rollback().await?;
            return match active(db).await? {
                Some(running) => Ok(Created::Running(running)),
                // It ended between the insert and this read: the caller may try again.
                None => Err(e),
            };
        }
        Err(e) => return Err(e),
    };
    for backend in backends {
        deployment_backend::Entity::insert(deployment_backend::ActiveModel {
            id: ActiveValue::NotSet,
            deployment_id: ActiveValue::Set(inserted.id),
            backend: ActiveValue::Set(backend.clone()),
            state: ActiveValue::Set(BackendState::Pending.as_str().into()),
            reason: ActiveValue::Set(None),
            started_at: ActiveValue::Set(None),
            ended_at: ActiveValue::Set(None),
        })
        .exec_without_returning(&txn)
        .await?;
    }
    txn.commit().await?;
    Ok(Created::New(inserted))
}

/// The deployment that is not terminal, if any (at most one: the unique index).
pub async fn active<C: ConnectionTrait>(db: &C) -> Result<Option<deployment::Model>, DbErr> {
    deployment::Entity::find()
        .filter(deployment::Column::Active.eq(1))
        .one(db)
        .await
}

/// The served release: that of the newest succeeded deployment (NULL: the workflows folder).
pub async fn served<C: ConnectionTrait>(db: &C) -> Result<Option<i32>, DbErr> {
    Ok(deployment::Entity::find()
        .filter(deployment::Column::State.eq(State::Succeeded.as_str()))
        .order_by_desc(deployment::Column::EndedAt)
        .order_by_desc(deployment::Column::Id)
        .one(db)
        .await?
        .map(|d| d.release_version))
}

/// One deployment.
pub async fn get<C: ConnectionTrait>(db: &C, id: i64) -> Result<Option<deployment::Model>, DbErr> {
    deployment::Entity::find_by_id(id).one(db).await
}

/// A deployment's backends, in the order they were configured when it was created.
pub async fn backends<C: ConnectionTrait>(
    db: &C,
    id: i64,
) -> Result<Vec<deployment_backend::Model>, DbErr> {
    deployment_backend::Entity::find()
        .filter(deployment_backend::Column::DeploymentId.eq(id))
        .order_by_asc(deployment_backend::Column::Id)
        .all(db)
        .await
}

/// At most `limit` deployments, newest first.
pub async fn list<C: ConnectionTrait>(db: &C, limit: u64) -> Result<Vec<deployment::Model>, DbErr> {
    deployment::Entity::find()
        .order_by_desc(deployment::Column::Id)
        .limit(limit)
        .all(db)
        .await
}

/// Moves deployment `id` to `to` if it is in one of `from`; whether it moved. A terminal state
/// clears `active` (the next deployment may start) and sets `ended_at`; `checking` sets
/// `started_at` the first time.
pub async fn transition<C: ConnectionTrait>(
    db: &C,
    id: i64,
    from: &[State],
    to: State,
    reason: Option<&str>,
) -> Result<bool, DbErr> {
    let now = Utc::now();
    let mut update = deployment::Entity::update_many()
        .col_expr(deployment::Column::State, Expr::value(to.as_str()))
        .col_expr(deployment::Column::UpdatedAt, Expr::value(now));
    if let Some(reason) = reason {
        update = update.col_expr(deployment::Column::Reason, Expr::value(reason));
    }
    if to.terminal() {
        update = update
            .col_expr(deployment::Column::Active, Expr::value(Option::<i32>::None))
            .col_expr(deployment::Column::EndedAt, Expr::value(now));
    }
    if to == State::Checking {
        update = update.col_expr(
            deployment::Column::StartedAt,
            Expr::from(Func::coalesce([
                Expr::col(deployment::Column::StartedAt),
                Expr::value(now),
            ])),
        );
    }
    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    let result = update
        .filter(deployment::Column::Id.eq(id))
        .filter(deployment::Column::State.is_in(from))
        .exec(db)
        .await?;
    Ok(result.rows_affected > 0)
}

/// Sets one backend's state in deployment `id` (and its reason); `checking` stamps `started_at`,
/// `pending` clears both times (a re-run after a restart), the others stamp `ended_at`.
pub async fn set_backend<C: ConnectionTrait>(
    db: &C,
    id: i64,
    backend: &str,
    state: BackendState,
    reason: Option<&str>,
) -> Result<(), DbErr> {
    let now = Utc::now();
    let mut update = deployment_backend::Entity::update_many()
        .col_expr(
            deployment_backend::Column::State,
            Expr::value(state.as_str()),
        )
        .col_expr(
            deployment_backend::Column::Reason,
            Expr::value(reason.map(str::to_string)),
        );
    update = match state {
        BackendState::Pending => update
            .col_expr(
                deployment_backend::Column::StartedAt,
                Expr::value(Option::<chrono::DateTime<Utc>>::None),
            )
            .col_expr(
                deployment_backend::Column::EndedAt,
                Expr::value(Option::<chrono::DateTime<Utc>>::None),
            ),
        BackendState::Checking => {
            update.col_expr(deployment_backend::Column::StartedAt, Expr::value(now))
        }
        _ => update.col_expr(deployment_backend::Column::EndedAt, Expr::value(now)),
    };
    update
        .filter(deployment_backend::Column::DeploymentId.eq(id))
        .filter(deployment_backend::Column::Backend.eq(backend))
        .exec(db)
        .await?;
    Ok(())
}

/// Every backend's result in every deployment, oldest first, as (backend, release, passed):
/// `switched` passed, `failed` did not. Replayed in order, the last word on each (backend,
/// release) is whether the backend may run that release's tasks (the dispatcher's gate at start).
pub async fn gates<C: ConnectionTrait>(db: &C) -> Result<Vec<(String, i32, bool)>, DbErr> {
    let deployments: std::collections::HashMap<i64, i32> = deployment::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|d| (d.id, d.release_version))
        .collect();
    let rows = deployment_backend::Entity::find()
        .filter(deployment_backend::Column::State.is_in([
            BackendState::Switched.as_str(),
            BackendState::Failed.as_str(),
        ]))
        .order_by_asc(deployment_backend::Column::DeploymentId)
        .order_by_asc(deployment_backend::Column::Id)
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|b| {
            let release = *deployments.get(&b.deployment_id)?;
            Some((
                b.backend,
                release,
                b.state == BackendState::Switched.as_str(),
            ))
        })
        .collect())
}
