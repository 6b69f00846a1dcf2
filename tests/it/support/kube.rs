//! A Kubernetes API server emulator for integration tests (issue #3): plain HTTP on a free
//! 127.0.0.1 port, reached through a kubeconfig exactly as a user points backstop at a cluster.
//!
//! ```ignore
//! let kube = KubeEmulator::start().await;
//! kube.seed(serde_yaml_ng::from_str(VIRTUAL_SERVICE_YAML)?);    // as if `kubectl apply`'d
//! let kubeconfig = kube.write_kubeconfig(dir.path());           // contexts "emulator" and "other"
//! kube.conflict_next(1);                                         // a concurrent writer, once
//! // ... run backstop against it ...
//! let vs = kube.get("networking.istio.io/v1", "VirtualService", "sms-app", "model-service");
//! ```
//!
//! It runs on a thread and tokio runtime of its own, so it answers while the test's thread
//! blocks (say, waiting for a backstop child process that talks to it).
//!
//! What it serves, with the real paths, content types and `Status` bodies (404, 409, 403, 422,
//! 401, ...): discovery (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/{group}[/{version}]`,
//! aggregated discovery v2 when asked for it by `Accept`), and for every row of [`RESOURCES`]
//! GET, LIST (per namespace and across namespaces, with `labelSelector`), POST, PUT and PATCH
//! (`merge-patch+json`, `json-patch+json`, `strategic-merge-patch+json` for built-in types
//! only, `apply-patch+yaml`), on the object and on its `/status` subresource. WATCH and DELETE
//! answer 405.
//!
//! The semantics a client can observe: a global resourceVersion counter; `metadata.generation`
//! counts changes outside metadata and status; a no-op write stores nothing and keeps the
//! resourceVersion; `metadata.resourceVersion` in a PUT or patch body is a precondition (409);
//! a PUT of a custom resource must carry one (422); `dryRun=All` validates and answers without
//! storing; custom resources are pruned (unknown fields dropped, with a `Warning` header, or 400
//! with `fieldValidation=Strict`) and validated against the CRD's `openAPIV3Schema` of the
//! request's version from the repository's `crds/` (422 naming the field, nothing stored);
//! server-side apply needs `fieldManager` and reports field-ownership conflicts (409) unless `force=true`;
//! `managedFields` are kept in the real FieldsV1 shape, with lists owned as a whole (true of
//! CRDs without list-type markers; a simplification for Services), and an apply does not
//! remove fields its manager stops applying.
//!
//! Stored objects as the server would return them: [`KubeEmulator::seed`] records the manager
//! `kubectl-client-side-apply` and the `kubectl.kubernetes.io/last-applied-configuration`
//! annotation, like `kubectl apply`; writes behind the client's back ([`KubeEmulator::mutate`],
//! [`KubeEmulator::conflict_next`], [`KubeEmulator::before_write`]) are made by the manager
//! `kubectl-edit`. The client is the user `system:serviceaccount:backstop:backstop` (in 403
//! messages).
//!
//! Faults ([`KubeEmulator::fail_next`], [`KubeEmulator::delay_next`]) apply to requests with
//! the given method and, when given, resource plural (a subresource request matches its
//! resource). A delayed request is still carried out after the delay even if its client gave
//! up, as a real server would: a client that timed out does not know whether its write happened.
//!
//! What kube-rs 5 sends (kube-core `request.rs`/`params.rs`): PATCH with `Accept:
//! application/json` and `Content-Type` `application/merge-patch+json` (Patch::Merge),
//! `application/json-patch+json` (Patch::Json, only with kube's `jsonpatch` feature),
//! `application/strategic-merge-patch+json` (Patch::Strategic) or `application/apply-patch+yaml`
//! (Patch::Apply, whose body is JSON); query `dryRun=All`, `force=true`, `fieldManager`,
//! `fieldValidation`. The default client retries 429, 503 and 504 up to 15 times (honouring
//! `Retry-After`) and has no read timeout.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------------------------
// The resource table

/// One served resource. All of `versions` share one storage (conversion only rewrites
/// `apiVersion`, as for Istio's identical v1/v1beta1/v1alpha3 schemas); the first is preferred.
#[derive(Debug)]
pub struct ResourceDef {
    pub group: &'static str,
    pub versions: &'static [&'static str],
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Has a `/status` subresource: object writes ignore `.status`, `/status` writes change only
    /// `.status`, and `metadata.generation` counts changes outside metadata and status.
    pub status: bool,
    /// `metadata.name` of the CustomResourceDefinition in `crds/*.yaml` that prunes and
    /// validates the object (`None` for built-in types, which also accept strategic merge
    /// patches and unconditional PUTs).
    pub crd: Option<&'static str>,
    /// Further validation, as a built-in type's strategy does.
    pub check: Option<fn(&Value) -> Vec<FieldError>>,
}

const ISTIO: &[&str] = &["istio-io", "networking-istio-io"];

/// What the emulator serves. Adding a resource is one row, and for a custom resource its CRD in
/// the repository's `crds/` (see `crds/README.md`).
pub const RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        group: "networking.istio.io",
        versions: &["v1", "v1beta1", "v1alpha3"],
        plural: "virtualservices",
        singular: "virtualservice",
        kind: "VirtualService",
        namespaced: true,
        short_names: &["vs"],
        categories: ISTIO,
        status: true,
        crd: Some("virtualservices.networking.istio.io"),
        check: None,
    },
    ResourceDef {
        group: "networking.istio.io",
        versions: &["v1", "v1beta1", "v1alpha3"],
        plural: "destinationrules",
        singular: "destinationrule",
        kind: "DestinationRule",
        namespaced: true,
        short_names: &["dr"],
        categories: ISTIO,
        status: true,
        crd: Some("destinationrules.networking.istio.io"),
        check: None,
    },
    ResourceDef {
        group: "",
        versions: &["v1"],
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        status: true,
        crd: None,
        check: None,
    },
    ResourceDef {
        group: "",
        versions: &["v1"],
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        status: false,
        crd: None,
        check: Some(check_core_event),
    },
    ResourceDef {
        group: "events.k8s.io",
        versions: &["v1"],
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        status: false,
        crd: None,
        check: Some(check_events_v1),
    },
    ResourceDef {
        group: "",
        versions: &["v1"],
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        status: true,
        crd: None,
        check: None,
    },
    ResourceDef {
        group: "coordination.k8s.io",
        versions: &["v1"],
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        categories: &[],
        status: false,
        crd: None,
        check: Some(check_lease),
    },
    ResourceDef {
        group: "argoproj.io",
        versions: &["v1alpha1"],
        plural: "rollouts",
        singular: "rollout",
        kind: "Rollout",
        namespaced: true,
        short_names: &["ro"],
        categories: &[],
        status: true,
        crd: Some("rollouts.argoproj.io"),
        check: None,
    },
];

/// The user the emulator's token belongs to.
pub const USER: &str = "system:serviceaccount:backstop:backstop";
/// The manager of writes made behind the client's back.
pub const OTHER_WRITER: &str = "kubectl-edit";
const VERBS: &[&str] = &["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"];
const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

fn find(group: &str, version: Option<&str>, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.plural == plural && version.is_none_or(|v| r.versions.contains(&v)))
}

fn find_kind(api_version: &str, kind: &str) -> usize {
    let (group, version) = split_api_version(api_version);
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.kind == kind && r.versions.contains(&version))
        .unwrap_or_else(|| panic!("the emulator serves no {kind} in {api_version}"))
}

fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

fn api_version(res: &ResourceDef, version: &str) -> String {
    if res.group.is_empty() { version.to_owned() } else { format!("{}/{version}", res.group) }
}

/// `virtualservices.networking.istio.io`, or `services` in the core group.
fn group_resource(res: &ResourceDef) -> String {
    if res.group.is_empty() { res.plural.to_owned() } else { format!("{}.{}", res.plural, res.group) }
}

// ---------------------------------------------------------------------------------------------
// The public handle

/// One request as the emulator answered it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw query string, `""` when none.
    pub query: String,
    pub content_type: Option<String>,
    pub field_manager: Option<String>,
    /// The request body as text.
    pub body: String,
    /// The HTTP status answered.
    pub status: u16,
}

/// The emulated API server; dropping it stops the server.
pub struct KubeEmulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    closed_port: u16,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

type Hook = Arc<dyn Fn(&mut Value) + Send + Sync>;

struct Shared {
    token: String,
    addr: SocketAddr,
    state: Mutex<Store>,
}

struct Fault {
    method: String,
    resource: Option<String>,
    left: usize,
    effect: Effect,
}

#[derive(Clone, Copy)]
enum Effect {
    Fail(u16),
    Delay(Duration),
}

struct Deny {
    verb: String,
    resource: String,
    namespace: Option<String>,
}

