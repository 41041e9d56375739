//! The worker listener: HTTPS with client certificates required and verified against
//! `JOBS_WORKER_CLIENT_CA`. A connection without a certificate, with one from another CA, or
//! with an expired one fails the handshake. The worker's identity is taken from its certificate
//! (first URI SAN, else DNS SAN, else CN) and handed to the routes as [`WorkerIdentity`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use axum::extract::Request;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Who a worker is, from its client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerIdentity(pub String);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS configuration of the worker listener.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> anyhow::Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| anyhow!("JOBS_WORKER_TLS_CERT: reading {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow!("JOBS_WORKER_TLS_KEY: reading {}: {e}", key.display()))?;
    let mut roots = RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(client_ca)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| {
            anyhow!(
                "JOBS_WORKER_CLIENT_CA: reading {}: {e}",
                client_ca.display()
            )
        })?;
    for ca in cas {
        roots
            .add(ca)
            .context("JOBS_WORKER_CLIENT_CA: not a CA certificate")?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .context("JOBS_WORKER_CLIENT_CA")?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("JOBS_WORKER_TLS_CERT / JOBS_WORKER_TLS_KEY")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The identity in a certificate: first URI SAN, else first DNS SAN, else the subject CN.
pub fn identity(cert: &[u8]) -> Option<String> {
    let (_, x509) = X509Certificate::from_der(cert).ok()?;
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        let names = &san.value.general_names;
        let uri = names.iter().find_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        });
        let dns = names.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        });
        if let Some(id) = uri.or(dns) {
            return Some(id);
        }
    }
    let cn = x509
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    cn
}

/// Accepts TLS connections until `shutdown` resolves and serves `router` on each, with the
/// worker's identity in the request extensions.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let acceptor = TlsAcceptor::from(config);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "worker listener accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "worker TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
            let id = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| identity(c.as_ref()));
            let Some(id) = id else {
                tracing::info!(%peer, "worker certificate names no identity; closed");
                return;
            };
            let worker = WorkerIdentity(id);
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(worker.clone());
                    router.clone().oneshot(req.map(axum::body::Body::new))
                });
            if let Err(e) = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "worker connection ended");
            }
        });
    }
}
