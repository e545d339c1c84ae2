//! A client connection over either transport, as one `Stream` of tungstenite
//! `Message`s and one `Sink` of them, so the scenarios read the same for both:
//! WebSocket as it is, WebTransport as one bidirectional stream of newline-delimited
//! JSON (each line a `Message::Text`; volatile datagrams are not read by the bench).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Sink, Stream};
use hookwire::transport::Inbound;
use hookwire::transport::wt::Lines;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::codec::{FramedWrite, LinesCodec};

/// Lines longer than this end the connection (the broker's replies are far smaller).
const MAX_LINE: usize = 8 << 20;

pub enum Conn {
    Ws(Box<WebSocketStream<TcpStream>>),
    Wt(Box<WtConn>),
}

pub struct WtConn {
    /// Kept so the session lives as long as its stream.
    session: web_transport_quinn::Session,
    recv: web_transport_quinn::RecvStream,
    /// Lines out of the chunks read, without a copy (as the broker reads them).
    lines: Lines,
    write: FramedWrite<web_transport_quinn::SendStream, LinesCodec>,
}

impl WtConn {
    pub fn new(
        session: web_transport_quinn::Session,
        send: web_transport_quinn::SendStream,
        recv: web_transport_quinn::RecvStream,
    ) -> Self {
        Self {
            session,
            recv,
            lines: Lines::new(MAX_LINE),
            write: FramedWrite::new(send, LinesCodec::new()),
        }
    }
}

fn io(e: impl std::fmt::Display) -> WsError {
    WsError::Io(std::io::Error::other(e.to_string()))
}

impl Conn {
    /// Closes: a WebSocket close frame, or the WebTransport session (code 1000).
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), WsError> {
        match self {
            Self::Ws(ws) => ws.close(frame).await,
            Self::Wt(wt) => {
                wt.session.close(1000, b"bench done");
                Ok(())
            }
        }
    }
}

impl Stream for Conn {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            Self::Ws(ws) => Pin::new(ws.as_mut()).poll_next(cx),
            Self::Wt(wt) => wt.poll_line(cx),
        }
    }
}

impl WtConn {
    /// The next line as a text message: split out of the last chunk read, or a chunk
    /// read first (a read future polled once and dropped when pending is fine: quinn
    /// keeps the waker with the stream, and a chunk is returned whole or not taken).
    fn poll_line(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, WsError>>> {
        loop {
            match self.lines.next_line() {
                Some(Inbound::Text(line)) => {
                    return Poll::Ready(Some(
                        Utf8Bytes::try_from(line).map(Message::Text).map_err(io),
                    ));
                }
                Some(_) => return Poll::Ready(Some(Err(io("a line over the limit")))),
                None => {}
            }
            let read = std::pin::pin!(self.recv.read_chunk(usize::MAX, true));
            match std::task::ready!(read.poll(cx)) {
                Ok(Some(chunk)) => self.lines.feed(chunk.bytes),
                Ok(None) => return Poll::Ready(None),
                Err(e) => return Poll::Ready(Some(Err(io(e)))),
            }
        }
    }
}

impl Sink<Message> for Conn {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match self.get_mut() {
            Self::Ws(ws) => Pin::new(ws.as_mut()).poll_ready(cx),
            Self::Wt(wt) => Sink::<&str>::poll_ready(Pin::new(&mut wt.write), cx).map_err(io),
        }
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
        match self.get_mut() {
            Self::Ws(ws) => Pin::new(ws.as_mut()).start_send(item),
            Self::Wt(wt) => match item {
                Message::Text(text) => Pin::new(&mut wt.write)
                    .start_send(text.as_str())
                    .map_err(io),
                // WebTransport has no pings or close frames on the stream.
                _ => Ok(()),
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match self.get_mut() {
            Self::Ws(ws) => Pin::new(ws.as_mut()).poll_flush(cx),
            Self::Wt(wt) => Sink::<&str>::poll_flush(Pin::new(&mut wt.write), cx).map_err(io),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match self.get_mut() {
            Self::Ws(ws) => Pin::new(ws.as_mut()).poll_close(cx),
            Self::Wt(wt) => Sink::<&str>::poll_close(Pin::new(&mut wt.write), cx).map_err(io),
        }
    }
}

/// Trusts exactly the certificate with this SHA-256 (what a browser does with
/// `serverCertificateHashes`); signatures are still checked.
#[derive(Debug)]
pub struct PinnedCert {
    pub sha256: Vec<u8>,
    pub provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use sha2::Digest;
        if sha2::Sha256::digest(end_entity)[..] == self.sha256[..] {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the pinned certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used by QUIC".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
