//! The Kubernetes target: Istio VirtualServices (and Services, and Argo Rollouts) read and written
//! through the API server with kube-rs, as dynamic objects.
//!
//! Every write is a JSON merge patch that carries the `metadata.resourceVersion` it was computed
//! from: the API server refuses it with 409 if anyone changed the object since, and the executor
//! then re-reads and re-decides. A Rollout's change (its `status.abort`) goes to the status
//! subresource, as `kubectl argo rollouts abort` sends it, and backstop's annotations follow in a
//! second write (see `replace_rollout`). 429, 5xx and connection errors are retried with
//! exponential backoff and jitter (backon) within the action's deadline; 403 and 404 fail at once.

use std::path::PathBuf;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};
use tracing::warn;

use super::{Fetched, Notice, ObjectKind, ObjectRef, Target, TargetError};

pub const FIELD_MANAGER: &str = "backstop";

#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesOptions {
    /// None: in-cluster service account, else `KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// `v1` (default) or `v1beta1` for clusters on older Istio.
    pub virtualservice_version: String,
    /// Per request; the action's own deadline bounds the retries.
    pub request_timeout: Duration,
    /// Kubernetes Events on the changed objects.
    pub events: bool,
}

impl Default for KubernetesOptions {
    fn default() -> Self {
        KubernetesOptions {
            kubeconfig: None,
            context: None,
            virtualservice_version: "v1".into(),
            request_timeout: Duration::from_secs(5),
            events: true,
        }
    }
}

pub struct Kubernetes {
    client: Client,
    server: String,
    virtualservices: ApiResource,
    services: ApiResource,
    rollouts: ApiResource,
    canaries: ApiResource,
    events: bool,
    backoff: ExponentialBuilder,
}

/// The RBAC rule a verb on a resource (or its subresource) needs, as a user would write it in a
/// Role.
fn rbac_rule(ar: &ApiResource, sub: Option<&str>, verb: &str, namespace: &str) -> String {
    let resource = match sub {
        Some(sub) => format!("{}/{sub}", ar.plural),
        None => ar.plural.clone(),
    };
    format!("apiGroups: [\"{}\"], resources: [\"{resource}\"], verbs: [\"{verb}\"] in namespace {namespace}", ar.group)
}

fn is_transient(e: &TargetError) -> bool {
    matches!(e, TargetError::Unavailable(_))
}

/// A client for the cluster `opts` names (kubeconfig, context, or in-cluster), with our own
/// timeouts and no retries of its own, and the server's URL for messages. The target and the
/// cluster mode's Lease use the same one.
pub async fn client(opts: &KubernetesOptions) -> Result<(Client, String), TargetError> {
    let unavailable = |what: String| TargetError::Unavailable(what);
    let kube_opts = KubeConfigOptions { context: opts.context.clone(), ..Default::default() };
    let mut config = match &opts.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| unavailable(format!("cannot read kubeconfig {}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kc, &kube_opts)
                .await
                .map_err(|e| unavailable(format!("kubeconfig {}: {e}", path.display())))?
        }
        None if opts.context.is_some() => {
            Config::from_kubeconfig(&kube_opts).await.map_err(|e| unavailable(format!("kubeconfig: {e}")))?
        }
        None => Config::infer().await.map_err(|e| unavailable(format!("no cluster credentials: {e}")))?,
    };
    // Our own retries (backon, bounded by the action's deadline) instead of the client's.
    config.default_retry = false;
    config.connect_timeout = Some(opts.request_timeout);
    config.read_timeout = Some(opts.request_timeout);
    config.write_timeout = Some(opts.request_timeout);
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| unavailable(format!("kubernetes client: {e}")))?;
    Ok((client, server))
}

