//! HTTPS and WSS served by the master itself (`--tls-cert`, `--tls-key`), with rustls.
//!
//! - [`server_config`]: the certificate chain and private key from PEM files, HTTP/1.1 by ALPN.
//! - [`handshake`]: the server side of one handshake, bounded in time.
//! - [`Transport`]: an admitted connection's bytes, plain or TLS, as hyper reads them.
//! - [`HSTS`]: the `Strict-Transport-Security` value every answer carries when serving TLS.
//!
//! The handshake runs in the connection's own task, after admission (so the connection caps
//! count it) and within the header-read timeout: a peer that opens TCP and never sends a
//! ClientHello, or sends plain HTTP, is closed without stalling the accept loop.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::admission::Admitted;

/// `Strict-Transport-Security` when serving TLS: browsers use https for a year.
pub const HSTS: &str = "max-age=31536000";

/// A server configuration from a PEM certificate chain (the server's certificate first) and a
/// PEM private key (PKCS#8, PKCS#1 or SEC1). The error names the file and what is wrong.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .map_err(|error| format!("cannot read {}: {error}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{}: not PEM certificates: {error}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|error| format!("{}: no usable private key: {error}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS set-up: {error}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| format!("the certificate and the key do not go together: {error}"))?;
    // The master speaks HTTP/1.1 only (WebSocket upgrades included).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server side of a TLS handshake on `stream`, within `timeout`: a peer that never sends
/// its ClientHello, or speaks plain HTTP, gets `None` (and the connection is dropped).
pub async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: Admitted,
    timeout: Duration,
) -> Option<Transport> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(Transport::Tls(Box::new(stream))),
        Ok(Err(error)) => {
            metrics::counter!("grid_tls_handshakes_failed_total", "reason" => "error").increment(1);
            tracing::debug!(%error, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics::counter!("grid_tls_handshakes_failed_total", "reason" => "timeout")
                .increment(1);
            None
        }
    }
}

/// An admitted connection, plain or TLS.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Plain(Admitted),
    /// TLS over TCP, after a completed handshake.
    Tls(Box<tokio_rustls::server::TlsStream<Admitted>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(stream) => stream.is_write_vectored(),
            Transport::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
