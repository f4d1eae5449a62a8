//! A websocket codec that refuses a frame from a ComfyUI server as soon as its header announces more
//! than the limit, before any of its payload is read.
//!
//! awc's own `max_frame_size` is not enough on its own: its parser waits until the whole frame is
//! in memory and only then drops it, so a server announcing a huge frame (or an endless one) would
//! make comfyd buffer all of it. After a refusal the codec discards whatever else arrives; the
//! backend drops the connection on the error and reconnects.

use actix_codec::{Decoder, Encoder};
use awc::error::WsProtocolError;
use awc::ws::{Codec, Frame, Message};
use bytes::BytesMut;

/// awc's websocket codec behind a frame size check.
pub struct BoundedCodec {
    inner: Codec,
    max: usize,
    /// Set once a frame was refused: the stream is out of step and nothing more is decoded.
    refused: bool,
}

impl BoundedCodec {
    pub fn new(inner: Codec, max: usize) -> BoundedCodec {
        BoundedCodec {
            inner: inner.max_size(max),
            max,
            refused: false,
        }
    }
}

/// The payload length a frame header announces, once its length bytes have arrived (RFC 6455 5.2).
fn announced_len(src: &[u8]) -> Option<u64> {
    let len7 = *src.get(1)? & 0x7f;
    match len7 {
        126 => src
            .get(2..4)
            .map(|b| u64::from(u16::from_be_bytes([b[0], b[1]]))),
        127 => src.get(2..10).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_be_bytes(a)
        }),
        n => Some(u64::from(n)),
    }
}

impl Decoder for BoundedCodec {
    type Item = Frame;
    type Error = WsProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WsProtocolError> {
        if self.refused {
            src.clear();
            return Ok(None);
        }
        if announced_len(src).is_some_and(|n| n > self.max as u64) {
            self.refused = true;
            src.clear();
            return Err(WsProtocolError::Overflow);
        }
        self.inner.decode(src)
    }
}

impl Encoder<Message> for BoundedCodec {
    type Error = WsProtocolError;

    fn encode(&mut self, item: Message, dst: &mut BytesMut) -> Result<(), WsProtocolError> {
        self.inner.encode(item, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server-to-client (unmasked) text frame header announcing `len` bytes.
    fn header(len: u64) -> Vec<u8> {
        let mut h = vec![0x81];
        if len < 126 {
            h.push(len as u8);
        } else if len <= u64::from(u16::MAX) {
            h.push(126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            h.push(127);
            h.extend_from_slice(&len.to_be_bytes());
        }
        h
    }

    #[test]
    fn frames_within_the_limit_decode() {
        let mut codec = BoundedCodec::new(Codec::new().client_mode(), 1024);
        let mut buf = BytesMut::from(&header(5)[..]);
        buf.extend_from_slice(b"hello");
        match codec.decode(&mut buf).expect("decodes") {
            Some(Frame::Text(t)) => assert_eq!(&t[..], b"hello"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_announced_oversized_frame_is_refused_before_its_payload() {
        for len in [1025, 70_000, 64 << 20, u64::MAX >> 1] {
            let mut codec = BoundedCodec::new(Codec::new().client_mode(), 1024);
            // Only the header has arrived: refused at once, nothing buffered.
            let mut buf = BytesMut::from(&header(len)[..]);
            assert!(matches!(
                codec.decode(&mut buf),
                Err(WsProtocolError::Overflow)
            ));
            assert!(buf.is_empty());
            // Whatever follows is discarded, never an error loop.
            buf.extend_from_slice(&[b'x'; 4096]);
            assert!(matches!(codec.decode(&mut buf), Ok(None)));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn a_partial_header_waits_for_more() {
        let mut codec = BoundedCodec::new(Codec::new().client_mode(), 1024);
        let mut buf = BytesMut::from(&[0x81u8, 127, 0, 0][..]);
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
    }
}
