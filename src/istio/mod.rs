//! Istio objects: pure decisions on VirtualService traffic weights.

pub mod testing;
pub mod virtualservice;

pub use virtualservice::{
    Change, Dest, DestState, Outcome, Plan, RouteState, VsError, Weight, apply, canary_weight, restore, routes,
    step_at_or_below,
};
