//! The index plan of one packed batch: computed once per forward, shared by
//! every layer.
//!
//! Linear layers and norms run on the packed `[total_tokens, H]` matrix, so
//! they never touch padding. Attention is the only step that needs whole
//! sequences side by side: sequences are sorted by length and cut into
//! groups whose lengths are close, each group is gathered into a padded
//! `[b, l_max, ·]` block with a key mask, and the results are gathered back
//! into packed order. Padding therefore costs only inside attention, and only
//! the few percent that a group's spread of lengths adds.

use candle_core::{DType, Device, Tensor};

use ce_common::TokenBatch;

use super::push_position_ids;
use crate::error::Result;
pub use ce_model_spec::AttentionLayout;
use ce_model_spec::ModelConfig;

/// A group's padded attention may cost at most this multiple of its real
/// attention (Σ l_max² against Σ l²) before a new group starts.
const MAX_GROUP_ATTENTION_WASTE: f64 = 1.3;

/// Sequences computed together in one padded attention block.
#[derive(Debug)]
pub struct AttentionGroup {
    /// Sequences in the group.
    pub batch: usize,
    /// Length every sequence is padded to.
    pub max_len: usize,
    /// `[batch * max_len]` packed row for each padded slot (pads read row 0
    /// and are masked out as keys).
    pub gather: Tensor,
    /// `[batch, 1, 1, max_len]` additive key mask: 0 for tokens, -inf for pads.
    pub mask: Tensor,
    /// `[batch, 1, max_len, max_len]`, for sliding-window layers (ModernBERT):
    /// a token sees the tokens at most the window away; a pad slot sees its
    /// sequence's first token only, so that no row is masked whole (a row
    /// of -inf is NaN after the softmax, and a NaN pad row poisons the
    /// real rows through `0 · NaN` in the next product).
    pub window_mask: Option<Tensor>,
}

/// [`AttentionGroup::window_mask`] of sequences `lens` padded to `max_len`.
fn window_mask(
    lens: impl Iterator<Item = usize>,
    max_len: usize,
    window: usize,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let mut mask = Vec::new();
    let mut b = 0;
    for len in lens {
        b += 1;
        for q in 0..max_len {
            for k in 0..max_len {
                let seen = match q < len {
                    true => k < len && q.abs_diff(k) <= window,
                    false => k == 0,
                };
                mask.push(if seen { 0.0 } else { f32::NEG_INFINITY });
            }
        }
    }
    Ok(Tensor::from_vec(mask, (b, 1, max_len, max_len), device)?.to_dtype(dtype)?)
}

/// Everything a forward pass indexes with.
#[derive(Debug)]
pub struct BatchPlan {
    /// Token ids `[total_tokens]`.
    pub input_ids: Tensor,
    /// Token type ids `[total_tokens]`.
    pub type_ids: Tensor,
    /// Position of each token in its sequence `[total_tokens]`.
    pub position_ids: Tensor,
    /// Attention groups, longest first.
    pub groups: Vec<AttentionGroup>,
    /// `[total_tokens]`: for each packed token, its row in the groups'
    /// padded outputs concatenated.
    pub unpad: Tensor,
    /// `[pairs]`: packed row of each pair's `[CLS]` token.
    pub cls_rows: Tensor,
    /// Each pair's first packed row and token count (for mean pooling).
    pub pair_rows: Vec<(usize, usize)>,
    /// Rows of the packed matrix (pads included in the padded layout).
    pub rows: usize,
    /// Token slots computed in attention (pads included), for the padding
    /// ratio. With [`AttentionLayout::Padded`] every layer computes this many.
    pub padded_attention_tokens: usize,
}

