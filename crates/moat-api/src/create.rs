//! Helpers for Docker's bodies other than the create body (that one is
//! `moat_engine::create_body`, shared with the CLI): exec, update, start.

use crate::http::{ApiError, Result};
use serde_json::Value;

/// A list of strings (`null`: none; one string: a list of one).
pub(crate) fn strings(v: &Value, what: &str) -> Result<Vec<String>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(|| ApiError::bad(format!("{what}: expected strings"))))
            .collect(),
        _ => Err(ApiError::bad(format!("{what}: expected a list of strings"))),
    }
}

/// `ConsoleSize: [rows, cols]` of `v`, when both are set.
pub(crate) fn console_size(v: &Value) -> Option<moat_engine::WinSize> {
    let a = v.get("ConsoleSize")?.as_array()?;
    let (rows, cols) = (a.first()?.as_u64()? as u16, a.get(1)?.as_u64()? as u16);
    (rows > 0 && cols > 0).then_some(moat_engine::WinSize { rows, cols })
}

/// `RestartPolicy: {Name, MaximumRetryCount}` of `v`, if it names one.
pub(crate) fn restart_policy(v: &Value) -> Result<Option<moat_engine::config::RestartPolicy>> {
    match v.get("RestartPolicy").filter(|r| !r.is_null()) {
        Some(r) => {
            let body: moat_engine::create_body::RestartPolicyBody =
                serde_json::from_value(r.clone()).map_err(|e| ApiError::bad(format!("invalid RestartPolicy: {e}")))?;
            Ok(body.policy()?)
        }
        None => Ok(None),
    }
}