impl Kubernetes {
    pub async fn connect(opts: &KubernetesOptions) -> Result<Kubernetes, TargetError> {
        let (client, server) = client(opts).await?;
        let gvk = GroupVersionKind::gvk("networking.istio.io", &opts.virtualservice_version, "VirtualService");
        Ok(Kubernetes {
            client,
            server,
            virtualservices: ApiResource::from_gvk_with_plural(&gvk, "virtualservices"),
            services: ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Service"), "services"),
            rollouts: ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout"),
                "rollouts",
            ),
            canaries: ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("flagger.app", "v1beta1", "Canary"),
                "canaries",
            ),
            events: opts.events,
            backoff: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(2))
                .with_max_times(6)
                .with_jitter(),
        })
    }

    fn resource(&self, kind: ObjectKind) -> &ApiResource {
        match kind {
            ObjectKind::VirtualService => &self.virtualservices,
            ObjectKind::Service => &self.services,
            ObjectKind::Rollout => &self.rollouts,
            ObjectKind::FlaggerCanary => &self.canaries,
        }
    }

    fn api(&self, obj: &ObjectRef) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &obj.namespace, self.resource(obj.kind))
    }

    /// Map a client error to what the executor needs to know, with the request it was.
    fn error(&self, obj: &ObjectRef, verb: &str, e: kube::Error) -> TargetError {
        self.error_on(obj, None, verb, e)
    }

    /// [`Self::error`] for a request on the object or on its subresource `sub` (`status`).
    fn error_on(&self, obj: &ObjectRef, sub: Option<&str>, verb: &str, e: kube::Error) -> TargetError {
        let ar = self.resource(obj.kind);
        let sub_path = sub.map(|s| format!("/{s}")).unwrap_or_default();
        let what = format!("{verb} {}{sub_path} {obj}", resource_name(ar));
        match e {
            kube::Error::Api(status) => match status.code {
                404 => TargetError::NotFound {
                    kind: obj.kind.as_str(),
                    object: obj.to_string(),
                    place: format!("the cluster at {} ({what}: {})", self.server, status.message),
                },
                403 => TargetError::Forbidden {
                    message: format!("{what}: forbidden: {}", status.message),
                    rule: rbac_rule(ar, sub, verb, &obj.namespace),
                },
                409 => TargetError::Conflict { object: obj.to_string(), detail: status.message.clone() },
                400 | 422 => {
                    TargetError::Invalid { object: obj.to_string(), message: format!("{what}: {}", status.message) }
                }
                code => TargetError::Unavailable(format!("{what}: the API server answered {code}: {}", status.message)),
            },
            other => TargetError::Unavailable(format!("{what}: {other}")),
        }
    }

    async fn get_once(&self, obj: &ObjectRef) -> Result<Fetched, TargetError> {
        let found = self.api(obj).get(&obj.name).await.map_err(|e| self.error(obj, "get", e))?;
        let version = found.metadata.resource_version.clone().unwrap_or_default();
        let object = serde_json::to_value(&found)
            .map_err(|e| TargetError::Invalid { object: obj.to_string(), message: e.to_string() })?;
        Ok(Fetched { object, version })
    }

    async fn patch_once(&self, obj: &ObjectRef, patch: &Value) -> Result<(), TargetError> {
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        self.api(obj).patch(&obj.name, &params, &Patch::Merge(patch)).await.map_err(|e| self.error(obj, "patch", e))?;
        Ok(())
    }

    async fn patch_status_once(&self, obj: &ObjectRef, patch: &Value) -> Result<(), TargetError> {
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        self.api(obj)
            .patch_status(&obj.name, &params, &Patch::Merge(patch))
            .await
            .map_err(|e| self.error_on(obj, Some("status"), "patch", e))?;
        Ok(())
    }

    /// `patch_once` (or `patch_status_once`) retried while the API server is unavailable.
    async fn patch(&self, obj: &ObjectRef, status: bool, patch: &Value) -> Result<(), TargetError> {
        let once = || async {
            if status { self.patch_status_once(obj, patch).await } else { self.patch_once(obj, patch).await }
        };
        once.retry(self.backoff)
            .when(is_transient)
            .notify(|e, after| warn!(object = %obj, error = %e, retry_in = ?after, "kubernetes write failed; retrying"))
            .await
    }

    /// A Rollout's change as `kubectl argo rollouts abort` makes it: a merge patch of `status`
    /// on the status subresource, conditional on the resourceVersion read (409 if the Rollout
    /// changed since). The API server ignores metadata in a status write of a custom resource,
    /// so backstop's annotations follow in a second merge patch on the Rollout itself, after the
    /// abort landed, holding only the `backstop.io/*` keys and no resourceVersion: the Argo
    /// controller reacts to the abort at once (phase, message, abortedAt), and the annotations
    /// record what backstop did, whatever the controller wrote meanwhile. The abort is the
    /// action; if the annotations cannot be written (say RBAC grants `rollouts/status` but not
    /// `rollouts`), that is logged and the action stays applied.
    async fn replace_rollout(&self, obj: &ObjectRef, read: &Fetched, new: &Value) -> Result<(), TargetError> {
        let mut rest = match merge_diff(&read.object, new) {
            Some(Value::Object(diff)) => diff,
            _ => serde_json::Map::new(),
        };
        let status = rest.remove("status");
        if let Some(other) = rest.keys().find(|k| *k != "metadata") {
            return Err(TargetError::Invalid {
                object: obj.to_string(),
                message: format!(
                    "backstop changes only the status and annotations of a Rollout, not `{other}` (a change to its \
                     spec belongs in Git)"
                ),
            });
        }
        let Some(status) = status else {
            // Nothing for the status subresource: an ordinary conditional write.
            return self.patch(obj, false, &conditional_patch(&read.object, new, &read.version)).await;
        };
        let abort = json!({"metadata": {"resourceVersion": read.version}, "status": status});
        self.patch(obj, true, &abort).await?;
        if !rest.is_empty()
            && let Err(e) = self.patch(obj, false, &Value::Object(rest)).await
        {
            warn!(object = %obj, error = %e, "the Rollout was changed, but backstop's annotations could not be written");
        }
        Ok(())
    }

    async fn post_event(&self, obj: &ObjectRef, notice: &Notice) -> Result<(), TargetError> {
        let ar = self.resource(obj.kind);
        let now = chrono::Utc::now();
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": { "generateName": format!("{}.", obj.name), "namespace": obj.namespace },
            "involvedObject": { "apiVersion": ar.api_version, "kind": ar.kind, "name": obj.name, "namespace": obj.namespace },
            "reason": notice.reason,
            "message": notice.message,
            "type": if notice.warning { "Warning" } else { "Normal" },
            "source": { "component": FIELD_MANAGER },
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": hostname(),
            "firstTimestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "lastTimestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "count": 1,
        });
        let event: k8s_openapi::api::core::v1::Event = serde_json::from_value(event)
            .map_err(|e| TargetError::Invalid { object: obj.to_string(), message: e.to_string() })?;
        let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(self.client.clone(), &obj.namespace);
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        api.create(&params, &event).await.map_err(|e| self.error(obj, "create events for", e))?;
        Ok(())
    }
}

