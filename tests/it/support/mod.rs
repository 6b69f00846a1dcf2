pub mod alertmanager;
pub mod backstop;
pub mod kube;
