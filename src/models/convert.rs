//! `callbox models convert-whisper`: CTranslate2 `model.bin` → the
//! safetensors layout our Whisper engine loads (Hugging Face names).
//!
//! The only Whisper weights a package registry carries are CTranslate2
//! exports, so we read that format ourselves: a flat list of named tensors
//! with fused attention projections. We split QKV (self-attention) and KV
//! (cross-attention) row-wise, drop the always-zero key bias, dequantise int8
//! rows if the export was quantised, and rename to the Hugging Face scheme.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::error::{Error, Result};

/// What a converted model directory holds.
pub(crate) const WHISPER_OUTPUTS: [&str; 3] =
    ["model.safetensors", "config.json", "tokenizer.json"];

/// One variable of a CTranslate2 model.
#[derive(Debug, Clone)]
pub(crate) struct Ct2Var {
    pub(crate) dims: Vec<usize>,
    /// CTranslate2 type id: 0=f32 1=i8 2=i16 3=i32 4=f16 5=bf16.
    pub(crate) type_id: u8,
    pub(crate) data: Vec<u8>,
}

pub(crate) struct Ct2Model {
    pub(crate) spec: String,
    pub(crate) vars: HashMap<String, Ct2Var>,
    /// Names that stand for another variable (Whisper's tied output
    /// projection). Only the tests read them: the converter ties that
    /// weight itself.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) aliases: HashMap<String, String>,
}

fn read_u8(r: &mut impl Read) -> std::io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}
fn read_u16(r: &mut impl Read) -> std::io::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_le_bytes(b))
}
fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}
/// Length-prefixed (u16, including the trailing NUL) string.
fn read_str(r: &mut impl Read) -> std::io::Result<String> {
    let len = read_u16(r)? as usize;
    let mut b = vec![0u8; len];
    r.read_exact(&mut b)?;
    if b.last() == Some(&0) {
        b.pop();
    }
    Ok(String::from_utf8_lossy(&b).into_owned())
}

const INT8: u8 = 1;

/// The float types a weight can be copied as; int8 is dequantised instead.
fn float_dtype(id: u8) -> Option<DType> {
    match id {
        0 => Some(DType::F32),
        4 => Some(DType::F16),
        5 => Some(DType::BF16),
        _ => None,
    }
}

impl Ct2Model {
    pub(crate) fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut r = Cursor::new(bytes);
        let io = |e: std::io::Error| format!("truncated model.bin: {e}");
        let version = read_u32(&mut r).map_err(io)?;
        if !(4..=6).contains(&version) {
            return Err(format!("unsupported CTranslate2 binary version {version}"));
        }
        let spec = read_str(&mut r).map_err(io)?;
        let _revision = read_u32(&mut r).map_err(io)?;
        let n = read_u32(&mut r).map_err(io)? as usize;
        let mut vars = HashMap::with_capacity(n);
        for _ in 0..n {
            let name = read_str(&mut r).map_err(io)?;
            let rank = read_u8(&mut r).map_err(io)? as usize;
            let dims = (0..rank)
                .map(|_| read_u32(&mut r).map(|d| d as usize))
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(io)?;
            let type_id = read_u8(&mut r).map_err(io)?;
            if type_id > 5 {
                return Err(format!("{name}: unknown type id {type_id}"));
            }
            let nbytes = read_u32(&mut r).map_err(io)? as usize;
            let mut data = vec![0u8; nbytes];
            r.read_exact(&mut data).map_err(io)?;
            vars.insert(
                name,
                Ct2Var {
                    dims,
                    type_id,
                    data,
                },
            );
        }
        let mut aliases = HashMap::new();
        if let Ok(na) = read_u32(&mut r) {
            for _ in 0..na {
                let a = read_str(&mut r).map_err(io)?;
                let t = read_str(&mut r).map_err(io)?;
                aliases.insert(a, t);
            }
        }
        Ok(Self {
            spec,
            vars,
            aliases,
        })
    }

    fn scalar_i16(&self, name: &str) -> Option<usize> {
        let v = self.vars.get(name)?;
        match v.data.len() {
            2 => Some(i16::from_le_bytes([v.data[0], v.data[1]]) as usize),
            4 => Some(i32::from_le_bytes(v.data[..4].try_into().ok()?) as usize),
            1 => Some(v.data[0] as usize),
            _ => None,
        }
    }

    /// The tensor `name`, dequantised to f32 when it is int8 with a scale.
    fn tensor(&self, name: &str) -> std::result::Result<Tensor, String> {
        let v = self
            .vars
            .get(name)
            .ok_or_else(|| format!("missing variable {name}"))?;
        let e = |e: candle_core::Error| format!("{name}: {e}");
        if v.type_id == INT8 {
            let scale_name = format!("{name}_scale");
            let scale = self.tensor(&scale_name)?.to_dtype(DType::F32).map_err(e)?;
            let rows = v.dims[0];
            let q: Vec<f32> = v.data.iter().map(|&b| b as i8 as f32).collect();
            let t = Tensor::from_vec(q, (rows, v.data.len() / rows), &Device::Cpu).map_err(e)?;
            let t = t
                .broadcast_div(&scale.reshape((rows, 1)).map_err(e)?)
                .map_err(e)?;
            return t.reshape(v.dims.as_slice()).map_err(e);
        }
        let dtype = float_dtype(v.type_id)
            .ok_or_else(|| format!("{name}: type id {} is not a weight", v.type_id))?;
        Tensor::from_raw_buffer(&v.data, dtype, &v.dims, &Device::Cpu).map_err(e)
    }
}