impl BatchPlan {
    /// Builds the plan for a validated batch. `mask_dtype` is the dtype of
    /// the attention scores.
    pub fn new(
        batch: &TokenBatch,
        config: &ModelConfig,
        device: &Device,
        mask_dtype: DType,
        layout: AttentionLayout,
    ) -> Result<Self> {
        if layout == AttentionLayout::Padded {
            return Self::padded(batch, config, device, mask_dtype);
        }
        let n = batch.len();
        let total = batch.total_tokens();
        let mut position_ids = Vec::with_capacity(total);
        for i in 0..n {
            push_position_ids(config, batch.ids(i), &mut position_ids);
        }

        let mut order: Vec<usize> = (0..n).collect();
        if layout == AttentionLayout::Grouped {
            order.sort_by_key(|&i| std::cmp::Reverse(batch.seq_len(i)));
        }
        let longest = (0..n).map(|i| batch.seq_len(i)).max().unwrap_or(0);

        let mut groups = Vec::new();
        let mut unpad = vec![0u32; total];
        let mut padded_rows = 0usize;
        let mut start = 0;
        while start < n {
            let max_len = match layout {
                AttentionLayout::Grouped => batch.seq_len(order[start]),
                AttentionLayout::Single | AttentionLayout::Padded => longest,
            };
            let (mut padded, mut real) = (0f64, 0f64);
            let mut end = start;
            while end < n {
                let l = batch.seq_len(order[end]) as f64;
                let (p, r) = (padded + (max_len * max_len) as f64, real + l * l);
                if layout == AttentionLayout::Grouped
                    && end > start
                    && p > MAX_GROUP_ATTENTION_WASTE * r
                {
                    break;
                }
                (padded, real) = (p, r);
                end += 1;
            }
            let members = &order[start..end];
            let b = members.len();
            let mut gather = vec![0u32; b * max_len];
            let mut mask = vec![f32::NEG_INFINITY; b * max_len];
            for (slot, &seq) in members.iter().enumerate() {
                let range = batch.range(seq);
                for (pos, row) in range.enumerate() {
                    let padded_slot = slot * max_len + pos;
                    gather[padded_slot] = row as u32;
                    mask[padded_slot] = 0.0;
                    unpad[row] = (padded_rows + padded_slot) as u32;
                }
            }
            let window = config.modern.as_ref().map(|m| m.local_window);
            let lens = members.iter().map(|&seq| batch.seq_len(seq));
            groups.push(AttentionGroup {
                batch: b,
                max_len,
                gather: Tensor::from_vec(gather, b * max_len, device)?,
                mask: Tensor::from_vec(mask, (b, 1, 1, max_len), device)?.to_dtype(mask_dtype)?,
                window_mask: window
                    .map(|w| window_mask(lens, max_len, w, device, mask_dtype))
                    .transpose()?,
            });
            padded_rows += b * max_len;
            start = end;
        }

        let cls_rows: Vec<u32> = batch.offsets[..n].to_vec();
        Ok(Self {
            input_ids: Tensor::from_slice(&batch.input_ids, total, device)?,
            type_ids: Tensor::from_slice(&batch.type_ids, total, device)?,
            position_ids: Tensor::from_vec(position_ids, total, device)?,
            groups,
            unpad: Tensor::from_vec(unpad, total, device)?,
            cls_rows: Tensor::from_vec(cls_rows, n, device)?,
            pair_rows: (0..n)
                .map(|i| (batch.range(i).start, batch.seq_len(i)))
                .collect(),
            rows: total,
            padded_attention_tokens: padded_rows,
        })
    }

    /// `[pairs, rows]` f32: row `i` averages pair `i`'s tokens (and only
    /// them), so `mean_rows · hidden` is each pair's mean vector.
    pub fn mean_rows(&self) -> Result<Tensor> {
        let mut weights = vec![0f32; self.pair_rows.len() * self.rows];
        for (i, &(start, len)) in self.pair_rows.iter().enumerate() {
            let row = &mut weights[i * self.rows..(i + 1) * self.rows];
            row[start..start + len].fill(1.0 / len.max(1) as f32);
        }
        let device = self.input_ids.device();
        Ok(Tensor::from_vec(
            weights,
            (self.pair_rows.len(), self.rows),
            device,
        )?)
    }

