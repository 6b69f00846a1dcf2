//! Builder for VirtualService objects used in tests.

use serde_json::{Value, json};

/// Builds a `networking.istio.io/v1` VirtualService with the HTTP routes added to it.
#[derive(Debug, Clone)]
pub struct VirtualServiceBuilder {
    namespace: String,
    name: String,
    http: Vec<Value>,
}

/// The usual test object: sms-app/model-service, without routes yet.
pub fn test() -> VirtualServiceBuilder {
    VirtualServiceBuilder::new("sms-app", "model-service")
}

impl VirtualServiceBuilder {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self { namespace: namespace.to_owned(), name: name.to_owned(), http: Vec::new() }
    }

    /// Adds an unnamed HTTP route splitting host model-service between subsets v1 and v2.
    pub fn weights(self, v1: u32, v2: u32) -> Self {
        self.route(None, &[("model-service", Some("v1"), Some(v1)), ("model-service", Some("v2"), Some(v2))])
    }

    /// Adds an HTTP route of destinations `(host, subset, weight)`; `None` leaves the field out.
    pub fn route(mut self, name: Option<&str>, dests: &[(&str, Option<&str>, Option<u32>)]) -> Self {
        let route: Vec<Value> = dests
            .iter()
            .map(|&(host, subset, weight)| {
                let mut destination = json!({ "host": host });
                if let Some(subset) = subset {
                    destination["subset"] = subset.into();
                }
                let mut entry = json!({ "destination": destination });
                if let Some(weight) = weight {
                    entry["weight"] = weight.into();
                }
                entry
            })
            .collect();
        let mut http = json!({ "route": route });
        if let Some(name) = name {
            http["name"] = name.into();
        }
        self.http.push(http);
        self
    }

    pub fn build(self) -> Value {
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": { "namespace": self.namespace, "name": self.name },
            "spec": { "hosts": [self.name], "http": self.http },
        })
    }
}
