//! TLS client settings shared by the native clients (`grid-worker`, `grid-loadgen`): which
//! certificate authorities a `wss://` (and `https://`) master's certificate may come from.
//!
//! The Mozilla root certificates (`webpki-roots`) are always trusted, so a master with a
//! certificate from a public CA needs no setting; `--ca-cert FILE` adds the certificates of a
//! PEM file (a private CA, or a self-signed master certificate itself).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A TLS client configuration trusting the Mozilla roots and every certificate in the PEM
/// file `extra_ca` (if given), with the `ring` crypto provider. The error says what is wrong
/// with the file.
pub fn client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        for certificate in read_certificates(path)? {
            roots.add(certificate).map_err(|error| {
                format!("{}: not a usable CA certificate: {error}", path.display())
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS set-up: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Every certificate in a PEM file; an error if it cannot be read or holds none.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{}: not PEM certificates: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certificates)
}