    /// The fully padded plan: the "packed" rows are the padded slots
    /// themselves (pad id 0, type 0), so every layer computes pads; one
    /// attention block whose gather and unpad are the identity.
    fn padded(
        batch: &TokenBatch,
        config: &ModelConfig,
        device: &Device,
        mask_dtype: DType,
    ) -> Result<Self> {
        let n = batch.len();
        let longest = batch.max_seq_len();
        let slots = n * longest;
        let mut input_ids = vec![0u32; slots];
        let mut type_ids = vec![0u32; slots];
        let mut position_ids = Vec::with_capacity(slots);
        let mut mask = vec![f32::NEG_INFINITY; slots];
        for i in 0..n {
            let len = batch.seq_len(i);
            let row = i * longest;
            input_ids[row..row + len].copy_from_slice(batch.ids(i));
            type_ids[row..row + len].copy_from_slice(batch.types(i));
            mask[row..row + len].fill(0.0);
            push_position_ids(config, batch.ids(i), &mut position_ids);
            // A pad's position is never read by a real token (pads are
            // masked keys); RoBERTa's own pads sit at `padding_idx`.
            let pad_position = config.padding_idx.unwrap_or(0);
            position_ids.extend(std::iter::repeat_n(pad_position, longest - len));
        }
        let identity = || Tensor::arange(0u32, slots as u32, device);
        Ok(Self {
            input_ids: Tensor::from_vec(input_ids, slots, device)?,
            type_ids: Tensor::from_vec(type_ids, slots, device)?,
            position_ids: Tensor::from_vec(position_ids, slots, device)?,
            groups: vec![AttentionGroup {
                batch: n,
                max_len: longest,
                gather: identity()?,
                mask: Tensor::from_vec(mask, (n, 1, 1, longest), device)?.to_dtype(mask_dtype)?,
                window_mask: config
                    .modern
                    .as_ref()
                    .map(|m| {
                        let lens = (0..n).map(|i| batch.seq_len(i));
                        window_mask(lens, longest, m.local_window, device, mask_dtype)
                    })
                    .transpose()?,
            }],
            unpad: identity()?,
            cls_rows: Tensor::arange_step(0u32, slots as u32, longest.max(1) as u32, device)?,
            pair_rows: (0..n).map(|i| (i * longest, batch.seq_len(i))).collect(),
            rows: slots,
            padded_attention_tokens: slots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_similar_lengths_and_maps_every_token_back() {
        let mut b = TokenBatch::default();
        for len in [10usize, 100, 98, 11, 50, 12] {
            let ids: Vec<u32> = (0..len as u32).collect();
            b.push(&ids, &vec![0; len]);
        }
        let config = ModelConfig::from_json(
            r#"{"model_type":"bert","vocab_size":200,"hidden_size":32,"num_hidden_layers":1,
            "num_attention_heads":2,"intermediate_size":64}"#,
        )
        .unwrap();
        let plan = BatchPlan::new(
            &b,
            &config,
            &Device::Cpu,
            DType::F32,
            AttentionLayout::Grouped,
        )
        .unwrap();
        let sizes: Vec<(usize, usize)> = plan.groups.iter().map(|g| (g.batch, g.max_len)).collect();
        assert_eq!(sizes, vec![(2, 100), (1, 50), (3, 12)]);
        assert_eq!(plan.padded_attention_tokens, 200 + 50 + 36);

        // Gathering the packed ids through the groups and back through
        // `unpad` must give the packed ids again.
        let ids = Tensor::from_slice(&b.input_ids, b.total_tokens(), &Device::Cpu).unwrap();
        let padded: Vec<Tensor> = plan
            .groups
            .iter()
            .map(|g| ids.index_select(&g.gather, 0).unwrap())
            .collect();
        let padded = Tensor::cat(&padded, 0).unwrap();
        let back: Vec<u32> = padded
            .index_select(&plan.unpad, 0)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(back, b.input_ids);
        let cls: Vec<u32> = plan.cls_rows.to_vec1().unwrap();
        assert_eq!(cls, vec![0, 10, 110, 208, 219, 269]);
        let pos: Vec<u32> = plan.position_ids.to_vec1().unwrap();
        assert_eq!(&pos[8..12], &[8, 9, 0, 1]);
    }
}
