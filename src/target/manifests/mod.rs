//! The embedded default target: a directory of Kubernetes YAML manifests (also a GitOps mode).
//! Edits change only the values they must (see [`yaml_edit`]) and are written atomically.

pub mod yaml_edit;

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::Mutex;

use super::{Fetched, ObjectKind, ObjectRef, Target, TargetError};

pub struct Manifests {
    dir: PathBuf,
    /// Serialises read-check-write so two writers in this process cannot interleave.
    write_lock: Mutex<()>,
}

/// Where an object lives: a file, the document's index in it, and the file's hash when read.
struct Location {
    file: PathBuf,
    index: usize,
    hash: String,
}

impl Manifests {
    pub fn new(dir: impl Into<PathBuf>) -> Manifests {
        Manifests { dir: dir.into(), write_lock: Mutex::new(()) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn find(&self, obj: &ObjectRef) -> Result<(Location, Value), TargetError> {
        let mut found = Vec::new();
        for file in yaml_files(&self.dir).map_err(|e| io("read directory", &self.dir, e))? {
            let text = std::fs::read_to_string(&file).map_err(|e| io("read", &file, e))?;
            // Names and namespaces (DNS-1123: no spaces or quotes) are written out literally
            // unless the file uses escapes: files without them are not parsed (a GitOps checkout
            // holds hundreds of manifests; parsing them all took 40 ms per action for 500). A
            // manifest without a namespace is in `default`, which need not be written.
            let literal = |s: &str| text.contains(s);
            let may_hold = literal(&obj.name) && (obj.namespace == "default" || literal(&obj.namespace));
            if !may_hold && !text.contains('\\') {
                continue;
            }
            // A file that is not YAML cannot hold our object; others may still.
            let Ok(docs) = yaml_edit::parse_documents(&text) else {
                continue;
            };
            for doc in docs {
                if is_object(&doc.value, obj) {
                    found.push((
                        Location {
                            file: file.clone(),
                            index: doc.index,
                            hash: crate::digest::sha256_hex(text.as_bytes()),
                        },
                        doc.value,
                    ));
                }
            }
        }
        match found.len() {
            0 => Err(TargetError::NotFound {
                kind: obj.kind.as_str(),
                object: obj.to_string(),
                place: self.dir.display().to_string(),
            }),
            1 => Ok(found.remove(0)),
            _ => Err(TargetError::Ambiguous {
                kind: obj.kind.as_str(),
                object: obj.to_string(),
                places: found
                    .iter()
                    .map(|(l, _)| format!("{} (document {})", l.file.display(), l.index + 1))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Only the file the object was read from is read again (not the whole directory: that was
    /// half of an action's time with 500 manifests), and the edit is made to the bytes whose
    /// hash was compared, so nothing written between the check and the edit is lost. Unchanged
    /// bytes hold the object at the same document; a change anywhere in the file is a conflict.
    fn replace_blocking(&self, obj: &ObjectRef, version: &str, new: &Value) -> Result<(), TargetError> {
        let conflict = |detail: String| TargetError::Conflict { object: obj.to_string(), detail };
        let Some(loc) = parse_version(version) else {
            return Err(conflict(format!("`{version}` is not a version this target gave")));
        };
        let text = std::fs::read_to_string(&loc.file).map_err(|e| io("read", &loc.file, e))?;
        if crate::digest::sha256_hex(text.as_bytes()) != loc.hash {
            return Err(conflict(format!("{} was modified", loc.file.display())));
        }
        // The version names this object's document, not another's (the search checked that).
        let holds = yaml_edit::parse_documents(&text)
            .ok()
            .and_then(|docs| docs.into_iter().find(|d| d.index == loc.index))
            .is_some_and(|d| is_object(&d.value, obj));
        if !holds {
            return Err(conflict(format!("{} document {} is not {obj}", loc.file.display(), loc.index + 1)));
        }
        let edited = yaml_edit::edit_document(&text, loc.index, new).map_err(|e| TargetError::Invalid {
            object: obj.to_string(),
            message: format!("cannot edit {}: {e}", loc.file.display()),
        })?;
        crate::fsutil::write_atomically(&loc.file, edited.as_bytes()).map_err(|e| io("write", &loc.file, e))
    }
}

fn version_of(loc: &Location) -> String {
    format!("{}#{}@{}", loc.file.display(), loc.index, loc.hash)
}

/// The [`Location`] a version names (the hash and the index hold no `@` or `#`; the path may).
fn parse_version(version: &str) -> Option<Location> {
    let (rest, hash) = version.rsplit_once('@')?;
    let (file, index) = rest.rsplit_once('#')?;
    Some(Location { file: PathBuf::from(file), index: index.parse().ok()?, hash: hash.to_string() })
}

fn is_object(v: &Value, obj: &ObjectRef) -> bool {
    let meta = &v["metadata"];
    let api = match obj.kind {
        ObjectKind::VirtualService => v["apiVersion"].as_str().is_some_and(|a| a.starts_with("networking.istio.io/")),
        ObjectKind::Service => v["apiVersion"] == "v1",
        ObjectKind::Rollout => v["apiVersion"].as_str().is_some_and(|a| a.starts_with("argoproj.io/")),
        ObjectKind::FlaggerCanary => v["apiVersion"].as_str().is_some_and(|a| a.starts_with("flagger.app/")),
    };
    v["kind"] == obj.kind.as_str()
        && api
        && meta["name"] == obj.name.as_str()
        // As in Kubernetes, a manifest without a namespace lands in `default`.
        && meta["namespace"].as_str().unwrap_or("default") == obj.namespace
}

/// A Rollout is aborted through its status, which the API server keeps and manifests do not hold.
fn unsupported(obj: &ObjectRef) -> Result<(), TargetError> {
    match obj.kind {
        ObjectKind::Rollout => Err(TargetError::Invalid {
            object: obj.to_string(),
            message: "aborting an Argo Rollout needs the kubernetes target: the abort is written to the \
                      Rollout's status, which its manifests do not hold"
                .into(),
        }),
        ObjectKind::FlaggerCanary => Err(TargetError::flagger_never_written(obj)),
        ObjectKind::VirtualService | ObjectKind::Service => Ok(()),
    }
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> TargetError {
    TargetError::Io { action, path: path.display().to_string(), source }
}

/// All `*.yaml`/`*.yml` files under `dir`, recursively, in a stable order; dot-directories skipped.
/// Symbolic links are followed; a directory reached twice (a link back up, two links to one
/// place) is listed once.
fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = std::collections::HashSet::from([std::fs::canonicalize(dir)?]);
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
                continue;
            }
            // The entry's type as the directory gives it, without a stat per file (a third of a
            // search of 500 manifests); a symbolic link is followed, as before.
            let file_type = entry.file_type()?;
            let is_dir = match file_type.is_symlink() {
                true => path.is_dir(),
                false => file_type.is_dir(),
            };
            if is_dir {
                if seen.insert(std::fs::canonicalize(&path)?) {
                    stack.push(path);
                }
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

impl Target for Manifests {
    fn describe(&self) -> String {
        format!("manifests:{}", self.dir.display())
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match std::fs::metadata(&self.dir) {
                Ok(m) if !m.is_dir() => Err(format!("{} is not a directory", self.dir.display())),
                Ok(m) if m.permissions().readonly() => Err(format!("{} is read-only", self.dir.display())),
                Ok(_) => Ok(()),
                Err(e) => Err(format!("{}: {e}", self.dir.display())),
            }
        })
    }

    fn get<'a>(&'a self, obj: &'a ObjectRef) -> BoxFuture<'a, Result<Fetched, TargetError>> {
        Box::pin(async move {
            unsupported(obj)?;
            tokio::task::block_in_place(|| {
                let (loc, object) = self.find(obj)?;
                Ok(Fetched { object, version: version_of(&loc) })
            })
        })
    }

    fn replace<'a>(
        &'a self,
        obj: &'a ObjectRef,
        read: &'a Fetched,
        new: &'a Value,
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            unsupported(obj)?;
            let _guard = self.write_lock.lock().await;
            tokio::task::block_in_place(|| self.replace_blocking(obj, &read.version, new))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = "# the demo canary\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: model-service\n  namespace: sms-app\nspec:\n  hosts:\n  - model-service\n  http:\n  - route:\n    - destination:\n        host: model-service\n        subset: v1\n      weight: 90 # stable\n    - destination:\n        host: model-service\n        subset: v2\n      weight: 10\n";

    fn setup() -> (tempfile::TempDir, Manifests, ObjectRef) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("nested")).unwrap();
        std::fs::write(dir.path().join("nested/vs.yaml"), VS).unwrap();
        std::fs::write(dir.path().join("other.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
            .unwrap();
        let m = Manifests::new(dir.path());
        (dir, m, ObjectRef::virtual_service("sms-app", "model-service"))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn finds_object_in_nested_directory_and_writes_only_changed_values() {
        let (dir, m, obj) = setup();
        let fetched = m.get(&obj).await.unwrap();
        let mut new = fetched.object.clone();
        new["spec"]["http"][0]["route"][0]["weight"] = 100.into();
        new["spec"]["http"][0]["route"][1]["weight"] = 0.into();
        m.replace(&obj, &fetched, &new).await.unwrap();
        let text = std::fs::read_to_string(dir.path().join("nested/vs.yaml")).unwrap();
        assert_eq!(
            text,
            VS.replace("weight: 90 # stable", "weight: 100 # stable").replace("weight: 10\n", "weight: 0\n")
        );
        assert_eq!(m.get(&obj).await.unwrap().object, new);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("nested")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_version_names_its_file_document_and_hash_even_with_hashes_and_ats_in_the_path() {
        let loc = Location { file: PathBuf::from("/git/a#b@c/vs.yaml"), index: 3, hash: "ab12".into() };
        let back = parse_version(&version_of(&loc)).unwrap();
        assert_eq!((back.file, back.index, back.hash), (loc.file, 3, loc.hash));
        assert!(parse_version("12345").is_none(), "a resourceVersion is not ours");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_version_not_from_this_target_or_of_another_object_is_a_conflict() {
        let (dir, m, obj) = setup();
        let fetched = Fetched { object: serde_json::json!({}), version: "7".into() };
        let err = m.replace(&obj, &fetched, &fetched.object).await.unwrap_err();
        assert!(matches!(err, TargetError::Conflict { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(dir.path().join("nested/vs.yaml")).unwrap(), VS);
        // Another object's version: its file is not written for this one.
        let other = ObjectRef::virtual_service("sms-app", "other");
        let err = m.replace(&other, &m.get(&obj).await.unwrap(), &fetched.object).await.unwrap_err();
        assert!(err.to_string().contains("is not"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.path().join("nested/vs.yaml")).unwrap(), VS);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn manifests_under_a_symlinked_directory_are_found() {
        let (dir, m, obj) = setup();
        std::fs::create_dir(dir.path().join(".real")).unwrap();
        std::fs::rename(dir.path().join("nested/vs.yaml"), dir.path().join(".real/vs.yaml")).unwrap();
        assert!(matches!(m.get(&obj).await, Err(TargetError::NotFound { .. })), "dot-directories are skipped");
        std::os::unix::fs::symlink(dir.path().join(".real"), dir.path().join("linked")).unwrap();
        let fetched = m.get(&obj).await.unwrap();
        assert!(fetched.version.contains("linked"), "{}", fetched.version);
        // Links back up (to the top, to a directory between) are not followed again: the
        // object is found once, not forever or as a duplicate of itself.
        std::fs::rename(dir.path().join(".real/vs.yaml"), dir.path().join("nested/vs.yaml")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join(".real/top")).unwrap();
        std::fs::create_dir(dir.path().join("nested/deeper")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nested"), dir.path().join("nested/deeper/up")).unwrap();
        let fetched = m.get(&obj).await.unwrap();
        assert!(fetched.version.contains("/nested/vs.yaml#0@"), "{}", fetched.version);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn stale_version_is_a_conflict_and_writes_nothing() {
        let (dir, m, obj) = setup();
        let fetched = m.get(&obj).await.unwrap();
        let path = dir.path().join("nested/vs.yaml");
        std::fs::write(&path, VS.replace("# the demo canary", "# edited by a person")).unwrap();
        let err = m.replace(&obj, &fetched, &fetched.object).await.unwrap_err();
        assert!(matches!(err, TargetError::Conflict { .. }), "{err}");
        assert!(std::fs::read_to_string(&path).unwrap().contains("edited by a person"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn missing_and_duplicated_objects_are_clear_errors() {
        let (dir, m, _) = setup();
        let err = m.get(&ObjectRef::virtual_service("sms-app", "nope")).await.unwrap_err();
        assert_eq!(err.to_string(), format!("VirtualService sms-app/nope not found in {}", dir.path().display()));
        std::fs::write(dir.path().join("copy.yml"), VS).unwrap();
        let err = m.get(&ObjectRef::virtual_service("sms-app", "model-service")).await.unwrap_err();
        assert!(matches!(err, TargetError::Ambiguous { .. }), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_rollout_abort_needs_the_kubernetes_target() {
        let (dir, m, _) = setup();
        let ro = "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata:\n  name: model-service\n  namespace: sms-app\nspec:\n  replicas: 3\n";
        std::fs::write(dir.path().join("rollout.yaml"), ro).unwrap();
        let obj = ObjectRef::rollout("sms-app", "model-service");
        let err = m.get(&obj).await.unwrap_err();
        assert!(matches!(err, TargetError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("aborting an Argo Rollout needs the kubernetes target"), "{err}");
        let read = Fetched { object: serde_json::json!({}), version: String::new() };
        let err = m.replace(&obj, &read, &serde_json::json!({"status": {"abort": true}})).await.unwrap_err();
        assert!(err.to_string().contains("needs the kubernetes target"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.path().join("rollout.yaml")).unwrap(), ro, "nothing written");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_name_written_with_escapes_is_still_found_and_makes_a_duplicate_ambiguous() {
        let (dir, m, obj) = setup();
        // "model-service" spelled with YAML escapes: not literally in the file.
        let escaped = VS.replace("model-service", "\"model\\x2dservice\"");
        assert!(!escaped.contains("model-service"), "the name is escaped: {escaped}");
        std::fs::write(dir.path().join("escaped.yaml"), &escaped).unwrap();
        let err = m.get(&obj).await.unwrap_err();
        assert!(matches!(err, TargetError::Ambiguous { .. }), "{err}");
        std::fs::remove_file(dir.path().join("nested/vs.yaml")).unwrap();
        assert!(m.get(&obj).await.is_ok(), "found through the escape");
        // The same name in another namespace, and a manifest in `default` without a namespace.
        std::fs::write(dir.path().join("team.yaml"), VS.replace("sms-app", "team-a")).unwrap();
        assert!(m.get(&obj).await.is_ok());
        let in_default = VS.replace("  namespace: sms-app\n", "");
        std::fs::write(dir.path().join("default.yaml"), in_default).unwrap();
        assert!(m.get(&ObjectRef::virtual_service("default", "model-service")).await.is_ok());
    }
}