fn resource_name(ar: &ApiResource) -> String {
    if ar.group.is_empty() { ar.plural.clone() } else { format!("{}.{}", ar.plural, ar.group) }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_else(|| "backstop".into())
}

/// A JSON merge patch (RFC 7386) that turns `old` into `new`: changed values, new keys, and
/// `null` for removed keys; arrays are replaced whole.
pub fn merge_diff(old: &Value, new: &Value) -> Option<Value> {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut patch = serde_json::Map::new();
            for (k, v) in b {
                match a.get(k) {
                    Some(old_v) => {
                        if let Some(d) = merge_diff(old_v, v) {
                            patch.insert(k.clone(), d);
                        }
                    }
                    None => {
                        patch.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        _ if old == new => None,
        _ => Some(new.clone()),
    }
}

/// The write backstop sends: what changed, conditional on the resourceVersion it was decided from.
pub fn conditional_patch(old: &Value, new: &Value, version: &str) -> Value {
    let mut patch = merge_diff(old, new).unwrap_or_else(|| json!({}));
    if let Value::Object(p) = &mut patch {
        let meta = p.entry("metadata").or_insert_with(|| json!({}));
        if let Value::Object(m) = meta {
            m.insert("resourceVersion".into(), Value::String(version.to_string()));
        }
    }
    patch
}

impl Target for Kubernetes {
    fn describe(&self) -> String {
        format!("kubernetes:{}", self.server)
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.client
                .apiserver_version()
                .await
                .map(|_| ())
                .map_err(|e| format!("API server {} unreachable: {e}", self.server))
        })
    }

    fn get<'a>(&'a self, obj: &'a ObjectRef) -> BoxFuture<'a, Result<Fetched, TargetError>> {
        Box::pin(async move {
            (|| self.get_once(obj))
                .retry(self.backoff)
                .when(is_transient)
                .notify(
                    |e, after| warn!(object = %obj, error = %e, retry_in = ?after, "kubernetes read failed; retrying"),
                )
                .await
        })
    }

    fn replace<'a>(
        &'a self,
        obj: &'a ObjectRef,
        read: &'a Fetched,
        new: &'a Value,
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            match obj.kind {
                ObjectKind::Rollout => self.replace_rollout(obj, read, new).await,
                ObjectKind::FlaggerCanary => Err(TargetError::flagger_never_written(obj)),
                ObjectKind::VirtualService | ObjectKind::Service => {
                    self.patch(obj, false, &conditional_patch(&read.object, new, &read.version)).await
                }
            }
        })
    }

    fn notify<'a>(&'a self, obj: &'a ObjectRef, notice: &'a Notice) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if !self.events {
                return;
            }
            if let Err(e) = self.post_event(obj, notice).await {
                warn!(object = %obj, error = %e, "could not emit a Kubernetes Event");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_diff_holds_only_what_changed() {
        let old = json!({"metadata": {"name": "a", "annotations": {"x": "1"}}, "spec": {"http": [{"route": [1]}], "hosts": ["h"]}});
        let new = json!({"metadata": {"name": "a", "annotations": {"x": "1", "backstop.io/rule": "r"}}, "spec": {"http": [{"route": [2]}], "hosts": ["h"]}});
        assert_eq!(
            merge_diff(&old, &new),
            Some(json!({"metadata": {"annotations": {"backstop.io/rule": "r"}}, "spec": {"http": [{"route": [2]}]}}))
        );
        assert_eq!(merge_diff(&old, &old), None);
        assert_eq!(merge_diff(&json!({"a": 1, "b": 2}), &json!({"a": 1})), Some(json!({"b": null})));
    }

    #[test]
    fn the_write_is_conditional_on_the_version_read() {
        let old = json!({"metadata": {"resourceVersion": "7"}, "spec": {"selector": {"version": "green"}}});
        let new = json!({"metadata": {"resourceVersion": "7"}, "spec": {"selector": {"version": "blue"}}});
        assert_eq!(
            conditional_patch(&old, &new, "7"),
            json!({"metadata": {"resourceVersion": "7"}, "spec": {"selector": {"version": "blue"}}})
        );
    }
}
