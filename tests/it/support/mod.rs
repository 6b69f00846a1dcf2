pub mod alertmanager;
pub mod backstop;