#[derive(Default)]
struct Store {
    /// The last resourceVersion handed out.
    rv: u64,
    /// (index in RESOURCES, namespace, name) -> object as stored (preferred version).
    objects: BTreeMap<(usize, String, String), Value>,
    requests: Vec<RequestRecord>,
    faults: Vec<Fault>,
    conflicts: usize,
    hook: Option<Hook>,
    denies: Vec<Deny>,
}

impl KubeEmulator {
    /// Starts the server on a free 127.0.0.1 port, on a thread and runtime of its own: it keeps
    /// answering while the test's thread blocks (waiting for a child process, say).
    pub async fn start() -> KubeEmulator {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let closed_port = {
            let probe = StdListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            probe.local_addr().expect("local address").port()
        };
        let token = format!("emulator-{:016x}", mix(nanos() ^ u64::from(addr.port())));
        let shared = Arc::new(Shared { token, addr, state: Mutex::new(Store::default()) });
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("emulator runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        KubeEmulator { shared, addr, closed_port, shutdown: Some(tx) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// Writes `dir/kubeconfig`: cluster `emulator` (this server, current context) and cluster
    /// `other` (a closed port), both used by the bearer-token user `backstop`.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n\
             - name: emulator\n  cluster:\n    server: {url}\n\
             - name: other\n  cluster:\n    server: http://127.0.0.1:{closed}\n\
             users:\n- name: backstop\n  user:\n    token: {token}\n\
             contexts:\n\
             - name: emulator\n  context:\n    cluster: emulator\n    user: backstop\n\
             - name: other\n  context:\n    cluster: other\n    user: backstop\n\
             current-context: emulator\npreferences: {{}}\n",
            url = self.url(),
            closed = self.closed_port,
            token = self.token(),
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Stores `obj` as `kubectl apply` would (manager `kubectl-client-side-apply`, the
    /// last-applied annotation), creating it or replacing an existing one; validated like any
    /// Seed `rollout` (see [`canary_rollout`]) and give it the status the Argo controller
    /// leaves on a canary paused at its second step.
    pub fn seed_paused_rollout(&self, rollout: Value) {
        self.seed(rollout);
        self.mutate("argoproj.io/v1alpha1", "Rollout", "sms-app", "model-service", |ro| {
            ro["status"] = json!({"phase": "Paused", "message": "CanaryPauseStep", "currentStepIndex": 1});
        });
    }

    /// write, panicking with the server's message if rejected. Returns the object as stored.
    /// As on a real server, `status` is not written this way: set it with [`Self::mutate`].
    /// An emulator holding the demo's objects (`deploy/local/model-service.yaml`: the
    /// DestinationRule and the VirtualService), as if `kubectl apply`'d.
    pub async fn with_demo() -> KubeEmulator {
        let emu = KubeEmulator::start().await;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/model-service.yaml");
        let text = std::fs::read_to_string(&path).expect("the demo's manifest");
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            emu.seed(Value::deserialize(doc).expect("the demo's manifest is YAML"));
        }
        emu
    }

    pub fn seed(&self, mut obj: Value) -> Value {
        let api_version = obj["apiVersion"].as_str().expect("seed: apiVersion").to_owned();
        let kind = obj["kind"].as_str().expect("seed: kind").to_owned();
        let res = find_kind(&api_version, &kind);
        let (_, version) = split_api_version(&api_version);
        let ns = if RESOURCES[res].namespaced {
            obj["metadata"]["namespace"].as_str().unwrap_or("default").to_owned()
        } else {
            String::new()
        };
        let mut last_applied = obj.clone();
        if RESOURCES[res].namespaced {
            last_applied["metadata"]["namespace"] = ns.clone().into();
        }
        if let Some(annotations) = last_applied["metadata"]["annotations"].as_object_mut() {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        let annotations = annotations_mut(&mut obj);
        annotations.insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            format!("{}\n", serde_json::to_string(&last_applied).expect("JSON")).into(),
        );
        let name = obj["metadata"]["name"].as_str().expect("seed: metadata.name").to_owned();
        let mut store = self.shared.lock();
        // An existing object is replaced.
        let current = store.objects.get(&key(res, &ns, &name)).map(|o| o["metadata"]["resourceVersion"].clone());
        let (method, name) = match current {
            Some(rv) => {
                obj["metadata"]["resourceVersion"] = rv;
                (Method::PUT, Some(name))
            }
            None => (Method::POST, None),
        };
        let body = serde_json::to_vec(&obj).expect("JSON");
        let call = Call::internal(method, "application/json", "fieldManager=kubectl-client-side-apply", body);
        let target = Target { res, version: version.to_owned(), ns: Some(ns), name, sub: None };
        let reply = store.resource_call(&call, &target);
        assert!(reply.code < 300, "seed rejected: {}", reply.body["message"]);
        reply.body
    }

    /// The stored object in `api_version`, if there is one (`namespace` is ignored for
    /// cluster-scoped kinds).
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let res = find_kind(api_version, kind);
        let key = key(res, namespace, name);
        let mut obj = self.shared.lock().objects.get(&key).cloned()?;
        obj["apiVersion"] = api_version.into();
        Some(obj)
    }

    /// Changes a stored object behind the client's back, as the manager `kubectl-edit`: always
    /// a new resourceVersion (and generation when something outside metadata and status changed).
    /// `f` (like a [`Self::before_write`] hook) runs under the emulator's lock: it must not call
    /// the emulator.
    pub fn mutate(&self, api_version: &str, kind: &str, namespace: &str, name: &str, f: impl FnOnce(&mut Value)) {
        let res = find_kind(api_version, kind);
        let key = key(res, namespace, name);
        let mut store = self.shared.lock();
        assert!(store.objects.contains_key(&key), "mutate: no {kind} {namespace}/{name}");
        store.write_behind(
            &key,
            |obj| {
                obj["apiVersion"] = api_version.into();
                f(obj);
            },
            true,
        );
    }

    /// Every Event created so far (core `v1` and `events.k8s.io/v1`), oldest first.
    pub fn events(&self) -> Vec<Value> {
        let store = self.shared.lock();
        let mut events: Vec<Value> = store
            .objects
            .iter()
            .filter(|((res, _, _), _)| RESOURCES[*res].plural == "events")
            .map(|(_, obj)| obj.clone())
            .collect();
        events.sort_by_key(|e| e["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse::<u64>().ok()));
        events
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// The next `n` requests with `method` (and resource plural, when given) are answered
    /// `status` with the server's `Status` body (429 also carries `Retry-After: 1`).
    pub fn fail_next(&self, method: &str, resource: Option<&str>, status: u16, n: usize) {
        self.fault(method, resource, n, Effect::Fail(status));
    }

    /// The next `n` matching requests wait `delay` before they are carried out and answered.
    pub fn delay_next(&self, method: &str, resource: Option<&str>, delay: Duration, n: usize) {
        self.fault(method, resource, n, Effect::Delay(delay));
    }

    /// Before each of the next `n` writes (PUT or PATCH) to an existing object, another writer
    /// changes it (the annotation `emulator.backstop.io/concurrent-writes`), so a write
    /// conditional on the resourceVersion the client read gets 409; an unconditional one wins.
    pub fn conflict_next(&self, n: usize) {
        self.shared.lock().conflicts += n;
    }

    /// Runs `hook` on the stored object before every later write (PUT or PATCH) to an existing
    /// object, as another writer; a change is stored with a new resourceVersion. Replaces any
    /// earlier hook.
    pub fn before_write(&self, hook: impl Fn(&mut Value) + Send + Sync + 'static) {
        self.shared.lock().hook = Some(Arc::new(hook));
    }

    /// RBAC: `verb` (`get`, `list`, `create`, `update`, `patch`, or `*`) on `resource` (a plural
    /// such as `virtualservices`, or `virtualservices/status`) is forbidden in `namespace`
    /// (`None`: everywhere, including cluster-scoped requests).
    pub fn deny(&self, verb: &str, resource: &str, namespace: Option<&str>) {
        self.shared.lock().denies.push(Deny {
            verb: verb.to_owned(),
            resource: resource.to_owned(),
            namespace: namespace.map(str::to_owned),
        });
    }

    fn fault(&self, method: &str, resource: Option<&str>, n: usize, effect: Effect) {
        self.shared.lock().faults.push(Fault {
            method: method.to_ascii_uppercase(),
            resource: resource.map(str::to_owned),
            left: n,
            effect,
        });
    }
}

impl Drop for KubeEmulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(res: usize, namespace: &str, name: &str) -> (usize, String, String) {
    let ns = if RESOURCES[res].namespaced { namespace } else { "" };
    (res, ns.to_owned(), name.to_owned())
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// A request, parsed.
struct Call {
    /// Made by the test through [`KubeEmulator::seed`]: no RBAC, no other writers.
    internal: bool,
    method: Method,
    path: String,
    raw_query: String,
    query: HashMap<String, String>,
    content_type: String,
    accept: String,
    user_agent: String,
    body: Bytes,
}

impl Call {
    fn internal(method: Method, content_type: &str, raw_query: &str, body: Vec<u8>) -> Call {
        Call {
            internal: true,
            method,
            path: String::new(),
            raw_query: raw_query.to_owned(),
            query: parse_query(raw_query),
            content_type: content_type.to_owned(),
            accept: String::new(),
            user_agent: String::new(),
            body: Bytes::from(body),
        }
    }

    fn q(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn dry_run(&self) -> bool {
        self.q("dryRun") == Some("All")
    }

    /// The manager of a non-apply write: `fieldManager`, else the user agent's product name.
    fn manager(&self) -> String {
        self.q("fieldManager").map(str::to_owned).unwrap_or_else(|| {
            let product = self.user_agent.split('/').next().unwrap_or("").trim();
            if product.is_empty() { "unknown".to_owned() } else { product.to_owned() }
        })
    }
}

fn parse_query(raw: &str) -> HashMap<String, String> {
    let uri: axum::http::Uri = format!("/?{raw}").parse().unwrap_or_default();
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(&uri).map(|q| q.0).unwrap_or_default()
}

/// An answer: status code, JSON body, extra headers.
struct Reply {
    code: u16,
    body: Value,
    headers: Vec<(&'static str, String)>,
    content_type: &'static str,
}

impl Reply {
    fn json(code: u16, body: Value) -> Reply {
        Reply { code, body, headers: Vec::new(), content_type: "application/json" }
    }
}

type Res<T> = Result<T, Reply>;

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    // Carried out in its own task, so a client that gives up does not cancel it.
    let task = tokio::spawn(serve(shared, req));
    match task.await {
        Ok(resp) => resp,
        Err(e) => status(500, "InternalError", format!("Internal error occurred: {e}"), None).into_response(),
    }
}

async fn serve(shared: Arc<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
    let header =
        |name: &str| parts.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok()).unwrap_or("").to_owned();
    let raw_query = parts.uri.query().unwrap_or("").to_owned();
    let call = Call {
        internal: false,
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parse_query(&raw_query),
        raw_query,
        content_type: header("content-type"),
        accept: header("accept"),
        user_agent: header("user-agent"),
        body,
    };
    let route = route(&call.path);
    let plural = match &route {
        Route::Resource(t) => Some(RESOURCES[t.res].plural),
        _ => None,
    };
    let reply = if header("authorization") != format!("Bearer {}", shared.token) {
        status(401, "Unauthorized", "Unauthorized".into(), None)
    } else {
        let delay = shared.lock().take_fault(&call.method, plural, |e| matches!(e, Effect::Delay(_)));
        if let Some(Effect::Delay(d)) = delay {
            tokio::time::sleep(d).await;
        }
        let failure = shared.lock().take_fault(&call.method, plural, |e| matches!(e, Effect::Fail(_)));
        match failure {
            Some(Effect::Fail(code)) => injected(code),
            _ => shared.lock().answer(&call, &route, shared.addr),
        }
    };
    shared.lock().requests.push(RequestRecord {
        method: call.method.to_string(),
        path: call.path.clone(),
        query: call.raw_query.clone(),
        content_type: Some(call.content_type.clone()).filter(|c| !c.is_empty()),
        field_manager: call.q("fieldManager").map(str::to_owned),
        body: String::from_utf8_lossy(&call.body).into_owned(),
        status: reply.code,
    });
    reply.into_response()
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut resp = Response::builder()
            .status(self.code)
            .header("content-type", self.content_type)
            .header("cache-control", "no-cache, private");
        for (name, value) in self.headers {
            resp = resp.header(name, value);
        }
        resp.body(axum::body::Body::from(serde_json::to_vec(&self.body).expect("JSON"))).expect("response")
    }
}

// ---------------------------------------------------------------------------------------------
// Status bodies, as k8s.io/apimachinery/pkg/api/errors builds them

fn status(code: u16, reason: &str, message: String, details: Option<Value>) -> Reply {
    let mut body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason,
    });
    if let Some(details) = details {
        body["details"] = details;
    }
    body["code"] = code.into();
    Reply::json(code, body)
}

/// `{name, group, kind}` with the resource plural as kind (empty fields left out).
fn details(res: &ResourceDef, name: &str) -> Value {
    let mut d = Map::new();
    if !name.is_empty() {
        d.insert("name".into(), name.into());
    }
    if !res.group.is_empty() {
        d.insert("group".into(), res.group.into());
    }
    d.insert("kind".into(), res.plural.into());
    Value::Object(d)
}

fn not_found(res: &ResourceDef, name: &str) -> Reply {
    let message = format!("{} \"{name}\" not found", group_resource(res));
    status(404, "NotFound", message, Some(details(res, name)))
}

fn conflict(res: &ResourceDef, name: &str) -> Reply {
    let message = format!(
        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
        group_resource(res)
    );
    status(409, "Conflict", message, Some(details(res, name)))
}

fn already_exists(res: &ResourceDef, name: &str) -> Reply {
    let message = format!("{} \"{name}\" already exists", group_resource(res));
    status(409, "AlreadyExists", message, Some(details(res, name)))
}

fn bad_request(message: String) -> Reply {
    status(400, "BadRequest", message, None)
}

fn unsupported_media_type(accepted: &str) -> Reply {
    let message =
        format!("the body of the request was in an unknown format - accepted media types include: {accepted}");
    status(415, "UnsupportedMediaType", message, None)
}

fn path_not_found() -> Reply {
    status(404, "NotFound", "the server could not find the requested resource".into(), Some(json!({})))
}

fn method_not_allowed() -> Reply {
    let message = "the server does not allow this method on the requested resource".into();
    status(405, "MethodNotAllowed", message, Some(json!({})))
}

/// A field error as `field.Error` renders it: `field: body`.
#[derive(Clone, Debug)]
pub struct FieldError {
    pub field: String,
    /// The cause type: `FieldValueRequired`, `FieldValueInvalid`, `FieldValueTypeInvalid`, ...
    pub reason: &'static str,
    /// `Required value`, `Invalid value: 5: ...`, ...
    pub body: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: &'static str, body: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), reason, body: body.into() }
    }

    fn required(field: impl Into<String>) -> FieldError {
        FieldError::new(field, "FieldValueRequired", "Required value")
    }

    fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> FieldError {
        FieldError::new(field, "FieldValueInvalid", format!("Invalid value: {}: {detail}", go_value(value)))
    }
}

fn invalid_status(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> Reply {
    let rendered: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.field, e.body)).collect();
    let qualified = if group.is_empty() { kind.to_owned() } else { format!("{kind}.{group}") };
    let message = match rendered.as_slice() {
        [one] => format!("{qualified} \"{name}\" is invalid: {one}"),
        many => format!("{qualified} \"{name}\" is invalid: [{}]", many.join(", ")),
    };
    let causes: Vec<Value> =
        errors.iter().map(|e| json!({"reason": e.reason, "message": e.body, "field": e.field})).collect();
    let mut d = Map::new();
    if !name.is_empty() {
        d.insert("name".into(), name.into());
    }
    if !group.is_empty() {
        d.insert("group".into(), group.into());
    }
    d.insert("kind".into(), kind.into());
    d.insert("causes".into(), causes.into());
    status(422, "Invalid", message, Some(Value::Object(d)))
}

