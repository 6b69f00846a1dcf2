pub mod alertmanager;
pub mod backstop;
pub mod canary;
pub mod kube;
pub mod prometheus;
pub mod tansu;

use std::path::{Path, PathBuf};

/// An external program for a test: `$env_var` if set (it must be executable), else the first of
/// `names` on PATH.
pub fn find_binary(env_var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p)))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}
