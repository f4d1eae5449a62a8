//! API keys at the HTTP boundary: who may call which route. The keys themselves, and [`Caller`],
//! are [`crate::access`]'s; this module holds only the actix extractors that ask it.
//!
//! Off unless keys exist (comfyd stays a drop-in for the service it replaces, which had none): with no
//! key in `[auth] keys` and none ever added to the database, every route is open. Otherwise a request
//! carries `Authorization: Bearer <key>`, and each handler names what it needs by taking one of the
//! extractors: [`Submitter`] (a `submit` or `admin` key: submit, the workflows, and its own tasks) or
//! [`Admin`] (an `admin` key: every task, redeliveries, backends, and whatever operator route comes
//! next). `/healthz` takes neither. A missing or unknown key is 401 with `WWW-Authenticate: Bearer`, a
//! submit key on an admin route 403, and another key's task 404, as if it did not exist, so task
//! ids cannot be probed.
//!
//! Keys are compared in constant time against every key in force ([`crate::access`]).

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};

use super::{ApiError, AppState};
use crate::access::{ApiKeys, Caller, Scope};
use crate::db;
use crate::entity::task;

/// Who is calling: answered from the request's `Authorization` header. A trait so that the keys'
/// domain ([`crate::access`]) knows nothing of HTTP.
pub trait Authorize {
    /// Who is calling, and whether a route needing `needs` lets them in.
    fn authorize(&self, req: &HttpRequest, needs: Scope) -> Result<Caller, ApiError>;
}

impl Authorize for ApiKeys {
    fn authorize(&self, req: &HttpRequest, needs: Scope) -> Result<Caller, ApiError> {
        if !self.enabled() {
            return Ok(Caller::Anyone);
        }
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(header) = header else {
            return Err(ApiError::Unauthorized {
                message: "an API key is required: Authorization: Bearer <key>".into(),
                invalid: false,
            });
        };
        let key = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .ok_or_else(|| ApiError::Unauthorized {
                message: "the Authorization header must be `Bearer <key>`".into(),
                invalid: true,
            })?;
        let (name, scope) = self.find(key).ok_or_else(|| ApiError::Unauthorized {
            message: "unknown or revoked API key".into(),
            invalid: true,
        })?;
        if needs == Scope::Admin && scope != Scope::Admin {
            return Err(ApiError::Forbidden(format!(
                "this route needs an admin key; {name:?} is a submit key"
            )));
        }
        Ok(Caller::Key { name, scope })
    }
}

/// The task with this comfyd id or client_task_id, if the caller may see it; another key's task is
/// "not found", exactly as a task that does not exist.
pub async fn visible_task(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<task::Model, ApiError> {
    db::tasks::find(&state.db, id)
        .await?
        .filter(|t| caller.may_see(t))
        .ok_or_else(|| ApiError::NotFound(format!("no task with id or client_task_id {id:?}")))
}

fn authorize(req: &HttpRequest, needs: Scope) -> Result<Caller, ApiError> {
    let state = req.app_data::<web::Data<AppState>>().ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!("AppState is missing from the app data"))
    })?;
    state.keys.authorize(req, needs)
}

/// A route for `submit` keys (and `admin` ones): submitting, the workflows, one's own tasks.
pub struct Submitter(pub Caller);

impl FromRequest for Submitter {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authorize(req, Scope::Submit).map(Submitter))
    }
}

/// A route for `admin` keys only.
pub struct Admin(pub Caller);

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authorize(req, Scope::Admin).map(Admin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::hash_key;
    use crate::config::ApiKeySetting;
    use crate::config::AuthSettings;
    use actix_web::test::TestRequest;

    fn keys() -> ApiKeys {
        ApiKeys::from_settings(&AuthSettings {
            keys: vec![
                ApiKeySetting {
                    name: "app".into(),
                    scope: "submit".into(),
                    sha256: hash_key("k-app"),
                },
                ApiKeySetting {
                    name: "ops".into(),
                    scope: "admin".into(),
                    sha256: hash_key("k-ops"),
                },
            ],
        })
    }

    fn with(header: Option<&str>) -> HttpRequest {
        let mut req = TestRequest::default();
        if let Some(h) = header {
            req = req.insert_header(("authorization", h));
        }
        req.to_http_request()
    }

    #[test]
    fn no_keys_means_open() {
        let open = ApiKeys::default();
        assert!(!open.enabled());
        assert_eq!(
            open.authorize(&with(None), Scope::Admin).ok(),
            Some(Caller::Anyone)
        );
    }

    #[test]
    fn keys_are_checked_by_scope() {
        let keys = keys();
        assert!(keys.enabled());
        for (header, invalid) in [
            (None, false),
            (Some("Bearer nope"), true),
            (Some("Basic k-app"), true),
            (Some("Bearer"), true),
        ] {
            match keys.authorize(&with(header), Scope::Submit) {
                Err(ApiError::Unauthorized { invalid: i, .. }) => {
                    assert_eq!(i, invalid, "{header:?}")
                }
                other => panic!("{header:?}: expected 401, got {other:?}"),
            }
        }
        let app = keys
            .authorize(&with(Some("Bearer k-app")), Scope::Submit)
            .expect("submit key on a submit route");
        assert_eq!(app.listing_owner().as_deref(), Some("app"));
        assert!(matches!(
            keys.authorize(&with(Some("bearer k-app")), Scope::Admin),
            Err(ApiError::Forbidden(_))
        ));
        let ops = keys
            .authorize(&with(Some("Bearer k-ops")), Scope::Admin)
            .expect("admin key");
        assert!(ops.sees_every_task());
        assert_eq!(ops.owner().as_deref(), Some("ops"));
    }
}