fn invalid(res: &ResourceDef, name: &str, errors: &[FieldError]) -> Reply {
    invalid_status(res.group, res.kind, name, errors)
}

fn forbidden(res: &ResourceDef, t: &Target, verb: &str) -> Reply {
    let resource = match &t.sub {
        Some(sub) => format!("{}/{sub}", res.plural),
        None => res.plural.to_owned(),
    };
    let scope = match &t.ns {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_owned(),
    };
    let name = t.name.as_deref().unwrap_or("");
    let subject = if name.is_empty() { group_resource(res) } else { format!("{} \"{name}\"", group_resource(res)) };
    let message = format!(
        "{subject} is forbidden: User \"{USER}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
        res.group
    );
    status(403, "Forbidden", message, Some(details(res, name)))
}

/// The answer to an injected failure.
fn injected(code: u16) -> Reply {
    let (reason, message, details) = match code {
        429 => ("TooManyRequests", "Too many requests, please try again later.", json!({"retryAfterSeconds": 1})),
        500 => (
            "InternalError",
            "Internal error occurred: injected by the emulator",
            json!({"causes": [{"message": "injected by the emulator"}]}),
        ),
        503 => ("ServiceUnavailable", "the server is currently unable to handle the request", json!({})),
        504 => (
            "Timeout",
            "Timeout: request did not complete within requested timeout - context deadline exceeded",
            json!({}),
        ),
        // Others as apimachinery's NewGenericServerResponse words them.
        409 => ("Conflict", "the server reported a conflict", json!({})),
        404 => ("NotFound", "the server could not find the requested resource", json!({})),
        400 => ("BadRequest", "the server rejected our request for an unknown reason", json!({})),
        _ if code >= 500 => {
            ("InternalError", "an error on the server (\"\") has prevented the request from succeeding", json!({}))
        }
        _ => ("Unknown", "the server responded with an unexpected status code", json!({})),
    };
    let mut reply = status(code, reason, message.into(), Some(details));
    if code == 429 {
        reply.headers.push(("retry-after", "1".into()));
    }
    reply
}

