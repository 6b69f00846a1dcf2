//! Istio objects: pure decisions on VirtualService traffic weights.

pub mod testing;
pub mod virtualservice;

pub use virtualservice::{
    Annotations, Change, Dest, DestState, Outcome, Plan, RouteState, VsError, Weight, annotate, apply, restore, routes,
};
