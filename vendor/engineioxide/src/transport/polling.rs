//! The polling transport module handles polling, post and init requests
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;
use engineioxide_core::payload::{self, Payload};
use futures_util::{StreamExt, stream};
use http::{Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body::Body;
use http_body_util::Full;
use tokio_util::future::FutureExt as _;

use engineioxide_core::{Packet, PacketBuf, ProtocolVersion, Sid, TransportType};

use crate::{
    DisconnectReason, body::ResponseBody, engine::EngineIo, errors::Error,
    handler::EngineIoHandler, socket::{InternalRx, SendBudget}, transport::make_open_packet,
};

/// Create a response for http request
fn http_response<B, D>(code: StatusCode, data: D, is_binary: bool) -> Response<ResponseBody<B>>
where
    D: Into<Bytes>,
{
    use http::header::*;
    let body: Bytes = data.into();
    let res = Response::builder()
        .status(code)
        .header(CONTENT_LENGTH, body.len());
    if is_binary {
        res.header(CONTENT_TYPE, "application/octet-stream")
    } else {
        res.header(CONTENT_TYPE, "text/plain; charset=UTF-8")
    }
    .body(ResponseBody::custom_response(Full::new(body)))
    .unwrap()
}

pub fn open_req<H, B, R>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    req: Request<R>,
    supports_binary: bool,
) -> Result<Response<ResponseBody<B>>, Error>
where
    H: EngineIoHandler,
    B: Send + 'static,
{
    let socket = engine.create_session(
        protocol,
        TransportType::Polling,
        req.into_parts().0,
        supports_binary,
    );

    let packet = make_open_packet(TransportType::Polling, socket.id, &engine.config);

    engine.heartbeats.watch(&socket);

    let packet: String = Packet::Open(packet).into();
    let packet = {
        #[cfg(feature = "v3")]
        {
            let mut packet = packet;
            // The V3 protocol requires the packet length to be prepended to the packet.
            // It doesn't use a packet separator like the V4 protocol (and up).
            if protocol == ProtocolVersion::V3 {
                packet = format!("{}:{}", packet.chars().count(), packet);
            }
            packet
        }
        #[cfg(not(feature = "v3"))]
        packet
    };
    Ok(http_response(StatusCode::OK, packet, false))
}

/// Handle http polling request
///
/// If there is packet in the socket buffer, it will be sent immediately
/// Otherwise it will wait for the next packet to be sent from the socket
pub async fn polling_req<B, H>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Sid,
) -> Result<Response<ResponseBody<B>>, Error>
where
    B: Send + 'static,
    H: EngineIoHandler,
{
    let socket = engine.get_socket(sid).ok_or(Error::UnknownSessionID(sid))?;
    if !socket.is_http() {
        return Err(Error::TransportMismatch);
    }

    if socket.is_upgrading() {
        #[cfg(feature = "tracing")]
        tracing::debug!(?sid, "socket is upgrading, sending NOOP packet");

        let data = payload::packet_encoder(Packet::Noop, socket.protocol, socket.supports_binary);

        let is_binary = false; // The noop packet is guaranteed to be serialized as text
        return Ok(http_response(StatusCode::OK, data, is_binary));
    }

    // If the socket is already locked, it means that the socket is being used by another request
    // In case of multiple http polling, session should be closed
    let mut rx = match socket.internal_rx.try_lock() {
        Ok(s) => s,
        Err(_) => {
            socket.close(DisconnectReason::MultipleHttpPollingError);
            return Err(Error::MultipleHttpPolling);
        }
    };

    #[cfg(feature = "tracing")]
    tracing::debug!(%sid, %protocol, supports_binary = socket.supports_binary, "polling request");

    let max_payload = engine.config.max_payload;
    let took_close = AtomicBool::new(false);
    let mut held_close = None;
    let payload = {
        let InternalRx {
            buffered_rx,
            peeked_packet,
        } = &mut *rx;

        // Prepend the packet peeked during the previous
        // polling request so it is encoded first, ahead of the newly received packets.
        // (Trestle patch: packets leaving the buffer leave the socket's send budget, and
        // the close packet among them is noted: see `Socket::close`.)
        let sent = |p: &PacketBuf| {
            socket.budget.sent(p);
            if has_close(p) {
                took_close.store(true, Ordering::Relaxed);
            }
        };
        let peeked = peeked_packet.take();
        if let Some(p) = &peeked {
            sent(p);
        }
        // Trestle patch: when a close waits for delivery (see `Socket::close`), the close
        // packet goes alone in the next poll, after the packets queued before it, as with
        // socket.io's engine: socket.io-client drops the events of a payload that ends
        // with the close packet (it emits them a tick later, once it is disconnected).
        let mut yielded = false;
        let rx_stream = stream::iter(peeked)
            .chain(rx_stream::EncoderStream::new(buffered_rx, &sent))
            .take_while(|p| {
                let hold = yielded && has_close(p) && socket.close_waits_for_delivery();
                if hold {
                    held_close = Some(p.clone());
                }
                yielded = true;
                std::future::ready(!hold)
            });

        // Stop waiting for the next packet as soon as the session is closed. The combinator is biased
        // towards the encoder completion, so any buffered close packet is still flushed to the client.
        payload::encoder(rx_stream, protocol, socket.supports_binary, max_payload)
            .with_cancellation_token(&socket.cancellation_token)
            .await
    };

    let Some(Payload {
        data,
        has_binary,
        peeked,
    }) = payload
    else {
        #[cfg(feature = "tracing")]
        tracing::debug!(%sid, "session closed while polling, returning empty payload");
        return Ok(http_response(StatusCode::OK, "", false));
    };

    // set back the peeked packet so it can be read again
    // on the next polling request
    // (Trestle patch: or the close packet kept for it; the encoder cannot have peeked a
    // packet after it.)
    let peeked = peeked.or(held_close);
    if let Some(p) = &peeked {
        socket.budget.add(SendBudget::len_of(p));
    }
    // Trestle patch: a close packet put back for the next poll has not been taken yet.
    let took_close = took_close.into_inner() && !peeked.as_ref().is_some_and(has_close);
    rx.peeked_packet = peeked;
    if took_close {
        socket.close_delivered();
    }

    #[cfg(feature = "tracing")]
    tracing::trace!(%sid, %protocol, supports_binary = socket.supports_binary, "sending data: {:?}", data);

    Ok(http_response(StatusCode::OK, data, has_binary))
}