/// `model.bin`, or when it is absent the pieces `model.bin.part1`,
/// `model.bin.part2`, … joined in order: package indexes cap a file's size,
/// so larger CTranslate2 models are published split.
fn model_bytes(bin: &Path) -> Result<Vec<u8>> {
    if let Ok(bytes) = std::fs::read(bin) {
        return Ok(bytes);
    }
    let parts: Vec<_> = (1..)
        .map(|i| bin.with_extension(format!("bin.part{i}")))
        .take_while(|p| p.is_file())
        .collect();
    if parts.is_empty() {
        return Err(Error::missing("CTranslate2 Whisper model", bin));
    }
    let mut bytes = Vec::new();
    for p in &parts {
        std::fs::File::open(p)?.read_to_end(&mut bytes)?;
    }
    Ok(bytes)
}

/// Converts the CTranslate2 directory `src` (model.bin, config.json,
/// tokenizer.json) into `dst`.
pub(crate) fn convert_whisper(src: &Path, dst: &Path) -> Result<()> {
    let bin = src.join("model.bin");
    let bytes = model_bytes(&bin)?;
    let model = Ct2Model::parse(&bytes)
        .map_err(|e| Error::corrupt("CTranslate2 Whisper model", &bin, e))?;
    if model.spec != "WhisperSpec" {
        return Err(Error::corrupt(
            "CTranslate2 Whisper model",
            &bin,
            format!("spec {}", model.spec),
        ));
    }
    let (tensors, config) =
        map_whisper(&model).map_err(|e| Error::corrupt("CTranslate2 Whisper model", &bin, e))?;

    let ct2_config: serde_json::Value = std::fs::read(src.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(json!({}));
    let mut config = config;
    config["suppress_tokens"] = ct2_config.get("suppress_ids").cloned().unwrap_or(json!([]));
    config["begin_suppress_tokens"] = ct2_config
        .get("suppress_ids_begin")
        .cloned()
        .unwrap_or(json!([220, 50256]));

    std::fs::create_dir_all(dst)?;
    let tmp = dst.join("model.safetensors.partial");
    candle_core::safetensors::save(&tensors, &tmp)
        .map_err(|e| Error::engine("convert-whisper", format!("writing safetensors: {e}")))?;
    std::fs::rename(&tmp, dst.join("model.safetensors"))?;
    std::fs::write(
        dst.join("config.json"),
        serde_json::to_vec_pretty(&config).expect("json"),
    )?;
    let tok = src.join("tokenizer.json");
    std::fs::copy(&tok, dst.join("tokenizer.json"))
        .map_err(|_| Error::missing("Whisper tokenizer", &tok))?;
    Ok(())
}

/// Renames and splits every weight; returns the tensors and the
/// Hugging Face style `config.json` derived from their shapes.
pub(crate) fn map_whisper(
    m: &Ct2Model,
) -> std::result::Result<(HashMap<String, Tensor>, serde_json::Value), String> {
    let mut out = HashMap::new();
    let get = |n: &str| m.tensor(n);
    let e = |e: candle_core::Error| e.to_string();
    let conv1 = &m
        .vars
        .get("encoder/conv1/weight")
        .ok_or("missing encoder/conv1/weight")?
        .dims;
    let (d, n_mels) = (conv1[0], conv1[1]);
    let count = |prefix: &str| {
        (0..)
            .take_while(|i| {
                m.vars
                    .contains_key(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))
            })
            .count()
    };
    let (n_enc, n_dec) = (count("encoder"), count("decoder"));
    let vocab = m
        .vars
        .get("decoder/embeddings/weight")
        .ok_or("missing decoder/embeddings/weight")?
        .dims[0];
    let n_audio_ctx = m
        .vars
        .get("encoder/position_encodings/encodings")
        .map_or(1500, |v| v.dims[0]);
    let n_text_ctx = m
        .vars
        .get("decoder/position_encodings/encodings")
        .map_or(448, |v| v.dims[0]);
    let enc_heads = m.scalar_i16("encoder/num_heads").unwrap_or(d / 64);
    let dec_heads = m.scalar_i16("decoder/num_heads").unwrap_or(d / 64);

    let mut put = |name: String, t: Tensor| {
        out.insert(name, t);
    };
    let ln = |put: &mut dyn FnMut(String, Tensor),
              from: &str,
              to: &str|
     -> std::result::Result<(), String> {
        put(format!("{to}.weight"), get(&format!("{from}/gamma"))?);
        put(format!("{to}.bias"), get(&format!("{from}/beta"))?);
        Ok(())
    };
    let lin = |put: &mut dyn FnMut(String, Tensor),
               from: &str,
               to: &str|
     -> std::result::Result<(), String> {
        put(format!("{to}.weight"), get(&format!("{from}/weight"))?);
        put(format!("{to}.bias"), get(&format!("{from}/bias"))?);
        Ok(())
    };
    // Splits a fused projection into `parts` row blocks named after `names`;
    // a `None` name's bias is dropped (the key bias, always zero).
    let split = |put: &mut dyn FnMut(String, Tensor),
                 from: &str,
                 to: &str,
                 names: &[&str]|
     -> std::result::Result<(), String> {
        let w = get(&format!("{from}/weight"))?;
        let b = get(&format!("{from}/bias"))?;
        for (i, n) in names.iter().enumerate() {
            put(
                format!("{to}.{n}.weight"),
                w.narrow(0, i * d, d).map_err(e)?.contiguous().map_err(e)?,
            );
            if *n != "k_proj" {
                put(
                    format!("{to}.{n}.bias"),
                    b.narrow(0, i * d, d).map_err(e)?.contiguous().map_err(e)?,
                );
            }
        }
        Ok(())
    };

    for conv in ["conv1", "conv2"] {
        lin(
            &mut put,
            &format!("encoder/{conv}"),
            &format!("model.encoder.{conv}"),
        )?;
    }
    put(
        "model.encoder.embed_positions.weight".into(),
        get("encoder/position_encodings/encodings")?,
    );
    put(
        "model.decoder.embed_tokens.weight".into(),
        get("decoder/embeddings/weight")?,
    );
    put(
        "model.decoder.embed_positions.weight".into(),
        get("decoder/position_encodings/encodings")?,
    );
    // Both stacks share self-attention and feed-forward; decoder layers add
    // cross-attention over the audio.
    for (stack, layers) in [("encoder", n_enc), ("decoder", n_dec)] {
        for i in 0..layers {
            let (f, t) = (
                format!("{stack}/layer_{i}"),
                format!("model.{stack}.layers.{i}"),
            );
            ln(
                &mut put,
                &format!("{f}/self_attention/layer_norm"),
                &format!("{t}.self_attn_layer_norm"),
            )?;
            split(
                &mut put,
                &format!("{f}/self_attention/linear_0"),
                &format!("{t}.self_attn"),
                &["q_proj", "k_proj", "v_proj"],
            )?;
            lin(
                &mut put,
                &format!("{f}/self_attention/linear_1"),
                &format!("{t}.self_attn.out_proj"),
            )?;
            if stack == "decoder" {
                ln(
                    &mut put,
                    &format!("{f}/attention/layer_norm"),
                    &format!("{t}.encoder_attn_layer_norm"),
                )?;
                lin(
                    &mut put,
                    &format!("{f}/attention/linear_0"),
                    &format!("{t}.encoder_attn.q_proj"),
                )?;
                split(
                    &mut put,
                    &format!("{f}/attention/linear_1"),
                    &format!("{t}.encoder_attn"),
                    &["k_proj", "v_proj"],
                )?;
                lin(
                    &mut put,
                    &format!("{f}/attention/linear_2"),
                    &format!("{t}.encoder_attn.out_proj"),
                )?;
            }
            ln(
                &mut put,
                &format!("{f}/ffn/layer_norm"),
                &format!("{t}.final_layer_norm"),
            )?;
            lin(&mut put, &format!("{f}/ffn/linear_0"), &format!("{t}.fc1"))?;
            lin(&mut put, &format!("{f}/ffn/linear_1"), &format!("{t}.fc2"))?;
        }
        ln(
            &mut put,
            &format!("{stack}/layer_norm"),
            &format!("model.{stack}.layer_norm"),
        )?;
    }

    let config = json!({
        "model_type": "whisper",
        "num_mel_bins": n_mels,
        "max_source_positions": n_audio_ctx,
        "d_model": d,
        "encoder_attention_heads": enc_heads,
        "encoder_layers": n_enc,
        "vocab_size": vocab,
        "max_target_positions": n_text_ctx,
        "decoder_attention_heads": dec_heads,
        "decoder_layers": n_dec,
    });
    Ok((out, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a CTranslate2 file the way its Python serialiser does.
    fn write_ct2(vars: &[(&str, Vec<usize>, u8, Vec<u8>)]) -> Vec<u8> {
        let mut b = Vec::new();
        let s = |b: &mut Vec<u8>, s: &str| {
            b.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
            b.push(0);
        };
        b.extend_from_slice(&6u32.to_le_bytes());
        s(&mut b, "WhisperSpec");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(vars.len() as u32).to_le_bytes());
        for (name, dims, id, data) in vars {
            s(&mut b, name);
            b.push(dims.len() as u8);
            for d in dims {
                b.extend_from_slice(&(*d as u32).to_le_bytes());
            }
            b.push(*id);
            b.extend_from_slice(&(data.len() as u32).to_le_bytes());
            b.extend_from_slice(data);
        }
        b.extend_from_slice(&1u32.to_le_bytes());
        s(&mut b, "decoder/projection/weight");
        s(&mut b, "decoder/embeddings/weight");
        b
    }

    fn f32s(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
        v.into_iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Builds the variable list of a one-layer model.
    #[derive(Default)]
    struct Vars(Vec<(String, Vec<usize>, u8, Vec<u8>)>);

    impl Vars {
        fn add(&mut self, n: &str, dims: Vec<usize>, id: u8, data: Vec<u8>) {
            self.0.push((n.to_string(), dims, id, data));
        }
        fn seq(&mut self, n: &str, dims: Vec<usize>, base: f32) {
            let len = dims.iter().product::<usize>();
            self.add(n, dims, 0, f32s((0..len).map(|i| base + i as f32)));
        }
        fn dense(&mut self, l: &str, n: &str, rows: usize, cols: usize) {
            self.seq(&format!("{l}/{n}/weight"), vec![rows, cols], 0.0);
            self.seq(&format!("{l}/{n}/bias"), vec![rows], 0.0);
        }
        fn norm(&mut self, l: &str, n: &str, d: usize) {
            self.seq(&format!("{l}/{n}/gamma"), vec![d], 1.0);
            self.seq(&format!("{l}/{n}/beta"), vec![d], 0.0);
        }
    }

    #[test]
    fn fused_projections_are_split_and_int8_dequantised() {
        let d = 2;
        let mut v = Vars::default();
        v.seq("encoder/conv1/weight", vec![d, 3, 3], 0.0);
        v.seq("encoder/conv1/bias", vec![d], 0.0);
        v.seq("encoder/conv2/weight", vec![d, d, 3], 0.0);
        v.seq("encoder/conv2/bias", vec![d], 0.0);
        v.seq("encoder/position_encodings/encodings", vec![4, d], 0.0);
        v.seq("decoder/position_encodings/encodings", vec![4, d], 0.0);
        v.seq("decoder/embeddings/weight", vec![5, d], 0.0);
        v.add("encoder/num_heads", vec![], 2, 1i16.to_le_bytes().to_vec());
        for p in ["encoder", "decoder"] {
            v.norm(p, "layer_norm", d);
            let l = format!("{p}/layer_0");
            // Fused QKV: rows 0-1 = Q, 2-3 = K, 4-5 = V, as int8 with row scales.
            v.add(
                &format!("{l}/self_attention/linear_0/weight"),
                vec![3 * d, d],
                1,
                (0..6 * d as u8).collect(),
            );
            v.add(
                &format!("{l}/self_attention/linear_0/weight_scale"),
                vec![3 * d],
                0,
                f32s([2.0; 6]),
            );
            v.seq(
                &format!("{l}/self_attention/linear_0/bias"),
                vec![3 * d],
                10.0,
            );
            v.dense(&l, "self_attention/linear_1", d, d);
            v.dense(&l, "ffn/linear_0", 4 * d, d);
            v.dense(&l, "ffn/linear_1", d, 4 * d);
            v.norm(&l, "self_attention/layer_norm", d);
            v.norm(&l, "ffn/layer_norm", d);
            if p == "decoder" {
                v.norm(&l, "attention/layer_norm", d);
                v.dense(&l, "attention/linear_0", d, d);
                v.dense(&l, "attention/linear_1", 2 * d, d);
                v.dense(&l, "attention/linear_2", d, d);
            }
        }
        let refs: Vec<(&str, Vec<usize>, u8, Vec<u8>)> =
            v.0.iter()
                .map(|(n, d, i, b)| (n.as_str(), d.clone(), *i, b.clone()))
                .collect();
        let model = Ct2Model::parse(&write_ct2(&refs)).unwrap();
        assert_eq!(
            model.aliases["decoder/projection/weight"],
            "decoder/embeddings/weight"
        );
        let (t, cfg) = map_whisper(&model).unwrap();
        assert_eq!(cfg["encoder_layers"], 1);
        assert_eq!(cfg["decoder_layers"], 1);
        assert_eq!(cfg["vocab_size"], 5);
        assert_eq!(cfg["num_mel_bins"], 3);
        assert_eq!(cfg["encoder_attention_heads"], 1);
        let v = |n: &str| {
            t[n].to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        // int8 value i / scale 2.0; K rows are 2..4 → values 4..8.
        assert_eq!(
            v("model.encoder.layers.0.self_attn.k_proj.weight"),
            [2.0, 2.5, 3.0, 3.5]
        );
        assert_eq!(
            v("model.encoder.layers.0.self_attn.v_proj.bias"),
            [14.0, 15.0]
        );
        assert!(!t.contains_key("model.encoder.layers.0.self_attn.k_proj.bias"));
        assert_eq!(
            v("model.decoder.layers.0.encoder_attn.v_proj.weight"),
            [4.0, 5.0, 6.0, 7.0]
        );
        assert_eq!(
            v("model.decoder.layers.0.encoder_attn.k_proj.weight"),
            [0.0, 1.0, 2.0, 3.0]
        );
        assert!(t.contains_key("model.decoder.layers.0.encoder_attn_layer_norm.weight"));
    }

    #[test]
    fn a_model_split_in_parts_is_read_joined_in_order() {
        let dir = std::env::temp_dir().join(format!("callbox-parts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("model.bin");
        assert!(model_bytes(&bin).is_err(), "nothing there");
        for (i, part) in [&b"abc"[..], b"de", b"f"].iter().enumerate() {
            std::fs::write(dir.join(format!("model.bin.part{}", i + 1)), part).unwrap();
        }
        // A stray later piece after a gap is not part of the model.
        std::fs::write(dir.join("model.bin.part5"), b"zz").unwrap();
        assert_eq!(model_bytes(&bin).unwrap(), b"abcdef");
        // A whole model.bin wins over pieces.
        std::fs::write(&bin, b"whole").unwrap();
        assert_eq!(model_bytes(&bin).unwrap(), b"whole");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncated_files_are_refused() {
        let e = Ct2Model::parse(&[6, 0, 0, 0, 5]).err().unwrap();
        assert!(e.contains("truncated"), "{e}");
        let e = Ct2Model::parse(&[99, 0, 0, 0]).err().unwrap();
        assert!(e.contains("version"), "{e}");
    }
}
