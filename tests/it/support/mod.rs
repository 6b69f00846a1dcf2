pub mod alertmanager;
pub mod backstop;
pub mod canary;
pub mod kube;
pub mod prometheus;
pub mod tansu;
