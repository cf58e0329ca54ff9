//! Whisper's encoder and decoder on candle, written for streaming turns.
//!
//! candle-transformers ships a Whisper model, but its decoder recomputes the
//! whole prefix at every step and keeps its caches inside the model, so one
//! copy of the weights cannot serve concurrent calls. Here the weights are
//! immutable and shared; each transcription carries its own [`DecoderState`]
//! with the self-attention keys/values of the tokens decoded so far and the
//! cross-attention keys/values computed once from the encoder output. That
//! takes a tiny.en decoder step from ~23 ms to a few ms on two cores.
//!
//! The encoder also accepts a mel shorter than 30 s: positions are simply the
//! first `T/2` rows of the positional table.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Config {
    pub(crate) num_mel_bins: usize,
    pub(crate) max_source_positions: usize,
    pub(crate) d_model: usize,
    pub(crate) encoder_attention_heads: usize,
    pub(crate) encoder_layers: usize,
    pub(crate) vocab_size: usize,
    pub(crate) max_target_positions: usize,
    pub(crate) decoder_attention_heads: usize,
    pub(crate) decoder_layers: usize,
    #[serde(default)]
    pub(crate) suppress_tokens: Vec<u32>,
    #[serde(default)]
    pub(crate) begin_suppress_tokens: Vec<u32>,
}

/// A linear layer, in 8 bits on the CPU where the decoder runs it one token
/// at a time. The gemm crate packs the whole weight matrix on every call,
/// which for a single row of input costs more than the product itself (a
/// tiny.en decoder step took ~8.5 ms in its four blocks, and the 384 × 51,864
/// output projection more still); an 8-bit GEMV reads the weights as they
/// lie, a quarter of the bytes. Only the argmax of the logits is used, which
/// 8-bit weights do not move in practice (the WER tests hold it to the
/// reference implementation's). The encoder, whose inputs have hundreds of
/// rows, keeps dense f32 weights.
enum Proj {
    Dense(Linear),
    Quantized { w: QMatMul, b: Option<Tensor> },
}

impl Proj {
    fn load(d_in: usize, d_out: usize, bias: bool, quantize: bool, vb: VarBuilder) -> Result<Self> {
        let w = vb.get((d_out, d_in), "weight")?;
        let b = bias.then(|| vb.get(d_out, "bias")).transpose()?;
        Self::new(w, b, quantize)
    }

    /// `w`: `[d_out, d_in]`.
    fn new(w: Tensor, b: Option<Tensor>, quantize: bool) -> Result<Self> {
        if quantize && w.device().is_cpu() && w.dim(1)? % 32 == 0 {
            let q = QTensor::quantize(&w.to_dtype(DType::F32)?, GgmlDType::Q8_0)?;
            Ok(Self::Quantized {
                w: QMatMul::from_qtensor(q)?,
                b: b.map(|b| b.to_dtype(DType::F32)).transpose()?,
            })
        } else {
            Ok(Self::Dense(Linear::new(w, b)))
        }
    }
}

impl Module for Proj {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(l) => l.forward(x),
            Self::Quantized { w, b } => {
                let y = w.forward(x)?;
                match b {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
    }
}

struct Attention {
    q: Proj,
    k: Proj,
    v: Proj,
    out: Proj,
    n_head: usize,
}

impl Attention {
    /// `per_token`: the queries are one decoded token at a time (8-bit);
    /// `per_token_kv`: so are the keys and values (self-attention; the
    /// cross-attention's are projected once from hundreds of encoder rows).
    fn load(
        d: usize,
        n_head: usize,
        per_token: bool,
        per_token_kv: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            q: Proj::load(d, d, true, per_token, vb.pp("q_proj"))?,
            k: Proj::load(d, d, false, per_token_kv, vb.pp("k_proj"))?,
            v: Proj::load(d, d, true, per_token_kv, vb.pp("v_proj"))?,
            out: Proj::load(d, d, true, per_token, vb.pp("out_proj"))?,
            n_head,
        })
    }

    /// `[b, t, d]` → `[b, heads, t, d/heads]`.
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        x.reshape((b, t, self.n_head, d / self.n_head))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn keys_values(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.heads(&self.k.forward(x)?)?,
            self.heads(&self.v.forward(x)?)?,
        ))
    }

    /// `kt`: the keys transposed to `[b, heads, d/heads, t]`.
    fn attend(&self, x: &Tensor, kt: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let q = self.heads(&self.q.forward(x)?)?;
        let scale = 1.0 / ((d / self.n_head) as f64).sqrt();
        let mut w = (q.matmul(kt)? * scale)?;
        if let Some(m) = mask {
            w = w.broadcast_add(m)?;
        }
        let w = candle_nn::ops::softmax_last_dim(&w)?;
        let y = w.matmul(v)?.transpose(1, 2)?.reshape((b, t, d))?;
        self.out.forward(&y)
    }
}

