//! ITU-T G.711 μ-law, the only codec Twilio Media Streams speaks.
//!
//! Decoding goes through a 256-entry table built once: it runs for every
//! inbound byte of every call (8,000 per second per call).

use std::sync::OnceLock;

const BIAS: i32 = 0x84;
const CLIP: i32 = 32635;

pub(crate) fn encode_sample(sample: i16) -> u8 {
    let mut pcm = sample as i32;
    let sign = if pcm < 0 { 0x80 } else { 0 };
    if pcm < 0 {
        pcm = -pcm;
    }
    let pcm = pcm.min(CLIP) + BIAS;
    // Segment = position of the highest set bit above bit 7.
    let exponent = (31 - (pcm as u32).leading_zeros()).saturating_sub(7).min(7) as i32;
    let mantissa = (pcm >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

fn decode_uncached(byte: u8) -> i16 {
    let b = !byte;
    let sign = b & 0x80;
    let exponent = ((b >> 4) & 0x07) as i32;
    let mantissa = (b & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

fn table() -> &'static [i16; 256] {
    static TABLE: OnceLock<[i16; 256]> = OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|i| decode_uncached(i as u8)))
}

pub(crate) fn decode_sample(byte: u8) -> i16 {
    table()[byte as usize]
}

pub fn encode(samples: &[i16]) -> Vec<u8> {
    samples.iter().map(|&s| encode_sample(s)).collect()
}

pub fn decode(bytes: &[u8]) -> Vec<i16> {
    let t = table();
    bytes.iter().map(|&b| t[b as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_and_extremes() {
        assert_eq!(encode_sample(0), 0xFF);
        assert_eq!(decode_sample(0xFF), 0);
        assert_eq!(decode_sample(0x7F), 0);
        assert_eq!(decode_sample(0x00), -32124);
        assert_eq!(decode_sample(0x80), 32124);
        assert_eq!(encode_sample(i16::MAX), 0x80);
        assert_eq!(encode_sample(i16::MIN), 0x00);
    }

    #[test]
    fn every_code_round_trips() {
        for b in 0..=255u8 {
            let s = decode_sample(b);
            // 0x7F and 0xFF both decode to zero; zero encodes to 0xFF.
            let back = encode_sample(s);
            assert_eq!(decode_sample(back), s, "code {b:#x}");
        }
    }

    #[test]
    fn quantisation_error_is_bounded() {
        for s in (-32000i32..32000).step_by(7) {
            let d = decode_sample(encode_sample(s as i16)) as i32;
            // The step at the top segment is 1024, so the error is at most half of it.
            assert!((d - s).abs() <= 512 + 4, "{s} -> {d}");
            if s.abs() < 100 {
                assert!((d - s).abs() <= 4, "{s} -> {d}");
            }
        }
    }
}
