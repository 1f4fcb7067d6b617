//! Which token a request carries and what it may do (reference §1.2, §8.1): the agent token
//! for register, metrics and stacks; session tokens for agent calls; job tokens for job
//! calls; the API token (Bearer) for REST. Anything else is 401 `{"message"}`.

use crate::error::{ApiError, ApiResult};
use crate::server::App;
use axum::http::HeaderMap;
use uuid::Uuid;

/// The token after `scheme ` in `Authorization`, if present.
pub fn header_token<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (given, token) = value.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| token.trim())
}

fn missing(scheme: &str, what: &str) -> ApiError {
    ApiError::unauthorized(format!(
        "Missing or invalid Authorization header: expected \"{scheme} <{what}>\""
    ))
}

pub fn require_agent_token(app: &App, headers: &HeaderMap) -> ApiResult<()> {
    let token = header_token(headers, "Token").ok_or_else(|| missing("Token", "agent token"))?;
    if token == app.agent_token.expose() {
        Ok(())
    } else {
        Err(ApiError::unauthorized("Invalid agent registration token"))
    }
}

/// The agent a session token belongs to.
pub fn require_session(app: &App, headers: &HeaderMap) -> ApiResult<Uuid> {
    let token =
        header_token(headers, "Token").ok_or_else(|| missing("Token", "agent access token"))?;
    app.store
        .read(|s| s.sessions.get(token).copied())
        .ok_or_else(|| ApiError::unauthorized("Invalid agent access token"))
}

/// A job call: the job token of this job, or (as older agents do) the session token of the
/// agent holding it.
pub fn require_job_token(app: &App, headers: &HeaderMap, job_id: Uuid) -> ApiResult<()> {
    let token = header_token(headers, "Token").ok_or_else(|| missing("Token", "job token"))?;
    let allowed = app.store.read(|s| {
        if let Some(id) = s.job_tokens.get(token) {
            return *id == job_id;
        }
        let agent = s.sessions.get(token);
        agent.is_some()
            && s.jobs
                .get(&job_id)
                .is_some_and(|j| j.agent_id.as_ref() == agent)
    });
    if allowed {
        Ok(())
    } else {
        Err(ApiError::unauthorized("Invalid job token for this job"))
    }
}

pub fn require_api_token(app: &App, headers: &HeaderMap) -> ApiResult<()> {
    let token =
        header_token(headers, "Bearer").ok_or_else(|| missing("Bearer", "API access token"))?;
    if token == app.api_token.expose() {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "Authentication required. Please supply a valid API Access Token",
        ))
    }
}

pub fn parse_uuid(what: &str, raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::not_found(format!("No {what} found with id {raw:?}")))
}