// ---------------------------------------------------------------------------------------------
// Routing

struct Target {
    res: usize,
    version: String,
    /// The namespace of the path (`None`: all namespaces, or cluster scope).
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

enum Route {
    Version,
    Api,
    Apis,
    Group(String),
    GroupVersion(String, String),
    Resource(Target),
    Unknown,
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Route::Version,
        ["api"] => return Route::Api,
        ["apis"] => return Route::Apis,
        ["apis", g] => return Route::Group((*g).to_owned()),
        ["api", v] => return Route::GroupVersion(String::new(), (*v).to_owned()),
        ["apis", g, v] => return Route::GroupVersion((*g).to_owned(), (*v).to_owned()),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::Unknown,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        rest => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some((*name).to_owned()), None),
        [plural, name, sub] => (*plural, Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return Route::Unknown,
    };
    let Some(res) = find(group, Some(version), plural) else {
        return Route::Unknown;
    };
    let def = &RESOURCES[res];
    let sub_ok = match sub.as_deref() {
        None => true,
        Some("status") => def.status,
        Some(_) => false,
    };
    // A namespaced object is only addressed with its namespace; a cluster-scoped one never is.
    let scope_ok = if def.namespaced { ns.is_some() || name.is_none() } else { ns.is_none() };
    if !sub_ok || !scope_ok {
        return Route::Unknown;
    }
    Route::Resource(Target { res, version: version.to_owned(), ns, name, sub })
}

// ---------------------------------------------------------------------------------------------
// The server's behaviour

impl Store {
    fn take_fault(&mut self, method: &Method, plural: Option<&str>, which: impl Fn(&Effect) -> bool) -> Option<Effect> {
        let i = self.faults.iter().position(|f| {
            f.left > 0
                && which(&f.effect)
                && f.method == method.as_str()
                && f.resource.as_deref().is_none_or(|r| Some(r) == plural)
        })?;
        self.faults[i].left -= 1;
        Some(self.faults[i].effect)
    }

    fn answer(&mut self, call: &Call, route: &Route, addr: SocketAddr) -> Reply {
        if call.method != Method::GET && !matches!(route, Route::Resource(_)) {
            return method_not_allowed();
        }
        match route {
            Route::Version => Reply::json(
                200,
                json!({
                    "major": "1", "minor": "34", "gitVersion": "v1.34.0", "gitCommit": "backstop-emulator",
                    "gitTreeState": "clean", "buildDate": "2025-08-27T00:00:00Z", "goVersion": "go1.24.6",
                    "compiler": "gc", "platform": "linux/amd64",
                }),
            ),
            Route::Api if call.accept.contains("as=APIGroupDiscoveryList") => aggregated(true),
            Route::Api => Reply::json(
                200,
                json!({
                    "kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}],
                }),
            ),
            Route::Apis if call.accept.contains("as=APIGroupDiscoveryList") => aggregated(false),
            Route::Apis => {
                let groups: Vec<Value> = groups().iter().filter(|g| !g.is_empty()).map(|g| api_group(g)).collect();
                Reply::json(200, json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
            }
            Route::Group(g) if !g.is_empty() && groups().contains(&g.as_str()) => {
                let mut body = api_group(g);
                body["kind"] = "APIGroup".into();
                body["apiVersion"] = "v1".into();
                Reply::json(200, body)
            }
            Route::GroupVersion(g, v) => {
                let resources: Vec<Value> = RESOURCES
                    .iter()
                    .filter(|r| r.group == g && r.versions.contains(&v.as_str()))
                    .flat_map(api_resources)
                    .collect();
                if resources.is_empty() {
                    return path_not_found();
                }
                let gv = if g.is_empty() { v.clone() } else { format!("{g}/{v}") };
                Reply::json(
                    200,
                    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
                )
            }
            Route::Resource(t) => self.resource_call(call, t),
            _ => path_not_found(),
        }
    }

    fn resource_call(&mut self, call: &Call, t: &Target) -> Reply {
        let res = &RESOURCES[t.res];
        let verb = match (&call.method, &t.name) {
            (&Method::GET, None) if call.q("watch").is_some_and(|w| w == "true" || w == "1") => "watch",
            (&Method::GET, None) => "list",
            (&Method::GET, Some(_)) => "get",
            (&Method::POST, None) => "create",
            (&Method::PUT, Some(_)) => "update",
            (&Method::PATCH, Some(_)) => "patch",
            (&Method::DELETE, _) => "delete",
            _ => return method_not_allowed(),
        };
        let resource = match &t.sub {
            Some(sub) => format!("{}/{sub}", res.plural),
            None => res.plural.to_owned(),
        };
        let denied = self.denies.iter().any(|d| {
            (d.verb == verb || d.verb == "*")
                && d.resource == resource
                && d.namespace.as_ref().is_none_or(|ns| t.ns.as_ref() == Some(ns))
        });
        if denied && !call.internal {
            return forbidden(res, t, verb);
        }
        let result = match verb {
            "get" => self.read(t),
            "list" => Ok(self.list(call, t)),
            "create" => self.create(call, t),
            "update" | "patch" => self.write(call, t),
            _ => Err(method_not_allowed()),
        };
        result.unwrap_or_else(|reply| reply)
    }

    fn read(&self, t: &Target) -> Res<Reply> {
        let res = &RESOURCES[t.res];
        let name = t.name.as_deref().unwrap_or("");
        let obj = self.lookup(t).ok_or_else(|| not_found(res, name))?;
        Ok(Reply::json(200, as_version(obj.clone(), res, &t.version)))
    }

    fn lookup(&self, t: &Target) -> Option<&Value> {
        let key = key(t.res, t.ns.as_deref().unwrap_or(""), t.name.as_deref()?);
        self.objects.get(&key)
    }

    fn list(&self, call: &Call, t: &Target) -> Reply {
        let res = &RESOURCES[t.res];
        let selector = call.q("labelSelector").unwrap_or("");
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|((r, ns, _), _)| *r == t.res && t.ns.as_ref().is_none_or(|want| want == ns))
            .filter(|(_, obj)| labels_match(&obj["metadata"]["labels"], selector))
            .map(|(_, obj)| {
                let mut item = as_version(obj.clone(), res, &t.version);
                // Lists of built-in types leave out each item's apiVersion and kind.
                if res.crd.is_none()
                    && let Some(item) = item.as_object_mut()
                {
                    item.remove("apiVersion");
                    item.remove("kind");
                }
                item
            })
            .collect();
        Reply::json(
            200,
            json!({
                "apiVersion": api_version(res, &t.version),
                "kind": format!("{}List", res.kind),
                "metadata": {"resourceVersion": self.rv.to_string()},
                "items": items,
            }),
        )
    }

