//! The codec of every generated client and server: prost, as tonic's
//! default, with a smaller first encode buffer.
//!
//! tonic gives every call (and every open server stream) an encode buffer
//! of 8 KiB up front. An idle `Subscribe` stream writes only heartbeats of a
//! few dozen bytes into it, yet keeps its first page resident for as long as
//! it is open: about 4 KiB per stream, the largest single cost of 10,000
//! idle streams. Starting at 512 bytes costs nothing for small messages;
//! a larger one grows the buffer as it is written (doubling, a few copies).
//! Decoding keeps tonic's defaults.

use std::marker::PhantomData;
use tonic::codec::BufferSettings;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// First capacity of a call's encode buffer, in bytes.
pub const ENCODE_BUFFER_BYTES: usize = 512;

/// Encoded bytes gathered before a stream hands them to HTTP/2 (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// prost encoding and decoding with [`ENCODE_BUFFER_BYTES`] (the generated
/// code's `codec_path`).
#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER_BYTES, YIELD_THRESHOLD_BYTES))
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<T, U>::default().decoder()
    }
}
