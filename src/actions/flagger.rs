//! Flagger Canary: backstop never writes the object. Flagger asks, before each analysis step,
//! whether to roll back (its `rollback` webhook); backstop answers "roll back" while a hold it
//! recorded lasts, and Flagger rolls back itself. So there is nothing to decide on the object and
//! nothing to undo: the hold simply ends.

use serde_json::Value;

use super::Decided;
use crate::target::ObjectRef;

/// The object is never written: a plan on it is answered through the webhook instead.
pub fn decide(_canary: &Value) -> Result<Decided, String> {
    Err("a Flagger Canary is never written".into())
}

/// Undo is refused with what happened instead.
pub fn undo(target: &ObjectRef) -> Result<Decided, String> {
    Err(format!(
        "nothing to undo on {target}: backstop only answered Flagger's rollback webhook; \
         Flagger rolled back itself and promotes again on the next revision"
    ))
}
