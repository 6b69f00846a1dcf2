//! Sources turn bytes into events ([`crate::event::Alert`]) and hand them to the pipeline. Each
//! transport parses its own wire format in a pure module (`alertmanager`); the transports
//! themselves (the HTTP server, the Kafka consumer) implement [`crate::task::Task`] and run as
//! tasks that the server starts and stops together.

pub mod alertmanager;
#[cfg(test)]
mod fuzzing;
pub mod kafka;
pub mod message;
pub mod timestamp;
