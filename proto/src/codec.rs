//! The gRPC codec of every Cirrus service: prost's, with buffers sized so that a 1 MiB
//! payload is copied once on each side instead of twice.
//!
//! - Encoding: tonic starts each message in an 8 KiB buffer and prost grows it field by
//!   field. A `ReadReply` writes its 1 MiB `data` first, which reserves exactly that much,
//!   and the next field's first byte then doubled the buffer through `realloc`, copying
//!   the megabyte again (10 % of a data server's samples while serving 1 MiB reads). The
//!   encoder here reserves the whole `encoded_len()` first.
//! - Decoding: tonic appends the first HTTP/2 frame (up to 1 MiB here, see `net`) to an
//!   8 KiB buffer, then reserves the message length *on top of* what the buffer already
//!   holds, which reallocates and copies the payload once more (9.5 % of a data server's
//!   samples while taking 1 MiB writes). The bulk messages (`WriteRequest`,
//!   `ReadReply`) therefore start in a buffer that holds a default-size stripe unit
//!   twice over, so neither step reallocates; every other message keeps tonic's 8 KiB.

use crate::pb;
use prost::Message;
use std::any::TypeId;
use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder};

/// tonic's own defaults, kept for every message that is not bulk data.
const SMALL_BUFFER: usize = 8 << 10;
const YIELD_THRESHOLD: usize = 32 << 10;
/// Room for a 1 MiB payload (the default stripe unit) plus its framing, twice: the
/// first frame's bytes and the reservation tonic adds on top of them.
const BULK_BUFFER: usize = 2 * ((1 << 20) + (64 << 10));

/// The decode buffer for messages of type `U`.
fn decode_buffer<U: 'static>() -> usize {
    let u = TypeId::of::<U>();
    if u == TypeId::of::<pb::WriteRequest>() || u == TypeId::of::<pb::ReadReply>() {
        BULK_BUFFER
    } else {
        SMALL_BUFFER
    }
}

/// A prost codec with sized buffers (see the module doc).
pub struct SizedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SizedCodec<T, U> {
    fn default() -> Self {
        SizedCodec(PhantomData)
    }
}

impl<T, U> Codec for SizedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SizedEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SizedEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(decode_buffer::<U>(), YIELD_THRESHOLD))
    }
}

/// Encodes a prost message into a buffer reserved to its exact encoded length.
pub struct SizedEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for SizedEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        // `encode_raw` cannot run out of room: the buffer grows on demand, and it has
        // just been sized to the whole message.
        item.encode_raw(buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bulk_messages_get_the_big_decode_buffer() {
        assert_eq!(decode_buffer::<pb::WriteRequest>(), BULK_BUFFER);
        assert_eq!(decode_buffer::<pb::ReadReply>(), BULK_BUFFER);
        assert_eq!(decode_buffer::<pb::ReadRequest>(), SMALL_BUFFER);
        assert_eq!(decode_buffer::<pb::WriteReply>(), SMALL_BUFFER);
    }
}