/// Trestle patch: whether `packets` holds the close packet.
fn has_close(packets: &PacketBuf) -> bool {
    packets.iter().any(|p| matches!(p, Packet::Close))
}

/// Handle http polling post request
///
/// Split the body into packets and send them to the internal socket
pub async fn post_req<R, B, H>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Sid,
    req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error>
where
    H: EngineIoHandler,
    R: Body + Send + Unpin + 'static,
    <R as Body>::Error: std::fmt::Debug,
    <R as Body>::Data: Send,
    B: Send + 'static,
{
    let socket = engine.get_socket(sid).ok_or(Error::UnknownSessionID(sid))?;
    if !socket.is_http() {
        return Err(Error::TransportMismatch);
    }

    let (parts, body) = req.into_parts();
    let content_type = parts.headers.get(CONTENT_TYPE);
    let packets = payload::decoder(body, content_type, protocol, engine.config.max_payload);
    futures_util::pin_mut!(packets);

    // Trestle patch: a payload holds at least one packet; an empty body is a bad request
    // that ends the session, as with socket.io's engine (crates.io answered "ok").
    let mut received = 0usize;
    while let Some(packet) = packets.next().await {
        received += 1;
        match packet {
            Ok(Packet::Close) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(%sid, "received close packet, closing session");
                socket.send(Packet::Noop).ok(); // if the send fails, let's forcefully close the socket
                engine.close_session(sid, DisconnectReason::TransportClose);
                break;
            }
            Ok(Packet::Pong | Packet::Ping) => {
                // Trestle patch: the engine's heartbeat task reads it (`crate::heartbeat`).
                socket.heard();
                Ok(())
            }
            Ok(Packet::Message(msg)) => {
                engine.handler.on_message(msg, socket.clone());
                Ok(())
            }
            Ok(Packet::Binary(bin) | Packet::BinaryV3(bin)) => {
                engine.handler.on_binary(bin, socket.clone());
                Ok(())
            }
            Ok(p) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(%sid, "invalid packet received: {:?}", &p);
                Err(Error::BadPacket(p))
            }
            Err(e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(%sid, "could not parse packet: {e}");
                engine.close_session(sid, DisconnectReason::PacketParsingError);
                return Err(e.into());
            }
        }?;
    }
    if received == 0 {
        #[cfg(feature = "tracing")]
        tracing::debug!(%sid, "empty polling payload, closing session");
        engine.close_session(sid, DisconnectReason::PacketParsingError);
        return Err(Error::PacketParse(
            engineioxide_core::PacketParseError::InvalidPacketLen,
        ));
    }
    Ok(http_response(StatusCode::OK, "ok", false))
}

mod rx_stream {
    use std::{
        pin::Pin,
        task::{Context, Poll},
    };

    use futures_core::Stream;
    use pin_project_lite::pin_project;
    use tokio::sync::mpsc;

    /// [`ReceiverStream`] is a stream that wraps a [`mpsc::Receiver`] by reference.
    /// Allowing to use it as a stream even if it is behind a mutex.
    /// (Trestle patch: the channel carries boxes, see `socket::Queued`.)
    pub struct ReceiverStream<'a, T> {
        inner: &'a mut mpsc::Receiver<Box<T>>,
    }

    impl<'a, T> ReceiverStream<'a, T> {
        pub fn new(inner: &'a mut mpsc::Receiver<Box<T>>) -> Self {
            Self { inner }
        }
    }

    impl<'a, T> Stream for ReceiverStream<'a, T> {
        type Item = T;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.inner.poll_recv(cx).map(|v| v.map(|b| *b))
        }
    }

    pin_project! {
        /// The send queue as a [`Stream`]. (Trestle patch: volatile packets are in the
        /// queue too, see `Socket::send_volatile`, so there is no `watch` stream beside it.)
        pub struct EncoderStream<'a, T> {
            #[pin]
            rx: ReceiverStream<'a, T>,
            // Trestle patch: called for each item taken from `rx`.
            sent: &'a (dyn Fn(&T) + Send + Sync),
        }
    }

    impl<'a, T: Clone + Send + Sync + 'static> EncoderStream<'a, T> {
        pub fn new(
            rx: &'a mut mpsc::Receiver<Box<T>>,
            sent: &'a (dyn Fn(&T) + Send + Sync),
        ) -> Self {
            Self {
                rx: ReceiverStream::new(rx),
                sent,
            }
        }
    }

    impl<'a, T: Clone + Send + Sync + 'static> Stream for EncoderStream<'a, T> {
        type Item = T;

        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let this = self.project();
            let v = this.rx.poll_next(cx);
            if let Poll::Ready(Some(v)) = &v {
                (this.sent)(v);
            }
            v
        }
    }
}
