//! The pipeline's behaviour, driven as a sender drives it (through the HTTP intake's router, on a
//! temporary audit log and a copy of the demo's manifests: see [`crate::testing`]).

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::audit::{self, Entry, Kind};
use crate::testing::*;

mod alerts;
mod controls;
mod feedback;
mod notices;
mod promote;
mod reject;
mod replica;
mod restore;
mod steps;
mod verify;
