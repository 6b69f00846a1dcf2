//! `backstop serve`: wire the configuration into a running service, and stop it cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tracing::info;

use crate::audit::{AuditError, AuditLog};
use crate::config::Config;
use crate::http::{AppState, auth::Auth, router};
use crate::pipeline::{Pipeline, Settings};
use crate::rules::{self, RuleErrors};
use crate::target::manifests::Manifests;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid rules:\n{0}")]
    Rules(#[from] RuleErrors),
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("manifests directory {0} does not exist")]
    NoManifests(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// Build the pipeline of a configuration (also used by tools that need it without a server).
pub fn pipeline(config: &Config) -> Result<Pipeline, ServeError> {
    let rules = rules::load(&config.rules)?;
    if !config.manifests_dir.is_dir() {
        return Err(ServeError::NoManifests(config.manifests_dir.display().to_string()));
    }
    let audit = AuditLog::open(&config.audit_dir(), config.audit.clone())?;
    let target = Arc::new(Manifests::new(&config.manifests_dir));
    let settings = Settings {
        dry_run: config.dry_run,
        action_timeout: config.action_timeout,
        guards: config.guards.clone(),
    };
    Ok(Pipeline::new(rules, audit, target, settings)?)
}

/// Run until `shutdown` completes; in-flight requests finish, then the audit log is flushed.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    let auth = Auth::load(&config.auth).map_err(ServeError::Auth)?;
    let pipeline = Arc::new(pipeline(&config)?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    info!(
        %addr,
        rules = pipeline.rules().rules().len(),
        target = %pipeline.target().describe(),
        audit = %config.audit_dir().display(),
        auth = auth.enabled(),
        dry_run = config.dry_run,
        "backstop started"
    );
    // One line on stdout that scripts and tests can wait for.
    println!("backstop listening on http://{addr}");
    let app = router(AppState {
        pipeline: pipeline.clone(),
        auth,
        max_body_bytes: config.max_body_bytes,
    });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    info!("stopped accepting requests; flushing the audit log");
    let audit = pipeline.audit().clone();
    drop(pipeline);
    audit.close().await?;
    Ok(())
}