    /// POST to a collection.
    fn create(&mut self, call: &Call, t: &Target) -> Res<Reply> {
        let res = &RESOURCES[t.res];
        if !call.content_type.starts_with("application/json") && !call.content_type.is_empty() {
            return Err(unsupported_media_type("application/json, application/yaml"));
        }
        let obj: Value = serde_json::from_slice(&call.body)
            .map_err(|e| bad_request(format!("the object provided is unrecognized: {e}")))?;
        check_type_meta(&obj, res, &t.version)?;
        let ns = match (&t.ns, obj["metadata"]["namespace"].as_str()) {
            (Some(ns), Some(body)) if ns != body => {
                return Err(bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
            (Some(ns), _) => ns.clone(),
            (None, _) if res.namespaced => return Err(method_not_allowed()),
            (None, _) => String::new(),
        };
        self.insert(call, t, obj, &ns, &call.manager(), "Update")
    }

    /// Stores a new object (POST, or a server-side apply of a missing object).
    fn insert(
        &mut self,
        call: &Call,
        t: &Target,
        mut obj: Value,
        ns: &str,
        manager: &str,
        operation: &str,
    ) -> Res<Reply> {
        let res = &RESOURCES[t.res];
        let meta = ensure_object(&mut obj, "metadata");
        let name = match (meta.get("name").and_then(Value::as_str), meta.get("generateName").and_then(Value::as_str)) {
            (Some(name), _) if !name.is_empty() => name.to_owned(),
            (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", &format!("{:x}", mix(nanos()))[..5]),
            _ => {
                let errors = [FieldError::new(
                    "metadata.name",
                    "FieldValueRequired",
                    "Required value: name or generateName is required",
                )];
                return Err(invalid(res, "", &errors));
            }
        };
        for server_owned in
            ["uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "deletionTimestamp"]
        {
            meta.remove(server_owned);
        }
        meta.insert("name".into(), name.clone().into());
        if res.namespaced {
            meta.insert("namespace".into(), ns.into());
        }
        let key = key(t.res, ns, &name);
        if self.objects.contains_key(&key) {
            return Err(already_exists(res, &name));
        }
        obj["apiVersion"] = api_version(res, &t.version).into();
        obj["kind"] = res.kind.into();
        if res.status {
            // Status is written through `/status` only, never on create.
            set_or_remove(&mut obj, "status", None);
        }
        let warnings = admit(res, &t.version, &name, &mut obj, call.q("fieldValidation"))?;
        let meta = ensure_object(&mut obj, "metadata");
        meta.insert("uid".into(), uid(self.rv).into());
        meta.insert("creationTimestamp".into(), now().into());
        if res.status {
            meta.insert("generation".into(), 1.into());
        }
        let paths = field_paths(&obj, None);
        set_managed(&mut obj, &[Manager::new(manager, operation, &api_version(res, &t.version), None, paths)]);
        if !call.dry_run() {
            self.rv += 1;
            obj["metadata"]["resourceVersion"] = self.rv.to_string().into();
            self.objects.insert(key, to_storage(obj.clone(), res));
        }
        let mut reply = Reply::json(201, obj);
        add_warnings(&mut reply, warnings);
        Ok(reply)
    }

    /// PUT or PATCH of an existing object (or of its `/status`).
    fn write(&mut self, call: &Call, t: &Target) -> Res<Reply> {
        let res = &RESOURCES[t.res];
        let name = t.name.clone().unwrap_or_default();
        let ns = t.ns.clone().unwrap_or_default();
        let av = api_version(res, &t.version);
        let body = write_body(call, t, &name, &ns)?;
        let key = key(t.res, &ns, &name);
        if !self.objects.contains_key(&key) {
            return match body {
                WriteBody::Apply(cfg) if t.sub.is_none() => {
                    let manager = call.q("fieldManager").unwrap_or("").to_owned();
                    self.insert(call, t, cfg, &ns, &manager, "Apply")
                }
                _ => Err(not_found(res, &name)),
            };
        }
        // Other writers go first.
        if self.conflicts > 0 && !call.internal {
            self.conflicts -= 1;
            self.write_behind(
                &key,
                |obj| {
                    let annotations = annotations_mut(obj);
                    let n = annotations
                        .get("emulator.backstop.io/concurrent-writes")
                        .and_then(Value::as_str)
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0);
                    annotations.insert("emulator.backstop.io/concurrent-writes".into(), (n + 1).to_string().into());
                },
                false,
            );
        }
        if let Some(hook) = self.hook.clone().filter(|_| !call.internal) {
            self.write_behind(&key, |obj| hook(obj), false);
        }

        let current = as_version(self.objects[&key].clone(), res, &t.version);
        let current_rv = current["metadata"]["resourceVersion"].as_str().unwrap_or("").to_owned();
        let sub = t.sub.as_deref();
        let mut apply_owners = None;
        let mut new = match body {
            WriteBody::Put(obj) => obj,
            WriteBody::Merge(patch) => {
                if !patch.is_object() {
                    return Err(bad_request("error decoding patch: not a JSON object".into()));
                }
                let mut obj = current.clone();
                merge_patch(&mut obj, &patch);
                obj
            }
            WriteBody::Json(ops) => {
                let mut obj = current.clone();
                json_patch(&mut obj, &ops)?;
                obj
            }
            WriteBody::Apply(cfg) => {
                let manager = call.q("fieldManager").unwrap_or("");
                let owners = apply_ownership(&current, &cfg, manager, &av, sub, call.q("force") == Some("true"))?;
                let mut obj = current.clone();
                merge_patch(&mut obj, &cfg);
                apply_owners = Some(owners);
                obj
            }
        };
        if !new.is_object() {
            return Err(bad_request("the object provided is unrecognized".into()));
        }
        // Preconditions.
        match new["metadata"]["resourceVersion"].as_str().filter(|rv| !rv.is_empty()) {
            Some(rv) if rv != current_rv => return Err(conflict(res, &name)),
            Some(_) => {}
            None if call.method == Method::PUT && res.crd.is_some() => {
                let body = "Invalid value: 0x0: must be specified for an update";
                let errors = [FieldError::new("metadata.resourceVersion", "FieldValueInvalid", body)];
                return Err(invalid(res, &name, &errors));
            }
            None => {}
        }
        // What the client may not change here.
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "managedFields",
            "deletionTimestamp",
        ] {
            match current["metadata"].get(field) {
                Some(v) => {
                    ensure_object(&mut new, "metadata").insert(field.into(), v.clone());
                }
                None => {
                    ensure_object(&mut new, "metadata").remove(field);
                }
            }
        }
        new["apiVersion"] = av.clone().into();
        new["kind"] = res.kind.into();
        if res.status {
            match sub {
                Some(_) => {
                    let status = new.get("status").cloned();
                    new = current.clone();
                    set_or_remove(&mut new, "status", status);
                }
                None => set_or_remove(&mut new, "status", current.get("status").cloned()),
            }
        }
        let warnings = admit(res, &t.version, &name, &mut new, call.q("fieldValidation"))?;

        // Ownership, generation, version.
        let mut managers = managers_of(&current);
        match apply_owners {
            Some(owners) => managers = owners,
            None => update_ownership(&mut managers, &current, &new, &call.manager(), &av, sub),
        }
        set_managed(&mut new, &managers);
        if without_times(&new) == without_times(&current) {
            let mut reply = Reply::json(200, current);
            add_warnings(&mut reply, warnings);
            return Ok(reply);
        }
        if res.status && outside_meta_status(&new) != outside_meta_status(&current) {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            new["metadata"]["generation"] = generation.into();
        }
        if !call.dry_run() {
            self.rv += 1;
            new["metadata"]["resourceVersion"] = self.rv.to_string().into();
            self.objects.insert(key, to_storage(new.clone(), res));
        }
        let mut reply = Reply::json(200, new);
        add_warnings(&mut reply, warnings);
        Ok(reply)
    }

    /// A write by another client (manager `kubectl-edit`): stored with a new resourceVersion if
    /// `f` changed something, or always when `always`.
    fn write_behind(&mut self, key: &(usize, String, String), f: impl FnOnce(&mut Value), always: bool) {
        let res = &RESOURCES[key.0];
        let current = self.objects[key].clone();
        let mut new = current.clone();
        f(&mut new);
        let av = new["apiVersion"].as_str().unwrap_or("").to_owned();
        let mut new = to_storage(new, res);
        if new == current && !always {
            return;
        }
        let mut managers = managers_of(&current);
        update_ownership(&mut managers, &current, &new, OTHER_WRITER, &av, None);
        set_managed(&mut new, &managers);
        if res.status && outside_meta_status(&new) != outside_meta_status(&current) {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            new["metadata"]["generation"] = generation.into();
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = self.rv.to_string().into();
        self.objects.insert(key.clone(), new);
    }
}

fn check_type_meta(obj: &Value, res: &ResourceDef, version: &str) -> Res<()> {
    if !obj.is_object() {
        return Err(bad_request("the object provided is unrecognized".into()));
    }
    let want = api_version(res, version);
    if let Some(found) = obj["apiVersion"].as_str().filter(|v| *v != want) {
        return Err(bad_request(format!(
            "the API version in the data ({found}) does not match the expected API version ({want})"
        )));
    }
    if let Some(found) = obj["kind"].as_str().filter(|k| *k != res.kind) {
        return Err(bad_request(format!(
            "the kind in the data ({found}) does not match the expected kind ({})",
            res.kind
        )));
    }
    Ok(())
}

fn as_version(mut obj: Value, res: &ResourceDef, version: &str) -> Value {
    obj["apiVersion"] = api_version(res, version).into();
    obj
}

fn to_storage(obj: Value, res: &ResourceDef) -> Value {
    as_version(obj, res, res.versions[0])
}

fn set_or_remove(obj: &mut Value, field: &str, value: Option<Value>) {
    if let Some(map) = obj.as_object_mut() {
        match value {
            Some(v) => map.insert(field.into(), v),
            None => map.remove(field),
        };
    }
}

fn outside_meta_status(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(map) = obj.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    obj
}

fn without_times(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(entries) = obj["metadata"]["managedFields"].as_array_mut() {
        for e in entries {
            if let Some(e) = e.as_object_mut() {
                e.remove("time");
            }
        }
    }
    obj
}

fn add_warnings(reply: &mut Reply, warnings: Vec<String>) {
    for w in warnings {
        reply.headers.push(("warning", format!("299 - {}", serde_json::to_string(&w).expect("JSON"))));
    }
}

fn ensure_object<'a>(obj: &'a mut Value, field: &str) -> &'a mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let map = obj.as_object_mut().expect("object");
    let slot = map.entry(field.to_owned()).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    slot.as_object_mut().expect("object")
}

fn annotations_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let slot = ensure_object(obj, "metadata").entry("annotations").or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    slot.as_object_mut().expect("object")
}