struct Mlp {
    fc1: Proj,
    fc2: Proj,
    ln: LayerNorm,
}

impl Mlp {
    fn load(d: usize, quantize: bool, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: Proj::load(d, 4 * d, true, quantize, vb.pp("fc1"))?,
            fc2: Proj::load(4 * d, d, true, quantize, vb.pp("fc2"))?,
            ln: candle_nn::layer_norm(d, 1e-5, vb.pp("final_layer_norm"))?,
        })
    }

    fn residual(&self, x: &Tensor) -> Result<Tensor> {
        x + self
            .fc2
            .forward(&self.fc1.forward(&self.ln.forward(x)?)?.gelu_erf()?)?
    }
}

struct EncoderBlock {
    attn: Attention,
    ln: LayerNorm,
    mlp: Mlp,
}

pub(crate) struct Encoder {
    conv1: Conv1d,
    conv2: Conv1d,
    positions: Tensor,
    blocks: Vec<EncoderBlock>,
    ln_post: LayerNorm,
}

impl Encoder {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let c1 = Conv1dConfig {
            padding: 1,
            ..Default::default()
        };
        let c2 = Conv1dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        let blocks = (0..cfg.encoder_layers)
            .map(|i| {
                let vb = vb.pp(format!("layers.{i}"));
                Ok(EncoderBlock {
                    attn: Attention::load(
                        d,
                        cfg.encoder_attention_heads,
                        false,
                        false,
                        vb.pp("self_attn"),
                    )?,
                    ln: candle_nn::layer_norm(d, 1e-5, vb.pp("self_attn_layer_norm"))?,
                    mlp: Mlp::load(d, false, &vb)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            conv1: candle_nn::conv1d(cfg.num_mel_bins, d, 3, c1, vb.pp("conv1"))?,
            conv2: candle_nn::conv1d(d, d, 3, c2, vb.pp("conv2"))?,
            positions: positions(cfg, &vb)?,
            blocks,
            ln_post: candle_nn::layer_norm(d, 1e-5, vb.pp("layer_norm"))?,
        })
    }

    /// `[1, n_mels, T]` → `[1, T/2, d]`.
    pub(crate) fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        let x = self.conv1.forward(mel)?.gelu_erf()?;
        let x = self.conv2.forward(&x)?.gelu_erf()?.transpose(1, 2)?;
        let t = x.dim(1)?;
        let mut x = x.broadcast_add(&self.positions.narrow(0, 0, t)?)?;
        for b in &self.blocks {
            let h = b.ln.forward(&x)?;
            let (k, v) = b.attn.keys_values(&h)?;
            x = (&x + b.attn.attend(&h, &k.t()?, &v, None)?)?;
            x = b.mlp.residual(&x)?;
        }
        self.ln_post.forward(&x)
    }
}

/// Converted checkpoints store the encoder's sinusoids; Hugging Face ones
/// may not, so they are computed as OpenAI does when absent.
fn positions(cfg: &Config, vb: &VarBuilder) -> Result<Tensor> {
    let (n, d) = (cfg.max_source_positions, cfg.d_model);
    if vb.contains_tensor("embed_positions.weight") {
        return vb.get((n, d), "embed_positions.weight");
    }
    let inc = (10000f32).ln() / (d / 2 - 1) as f32;
    let mut table = vec![0f32; n * d];
    for p in 0..n {
        for i in 0..d / 2 {
            let a = p as f32 * (-(i as f32) * inc).exp();
            table[p * d + i] = a.sin();
            table[p * d + d / 2 + i] = a.cos();
        }
    }
    Tensor::from_vec(table, (n, d), vb.device())?.to_dtype(vb.dtype())
}

struct DecoderBlock {
    attn: Attention,
    attn_ln: LayerNorm,
    cross: Attention,
    cross_ln: LayerNorm,
    mlp: Mlp,
}

pub(crate) struct Decoder {
    embeddings: Tensor,
    projection: Proj,
    positions: Tensor,
    blocks: Vec<DecoderBlock>,
    ln: LayerNorm,
}

