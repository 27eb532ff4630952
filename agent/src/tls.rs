//! TLS to the reconciler on a `wss://` URL: which certificate authorities the agent trusts for the reconciler's
//! certificate (`caFile`, else the system's bundle), and what a failed handshake means in an operator's words.
//! rustls on ring. The token goes in the WebSocket upgrade request, which is written only once the handshake has
//! succeeded: a server with an untrusted certificate never sees it.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::AgentConfig;

/// The TLS client for the reconciler, or `None` on a `ws://` URL. Refuses, naming the config file and the key,
/// a CA file that cannot be read or holds no usable certificate, and a `wss://` URL with nothing to trust.
pub fn client(config: &AgentConfig, config_path: &Path) -> Result<Option<Arc<ClientConfig>>> {
    if !config.reconciler.starts_with("wss://") {
        return Ok(None);
    }
    let roots = match &config.ca_file {
        Some(ca) => ca_file_roots(ca).map_err(|e| anyhow::anyhow!("{}: caFile: {e}", config_path.display()))?,
        None => system_roots().map_err(|e| anyhow::anyhow!("{}: reconciler: {e}", config_path.display()))?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(client)))
}

/// Every certificate of a PEM bundle, each one checked.
fn ca_file_roots(ca: &Path) -> Result<RootCertStore> {
    let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ca.display()))?;
    let mut roots = RootCertStore::empty();
    for (n, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| anyhow::anyhow!("{} is not a readable PEM file: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| anyhow::anyhow!("certificate {} in {} is not usable: {e}", n + 1, ca.display()))?;
    }
    if roots.is_empty() {
        bail!(
            "{} holds no certificate (no `-----BEGIN CERTIFICATE-----` block); it must be the PEM file of the CA \
             that signed the reconciler's certificate",
            ca.display()
        );
    }
    Ok(roots)
}

/// The system's bundle, as openssl finds it (`SSL_CERT_FILE`, `/etc/ssl/certs/ca-certificates.crt` on Debian).
fn system_roots() -> Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        bail!(
            "wss:// without caFile trusts the system's CA bundle, and none was found{}; set caFile to the PEM file \
             of the CA that signed the reconciler's certificate (or install ca-certificates)",
            if errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", errors.join("; "))
            }
        );
    }
    Ok(roots)
}

/// A handshake failure in an operator's words, with what to check.
pub fn explain(e: &rustls::Error) -> String {
    let hint = match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the reconciler's certificate is not signed by a CA this agent trusts: caFile (or, without it, the \
             system's bundle) must hold the CA that signed it"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the certificate does not name the host in `reconciler:`; its subjectAltName must hold that name or IP",
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. } | CertificateError::NotValidYet,
        ) => "renew the reconciler's certificate (or check this VM's clock)",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "does that port speak TLS? write ws:// for a plain port"
        }
        rustls::Error::AlertReceived(_) => "the server refused the handshake; its error log says why",
        _ => "",
    };
    if hint.is_empty() {
        format!("TLS handshake failed: {e}")
    } else {
        format!("TLS handshake failed: {e}; {hint}")
    }
}

/// The rustls error inside an I/O error, as tokio-rustls and rustls's blocking stream report handshake failures.
pub fn handshake_error(io: &std::io::Error) -> Option<&rustls::Error> {
    io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, url: &str, ca: Option<&Path>) -> AgentConfig {
        let mut text = format!(
            "node: n\nrole: micro\nreconciler: {url}\ntokenFile: /t\naddress: 127.0.0.1\nimage: i\ndataDir: {}\n",
            dir.display()
        );
        if let Some(ca) = ca {
            text.push_str(&format!("caFile: {}\n", ca.display()));
        }
        AgentConfig::parse(&dir.join("agent.yaml"), &text).unwrap()
    }

    #[test]
    fn a_ca_file_that_cannot_serve_is_refused_with_the_config_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        let url = "wss://127.0.0.1:8443/ws/agent";

        let missing = dir.path().join("missing.pem");
        let err = client(&config(dir.path(), url, Some(&missing)), &path)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "{}: caFile: cannot read {}",
                path.display(),
                missing.display()
            )),
            "{err}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "just some text\n").unwrap();
        let err = client(&config(dir.path(), url, Some(&empty)), &path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("caFile:"), "{err}");
        assert!(err.contains("holds no certificate"), "{err}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = client(&config(dir.path(), url, Some(&garbage)), &path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("certificate 1 in") && err.contains("not usable"), "{err}");

        assert!(
            client(&config(dir.path(), "ws://127.0.0.1:3452/ws/agent", None), &path)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_handshake_failure_says_what_to_check() {
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let said = explain(&unknown);
        assert!(
            said.starts_with("TLS handshake failed:") && said.contains("caFile"),
            "{said}"
        );
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, unknown);
        assert!(handshake_error(&io).is_some());
        let name = explain(&rustls::Error::InvalidCertificate(CertificateError::NotValidForName));
        assert!(name.contains("subjectAltName"), "{name}");
    }
}