fn labels_match(labels: &Value, selector: &str) -> bool {
    selector.split(',').map(str::trim).filter(|r| !r.is_empty()).all(|req| {
        let label = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
        if let Some((k, v)) = req.split_once("!=") {
            label(k) != Some(v.trim())
        } else if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
            label(k) == Some(v.trim())
        } else if let Some(k) = req.strip_prefix('!') {
            label(k).is_none()
        } else {
            label(req).is_some()
        }
    })
}

/// What a PUT or PATCH asks for.
enum WriteBody {
    Put(Value),
    Merge(Value),
    Json(Value),
    Apply(Value),
}

/// Parses and checks a PUT or PATCH body (patch options first, as the server does).
fn write_body(call: &Call, t: &Target, name: &str, ns: &str) -> Res<WriteBody> {
    let res = &RESOURCES[t.res];
    let av = api_version(res, &t.version);
    let parse_json = || -> Res<Value> {
        serde_json::from_slice(&call.body).map_err(|e| bad_request(format!("error decoding patch: {e}")))
    };
    let ct = call.content_type.split(';').next().unwrap_or("").trim();
    Ok(if call.method == Method::PUT {
        if !ct.is_empty() && ct != "application/json" {
            return Err(unsupported_media_type("application/json, application/yaml"));
        }
        let obj: Value = serde_json::from_slice(&call.body)
            .map_err(|e| bad_request(format!("the object provided is unrecognized: {e}")))?;
        check_type_meta(&obj, res, &t.version)?;
        if obj["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            let found = obj["metadata"]["name"].as_str().unwrap_or("");
            return Err(bad_request(format!(
                "the name of the object ({found}) does not match the name on the URL ({name})"
            )));
        }
        if res.namespaced && obj["metadata"]["namespace"].as_str().is_some_and(|n| n != ns) {
            return Err(bad_request(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        WriteBody::Put(obj)
    } else {
        let accepted = if res.crd.is_some() {
            "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
        } else {
            "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
        };
        let apply = ct == "application/apply-patch+yaml";
        if apply && call.q("fieldManager").is_none() {
            let body = "Required value: is required for apply patch";
            let errors = [FieldError::new("fieldManager", "FieldValueRequired", body)];
            return Err(invalid_status("meta.k8s.io", "PatchOptions", "", &errors));
        }
        if !apply && call.query.contains_key("force") {
            let errors = [FieldError::new(
                "force",
                "FieldValueForbidden",
                "Forbidden: may not be specified for non-apply patch",
            )];
            return Err(invalid_status("meta.k8s.io", "PatchOptions", "", &errors));
        }
        match ct {
            "application/merge-patch+json" => WriteBody::Merge(parse_json()?),
            // A strategic merge patch is taken as a merge patch: the same for maps such as a
            // Service's selector; the real one merges lists by key (ports by `port`) and
            // knows `$patch` directives. Custom resources do not accept it at all.
            "application/strategic-merge-patch+json" if res.crd.is_none() => WriteBody::Merge(parse_json()?),
            "application/json-patch+json" => WriteBody::Json(parse_json()?),
            "application/apply-patch+yaml" => {
                let text = String::from_utf8_lossy(&call.body);
                let cfg: Value =
                    serde_yaml_ng::from_str(&text).map_err(|e| bad_request(format!("error decoding YAML: {e}")))?;
                if cfg["apiVersion"].as_str() != Some(av.as_str()) || cfg["kind"].as_str() != Some(res.kind) {
                    return Err(bad_request(format!(
                        "the API version in the data ({}) does not match the expected API version ({av})",
                        cfg["apiVersion"].as_str().unwrap_or("")
                    )));
                }
                if cfg["metadata"]["name"].as_str().is_some_and(|n| n != name) {
                    return Err(bad_request("the name of the object does not match the name on the URL".into()));
                }
                WriteBody::Apply(cfg)
            }
            _ => return Err(unsupported_media_type(accepted)),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Discovery

fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&str> = Vec::new();
    for r in RESOURCES {
        if !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    groups
}

fn group_versions(group: &str) -> Vec<&'static str> {
    let mut versions: Vec<&str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        for v in r.versions {
            if !versions.contains(v) {
                versions.push(v);
            }
        }
    }
    versions
}

fn api_group(group: &str) -> Value {
    let versions: Vec<Value> =
        group_versions(group).iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
}

fn api_resources(r: &ResourceDef) -> Vec<Value> {
    let mut out = vec![json!({
        "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
        "verbs": VERBS, "shortNames": r.short_names, "categories": r.categories,
    })];
    if r.status {
        out.push(json!({
            "name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
            "kind": r.kind, "verbs": ["get", "patch", "update"],
        }));
    }
    out
}

/// Aggregated discovery (apidiscovery.k8s.io/v2) of the core group (`/api`) or the others.
fn aggregated(core: bool) -> Reply {
    let items: Vec<Value> = groups()
        .into_iter()
        .filter(|g| g.is_empty() == core)
        .map(|g| {
            let versions: Vec<Value> = group_versions(g)
                .into_iter()
                .map(|v| {
                    let resources: Vec<Value> = RESOURCES
                        .iter()
                        .filter(|r| r.group == g && r.versions.contains(&v))
                        .map(|r| {
                            let kind = json!({"group": g, "version": v, "kind": r.kind});
                            let subresources: Vec<Value> = if r.status {
                                vec![json!({"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]})]
                            } else {
                                vec![]
                            };
                            json!({
                                "resource": r.plural, "responseKind": kind,
                                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": r.singular, "verbs": VERBS, "shortNames": r.short_names,
                                "categories": r.categories, "subresources": subresources,
                            })
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let metadata = if g.is_empty() {
                json!({"creationTimestamp": null})
            } else {
                json!({"name": g, "creationTimestamp": null})
            };
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    let mut reply = Reply::json(
        200,
        json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}),
    );
    reply.content_type = AGGREGATED;
    reply
}

// ---------------------------------------------------------------------------------------------
// Patches

/// RFC 7386.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().expect("object");
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// RFC 6902. A malformed patch is 400; one that cannot be applied (a failed `test`, a missing
/// path) is 422 with the generic message the real server gives.
fn json_patch(doc: &mut Value, ops: &Value) -> Res<()> {
    let failed = || {
        status(422, "Invalid", "the server rejected our request due to an error in our request".into(), Some(json!({})))
    };
    let ops = ops
        .as_array()
        .ok_or_else(|| bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch".into()))?;
    for op in ops {
        let kind = op["op"].as_str().ok_or_else(|| bad_request("missing operation".into()))?;
        let path = pointer(op["path"].as_str().ok_or_else(|| bad_request("missing path".into()))?)?;
        let from = || pointer(op["from"].as_str().unwrap_or(""));
        let value = || op.get("value").cloned().ok_or_else(|| bad_request(format!("missing value for {kind}")));
        let ok = match kind {
            "add" => add_at(doc, &path, value()?),
            "remove" => remove_at(doc, &path).is_some(),
            "replace" => {
                let v = value()?;
                match get_at(doc, &path) {
                    Some(slot) => {
                        *slot = v;
                        true
                    }
                    None => false,
                }
            }
            "move" => {
                let from = from()?;
                match remove_at(doc, &from) {
                    Some(v) => add_at(doc, &path, v),
                    None => false,
                }
            }
            "copy" => {
                let from = from()?;
                match get_at(doc, &from).map(|v| v.clone()) {
                    Some(v) => add_at(doc, &path, v),
                    None => false,
                }
            }
            "test" => {
                let v = value()?;
                get_at(doc, &path).is_some_and(|found| *found == v)
            }
            other => return Err(bad_request(format!("Unexpected kind: {other}"))),
        };
        if !ok {
            return Err(failed());
        }
    }
    Ok(())
}

fn pointer(p: &str) -> Res<Vec<String>> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let rest = p.strip_prefix('/').ok_or_else(|| bad_request(format!("JSON pointer must start with /: {p}")))?;
    Ok(rest.split('/').map(|s| s.replace("~1", "/").replace("~0", "~")).collect())
}

fn get_at<'a>(doc: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(doc, |v, seg| match v {
        Value::Object(m) => m.get_mut(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
        _ => None,
    })
}

fn add_at(doc: &mut Value, path: &[String], value: Value) -> bool {
    let Some((last, parent)) = path.split_last() else {
        *doc = value;
        return true;
    };
    match get_at(doc, parent) {
        Some(Value::Object(m)) => {
            m.insert(last.clone(), value);
            true
        }
        Some(Value::Array(a)) if last == "-" => {
            a.push(value);
            true
        }
        Some(Value::Array(a)) => match last.parse::<usize>() {
            Ok(i) if i <= a.len() => {
                a.insert(i, value);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

fn remove_at(doc: &mut Value, path: &[String]) -> Option<Value> {
    let (last, parent) = path.split_last()?;
    match get_at(doc, parent)? {
        Value::Object(m) => m.remove(last),
        Value::Array(a) => {
            let i = last.parse::<usize>().ok().filter(|i| *i < a.len())?;
            Some(a.remove(i))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// managedFields: field sets as leaf paths (maps descended, lists and scalars owned whole)

type FieldPath = Vec<String>;

struct Manager {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    fields: BTreeSet<FieldPath>,
}

impl Manager {
    fn new(
        manager: &str,
        operation: &str,
        api_version: &str,
        subresource: Option<&str>,
        fields: BTreeSet<FieldPath>,
    ) -> Manager {
        Manager {
            manager: manager.to_owned(),
            operation: operation.to_owned(),
            api_version: api_version.to_owned(),
            time: now(),
            subresource: subresource.map(str::to_owned),
            fields,
        }
    }

    fn is(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.as_deref() == subresource
    }
}

/// The owned leaf paths of `obj`: labels, annotations and everything outside metadata, without
/// `status` (object writes) or only `status` (`/status` writes).
fn field_paths(obj: &Value, sub: Option<&str>) -> BTreeSet<FieldPath> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    path.push(k.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    let Some(map) = obj.as_object() else { return out };
    for (k, v) in map {
        let wanted = match sub {
            Some(_) => k == "status",
            None => !matches!(k.as_str(), "apiVersion" | "kind" | "status" | "metadata"),
        };
        if wanted {
            walk(v, &mut vec![k.clone()], &mut out);
        }
    }
    if sub.is_none() {
        for part in ["labels", "annotations"] {
            if let Some(v) = obj["metadata"].get(part) {
                walk(v, &mut vec!["metadata".into(), part.into()], &mut out);
            }
        }
    }
    out
}

fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |v, seg| v.get(seg))
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn managers_of(obj: &Value) -> Vec<Manager> {
    fn paths(node: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        let Some(m) = node.as_object() else { return };
        let children: Vec<(&String, &Value)> = m.iter().filter(|(k, _)| k.starts_with("f:")).collect();
        // A leaf, or a list whose items are owned (`k:`, `v:`, `i:`): the path as a whole.
        if children.is_empty() || m.keys().any(|k| k.starts_with("k:") || k.starts_with("v:") || k.starts_with("i:")) {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (k, child) in children {
            path.push(k[2..].to_owned());
            paths(child, path, out);
            path.pop();
        }
    }
    let Some(entries) = obj["metadata"]["managedFields"].as_array() else {
        return Vec::new();
    };
    entries
        .iter()
        .map(|e| {
            let mut fields = BTreeSet::new();
            paths(&e["fieldsV1"], &mut Vec::new(), &mut fields);
            let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
            Manager {
                manager: s("manager"),
                operation: s("operation"),
                api_version: s("apiVersion"),
                time: s("time"),
                subresource: e["subresource"].as_str().map(str::to_owned),
                fields,
            }
        })
        .collect()
}

fn set_managed(obj: &mut Value, managers: &[Manager]) {
    let entries: Vec<Value> = managers
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut tree = json!({});
            for path in &m.fields {
                let mut node = &mut tree;
                for seg in path {
                    node = node.as_object_mut().expect("object").entry(format!("f:{seg}")).or_insert_with(|| json!({}));
                }
            }
            let mut e = json!({
                "manager": m.manager, "operation": m.operation, "apiVersion": m.api_version,
                "time": m.time, "fieldsType": "FieldsV1", "fieldsV1": tree,
            });
            if let Some(sub) = &m.subresource {
                e["subresource"] = sub.clone().into();
            }
            e
        })
        .collect();
    ensure_object(obj, "metadata").insert("managedFields".into(), entries.into());
}

/// An update (PUT, non-apply PATCH) by `manager`: it owns what it changed; fields it removed
/// are no one's.
fn update_ownership(
    managers: &mut Vec<Manager>,
    old: &Value,
    new: &Value,
    manager: &str,
    api_version: &str,
    sub: Option<&str>,
) {
    let old_paths = field_paths(old, sub);
    let new_paths = field_paths(new, sub);
    let changed: BTreeSet<FieldPath> =
        new_paths.iter().filter(|p| value_at(old, p) != value_at(new, p)).cloned().collect();
    let removed: BTreeSet<FieldPath> = old_paths.difference(&new_paths).cloned().collect();
    if changed.is_empty() && removed.is_empty() {
        return;
    }
    for m in managers.iter_mut() {
        m.fields.retain(|p| !removed.contains(p) && !changed.iter().any(|c| overlaps(c, p)));
    }
    match managers.iter_mut().find(|m| m.is(manager, "Update", sub)) {
        Some(m) => {
            m.fields.extend(changed);
            m.time = now();
            m.api_version = api_version.to_owned();
        }
        None => managers.push(Manager::new(manager, "Update", api_version, sub, changed)),
    }
    managers.retain(|m| !m.fields.is_empty());
}

/// A server-side apply of `cfg` by `manager`: 409 when it would change a field another manager
/// owns, unless forced (which takes the field over). Returns the managers afterwards.
fn apply_ownership(
    current: &Value,
    cfg: &Value,
    manager: &str,
    api_version: &str,
    sub: Option<&str>,
    force: bool,
) -> Res<Vec<Manager>> {
    let applied = field_paths(cfg, sub);
    let mut managers = managers_of(current);
    let mut conflicts: Vec<(String, String, String)> = Vec::new();
    for m in managers.iter().filter(|m| !m.is(manager, "Apply", sub)) {
        for p in &applied {
            if value_at(current, p) != value_at(cfg, p) && m.fields.iter().any(|q| overlaps(p, q)) {
                conflicts.push((m.manager.clone(), m.api_version.clone(), format!(".{}", p.join("."))));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(apply_conflict(&conflicts));
    }
    for m in managers.iter_mut().filter(|m| !m.is(manager, "Apply", sub)) {
        m.fields.retain(|q| !applied.iter().any(|p| overlaps(p, q) && value_at(current, p) != value_at(cfg, p)));
    }
    match managers.iter_mut().find(|m| m.is(manager, "Apply", sub)) {
        Some(m) => {
            m.fields = applied;
            m.time = now();
            m.api_version = api_version.to_owned();
        }
        None => managers.push(Manager::new(manager, "Apply", api_version, sub, applied)),
    }
    managers.retain(|m| !m.fields.is_empty());
    Ok(managers)
}

fn apply_conflict(conflicts: &[(String, String, String)]) -> Reply {
    let mut by_manager: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (manager, api_version, field) in conflicts {
        by_manager.entry((manager.clone(), api_version.clone())).or_default().push(field.clone());
    }
    let n = conflicts.len();
    let mut message = format!("Apply failed with {n} conflict{}: ", if n == 1 { "" } else { "s" });
    let parts: Vec<String> = by_manager
        .iter()
        .map(|((manager, api_version), fields)| match fields.as_slice() {
            [one] => format!("conflict with \"{manager}\" using {api_version}: {one}"),
            many => format!(
                "conflicts with \"{manager}\" using {api_version}:\n{}",
                many.iter().map(|f| format!("- {f}")).collect::<Vec<_>>().join("\n")
            ),
        })
        .collect();
    message.push_str(&parts.join("\n"));
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(manager, api_version, field)| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{manager}\" using {api_version}"), "field": field})
        })
        .collect();
    status(409, "Conflict", message, Some(json!({"causes": causes})))
}

// ---------------------------------------------------------------------------------------------
// Admission: pruning and validation

struct Schema {
    /// The `openAPIV3Schema` as written (for pruning).
    raw: Value,
    validator: jsonschema::Validator,
}

/// Prunes and validates `obj` as the server does before storing it; returns the warnings.
fn admit(
    res: &ResourceDef,
    version: &str,
    name: &str,
    obj: &mut Value,
    field_validation: Option<&str>,
) -> Res<Vec<String>> {
    let mut errors = Vec::new();
    let mut unknown = Vec::new();
    if let Some(crd) = res.crd {
        let schema = schema(crd, version);
        let map = obj.as_object_mut().expect("object");
        let kept: Vec<(String, Value)> = ["apiVersion", "kind", "metadata"]
            .iter()
            .filter_map(|k| map.remove(*k).map(|v| (k.to_string(), v)))
            .collect();
        prune(&schema.raw, obj, "", &mut unknown);
        let map = obj.as_object_mut().expect("object");
        for (k, v) in kept {
            map.insert(k, v);
        }
        if field_validation == Some("Strict") && !unknown.is_empty() {
            let fields: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
            return Err(bad_request(format!("strict decoding error: {}", fields.join(", "))));
        }
        errors.extend(schema.validator.iter_errors(obj).map(|e| schema_error(&e)));
    }
    if let Some(check) = res.check {
        errors.extend(check(obj));
    }
    if !errors.is_empty() {
        return Err(invalid(res, name, &errors));
    }
    if field_validation == Some("Ignore") {
        unknown.clear();
    }
    Ok(unknown.into_iter().map(|f| format!("unknown field \"{f}\"")).collect())
}

/// Drops what the structural schema does not declare (unless it preserves unknown fields) and
/// nulls of fields that are not `nullable`, recording the dropped fields' paths.
fn prune(schema: &Value, v: &mut Value, path: &str, unknown: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
                || schema.get("additionalProperties") == Some(&Value::Bool(true));
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let child_path = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match props.and_then(|p| p.get(&k)).or(additional) {
                    Some(s) => {
                        if map[&k].is_null() && s.get("nullable") != Some(&Value::Bool(true)) {
                            map.remove(&k);
                        } else {
                            prune(s, map.get_mut(&k).expect("key"), &child_path, unknown);
                        }
                    }
                    None if preserve => {}
                    None => {
                        map.remove(&k);
                        unknown.push(child_path);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(s, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

fn schema_error(e: &jsonschema::ValidationError<'_>) -> FieldError {
    use jsonschema::error::{TypeKind, ValidationErrorKind as K};
    let mut field = String::new();
    for seg in e.instance_path().iter() {
        match seg {
            jsonschema::paths::LocationSegment::Property(p) => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(&p);
            }
            jsonschema::paths::LocationSegment::Index(i) => field.push_str(&format!("[{i}]")),
        }
    }
    let instance = e.instance();
    match e.kind() {
        K::Required { property } => {
            let p = property.as_str().unwrap_or("");
            FieldError::required(if field.is_empty() { p.to_owned() } else { format!("{field}.{p}") })
        }
        K::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(ts) => ts.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(","),
            };
            let actual = go_type(instance);
            let field = if field.is_empty() { "<root>".to_owned() } else { field };
            let body = format!("Invalid value: \"{actual}\": {field} in body must be of type {expected}: \"{actual}\"");
            FieldError::new(field, "FieldValueTypeInvalid", body)
        }
        K::Enum { options } => {
            let supported: Vec<String> = options.as_array().into_iter().flatten().map(go_value).collect();
            let body = format!("Unsupported value: {}: supported values: {}", go_value(instance), supported.join(", "));
            FieldError::new(field, "FieldValueNotSupported", body)
        }
        K::Maximum { limit } => {
            let detail = format!("{field} in body should be less than or equal to {limit}");
            FieldError::invalid(field, instance, &detail)
        }
        K::Minimum { limit } => {
            let detail = format!("{field} in body should be greater than or equal to {limit}");
            FieldError::invalid(field, instance, &detail)
        }
        _ => {
            let field = if field.is_empty() { "<root>".to_owned() } else { field };
            FieldError::invalid(field, instance, &e.to_string())
        }
    }
}

fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as field errors print it: strings quoted, numbers bare, composites by type name.
fn go_value(v: &Value) -> String {
    match v {
        Value::Array(_) | Value::Object(_) => format!("\"{}\"", go_type(v)),
        v => v.to_string(),
    }
}

/// The compiled schema of `crd` at `version`, from the repository's `crds/*.yaml`.
fn schema(crd: &str, version: &str) -> Arc<Schema> {
    type Cache = Mutex<HashMap<(String, String), Arc<Schema>>>;
    static SCHEMAS: OnceLock<Cache> = OnceLock::new();
    let cache = SCHEMAS.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry((crd.to_owned(), version.to_owned()))
        .or_insert_with(|| {
            let raw = crds()
                .get(crd)
                .and_then(|c| c["spec"]["versions"].as_array())
                .and_then(|vs| vs.iter().find(|v| v["name"] == version))
                .and_then(|v| v.pointer("/schema/openAPIV3Schema"))
                .unwrap_or_else(|| panic!("no openAPIV3Schema for {crd} {version} in crds/"))
                .clone();
            let mut for_validation = raw.clone();
            allow_nullable(&mut for_validation);
            let validator = jsonschema::validator_for(&for_validation).expect("CRD schema compiles");
            Arc::new(Schema { raw, validator })
        })
        .clone()
}

/// OpenAPI's `nullable: true` in JSON Schema terms.
fn allow_nullable(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.get("nullable") == Some(&Value::Bool(true))
                && let Some(Value::String(t)) = map.get("type").cloned()
            {
                map.insert("type".into(), json!([t, "null"]));
            }
            map.values_mut().for_each(allow_nullable);
        }
        Value::Array(items) => items.iter_mut().for_each(allow_nullable),
        _ => {}
    }
}

/// Every CustomResourceDefinition in the repository's `crds/*.yaml`, by name.
fn crds() -> &'static HashMap<String, Value> {
    static CRDS: OnceLock<HashMap<String, Value>> = OnceLock::new();
    CRDS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        let mut crds = HashMap::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable CRD file");
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let doc = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                if doc["kind"] == "CustomResourceDefinition"
                    && let Some(name) = doc["metadata"]["name"].as_str()
                {
                    crds.insert(name.to_owned(), doc);
                }
            }
        }
        crds
    })
}

// ---------------------------------------------------------------------------------------------
// Built-in validation

/// events.k8s.io/v1 (ValidateEventCreate for v1).
fn check_events_v1(ev: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for field in ["eventTime", "reportingController", "reportingInstance", "action", "reason"] {
        if ev[field].as_str().is_none_or(str::is_empty) {
            errors.push(FieldError::required(field));
        }
    }
    errors.extend(check_event_type_and_note(ev, "note"));
    errors
}

/// coordination.k8s.io/v1 Leases (ValidateLeaseSpec): a duration greater than 0, transitions
/// not negative.
fn check_lease(lease: &Value) -> Vec<FieldError> {
    let spec = &lease["spec"];
    let mut errors = Vec::new();
    if let Some(d) = spec["leaseDurationSeconds"].as_i64()
        && d <= 0
    {
        errors.push(FieldError::invalid("spec.leaseDurationSeconds", &json!(d), "must be greater than 0"));
    }
    if let Some(t) = spec["leaseTransitions"].as_i64()
        && t < 0
    {
        errors.push(FieldError::invalid("spec.leaseTransitions", &json!(t), "must be greater than or equal to 0"));
    }
    errors
}

/// Core v1 Events: the namespace of the involved object, type and message.
fn check_core_event(ev: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let ns = ev["metadata"]["namespace"].as_str().unwrap_or("");
    if let Some(involved) = ev["involvedObject"]["namespace"].as_str()
        && involved != ns
    {
        errors.push(FieldError::invalid(
            "involvedObject.namespace",
            &json!(involved),
            "does not match event.namespace",
        ));
    }
    errors.extend(check_event_type_and_note(ev, "message"));
    errors
}

fn check_event_type_and_note(ev: &Value, note: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(t) = ev["type"].as_str()
        && t != "Normal"
        && t != "Warning"
    {
        errors.push(FieldError::new(
            "type",
            "FieldValueNotSupported",
            format!("Unsupported value: \"{t}\": supported values: \"Normal\", \"Warning\""),
        ));
    }
    if ev[note].as_str().is_some_and(|n| n.len() > 1024) {
        errors.push(FieldError::new(note, "FieldValueTooLong", "Too long: may not be more than 1024 bytes"));
    }
    errors
}

// ---------------------------------------------------------------------------------------------
// Small things

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// splitmix64.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A version-4-shaped UUID.
fn uid(seed: u64) -> String {
    let a = mix(nanos() ^ seed);
    let b = mix(a ^ seed.rotate_left(17));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48 & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// A canary Rollout of model-service in sms-app (10%, then a pause), without status.
pub fn canary_rollout() -> Value {
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "model-service", "namespace": "sms-app"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "model-service"}},
            "strategy": {"canary": {
                "trafficRouting": {"istio": {"virtualService": {"name": "model-service", "routes": ["primary"]}}},
                "steps": [{"setWeight": 10}, {"pause": {}}],
            }},
            "template": {"metadata": {"labels": {"app": "model-service"}},
                         "spec": {"containers": [{"name": "app", "image": "model-service:2"}]}},
        },
    })
}