/// Per-transcription decoder caches.
pub(crate) struct DecoderState {
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    /// (keys transposed, values) per layer.
    cross_kv: Vec<(Tensor, Tensor)>,
    pub(crate) len: usize,
}

impl Decoder {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let embeddings = vb.get((cfg.vocab_size, d), "embed_tokens.weight")?;
        let blocks = (0..cfg.decoder_layers)
            .map(|i| {
                let vb = vb.pp(format!("layers.{i}"));
                Ok(DecoderBlock {
                    attn: Attention::load(
                        d,
                        cfg.decoder_attention_heads,
                        true,
                        true,
                        vb.pp("self_attn"),
                    )?,
                    attn_ln: candle_nn::layer_norm(d, 1e-5, vb.pp("self_attn_layer_norm"))?,
                    cross: Attention::load(
                        d,
                        cfg.decoder_attention_heads,
                        true,
                        false,
                        vb.pp("encoder_attn"),
                    )?,
                    cross_ln: candle_nn::layer_norm(d, 1e-5, vb.pp("encoder_attn_layer_norm"))?,
                    mlp: Mlp::load(d, true, &vb)?,
                })
            })
            .collect::<Result<_>>()?;
        // The output projection is tied to the token embeddings.
        let projection = Proj::new(embeddings.clone(), None, true)?;
        Ok(Self {
            projection,
            embeddings,
            positions: vb.get((cfg.max_target_positions, d), "embed_positions.weight")?,
            blocks,
            ln: candle_nn::layer_norm(d, 1e-5, vb.pp("layer_norm"))?,
        })
    }

    pub(crate) fn max_len(&self) -> usize {
        self.positions.dim(0).unwrap_or(448)
    }

    /// Projects the encoder output into every layer's cross-attention keys
    /// and values, once per utterance. The keys are stored transposed and
    /// contiguous: every decoder step multiplies by them, and a strided
    /// transpose there cost half a millisecond per layer and step.
    pub(crate) fn start(&self, audio_features: &Tensor) -> Result<DecoderState> {
        let cross_kv = self
            .blocks
            .iter()
            .map(|b| {
                let (k, v) = b.cross.keys_values(audio_features)?;
                Ok((k.t()?.contiguous()?, v))
            })
            .collect::<Result<_>>()?;
        Ok(DecoderState {
            self_kv: vec![None; self.blocks.len()],
            cross_kv,
            len: 0,
        })
    }

    /// Appends `tokens` to the sequence and returns the logits that follow
    /// the last of them.
    pub(crate) fn step(&self, tokens: &[u32], state: &mut DecoderState) -> Result<Vec<f32>> {
        let t = tokens.len();

        let device = self.embeddings.device();
        let ids = Tensor::new(tokens, device)?;
        let x = self.embeddings.index_select(&ids, 0)?;
        let x = (x + self.positions.narrow(0, state.len, t)?)?.unsqueeze(0)?;
        let mask = (t > 1)
            .then(|| causal_mask(t, state.len, device, x.dtype()))
            .transpose()?;
        let mut x = x;
        for (i, b) in self.blocks.iter().enumerate() {
            let h = b.attn_ln.forward(&x)?;
            let (k, v) = b.attn.keys_values(&h)?;
            let (k, v) = match state.self_kv[i].take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            x = (&x + b.attn.attend(&h, &k.t()?, &v, mask.as_ref())?)?;
            state.self_kv[i] = Some((k, v));
            let h = b.cross_ln.forward(&x)?;
            let (ckt, cv) = &state.cross_kv[i];
            x = (&x + b.cross.attend(&h, ckt, cv, None)?)?;
            x = b.mlp.residual(&x)?;
        }
        state.len += t;
        let last = self.ln.forward(&x.narrow(1, t - 1, 1)?.squeeze(1)?)?;
        let logits = self.projection.forward(&last)?;
        logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()
    }
}

/// Queries at positions `offset..offset+t` may see keys `0..=own position`.
fn causal_mask(t: usize, offset: usize, device: &Device, dtype: DType) -> Result<Tensor> {
    let total = offset + t;
    let m: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(m, (t, total), device)?.to_dtype(dtype)
}

pub(crate) struct Model {
    pub(crate) encoder: Encoder,
    pub(crate) decoder: Decoder,
}

impl Model {
    pub(crate) fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::load(cfg, vb.pp("model.encoder"))?,
            decoder: Decoder::load(cfg, vb.pp("model.decoder"))?,
        })
    }
}

/// Index of the largest logit.
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > best.1 {
            best = (i, l);
        }
    }
    best.0 as u32
}
