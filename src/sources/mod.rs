//! Sources turn bytes into [`Event`](crate::event::Alert)s. Each transport parses its own
//! wire format here, free of I/O; the HTTP server (and later Kafka) feed them bytes.

pub mod alertmanager;
