//! The MemSink MLP (SwiGLU with a per-token hidden mask) and the modes the toolkit runs it in.

use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::layout::SeqLayout;
use crate::mask::SinkPool;

/// How the MLP's sink neurons are used. One enum for the whole toolkit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub enum MlpMode {
    /// Training: general neurons on, sinks chosen by each token's sequence ID, no rescaling.
    #[default]
    Train,
    /// Every sink on at its expected activity: sinks × `p_mem`, general × 1. Sinks of the
    /// `exclude`d sequence IDs are forced off.
    All {
        /// Sequence IDs whose sink subsets are switched off.
        exclude: Vec<i64>,
    },
    /// Sinks × 0. With `rescale`, general × `(p_gen + p_mem) / p_gen` (the reference rescales);
    /// otherwise general × 1.
    DropSinks {
        /// Scale the general neurons up to keep the expected hidden activity.
        rescale: bool,
    },
    /// Each token uses its own sequence's training mask, minus the sinks of `exclude`d IDs.
    ActivateSeq {
        /// Sequence IDs whose sink subsets are switched off.
        exclude: Vec<i64>,
    },
}

impl MlpMode {
    /// Parses the CLI spelling: `train`, `all`, `drop-sinks`, `drop-sinks-plain`, `activate-seq`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "train" => MlpMode::Train,
            "all" => MlpMode::All { exclude: vec![] },
            "drop-sinks" => MlpMode::DropSinks { rescale: true },
            "drop-sinks-plain" => MlpMode::DropSinks { rescale: false },
            "activate-seq" => MlpMode::ActivateSeq { exclude: vec![] },
            _ => return None,
        })
    }

    /// Every mode by CLI spelling (no exclusions).
    pub const ALL: &'static [MlpMode] = &[
        MlpMode::Train,
        MlpMode::All { exclude: Vec::new() },
        MlpMode::DropSinks { rescale: true },
        MlpMode::DropSinks { rescale: false },
        MlpMode::ActivateSeq { exclude: Vec::new() },
    ];

    /// The CLI spelling (inverse of [`MlpMode::parse`], ignoring exclusions).
    pub fn name(&self) -> &'static str {
        match self {
            MlpMode::Train => "train",
            MlpMode::All { .. } => "all",
            MlpMode::DropSinks { rescale: true } => "drop-sinks",
            MlpMode::DropSinks { rescale: false } => "drop-sinks-plain",
            MlpMode::ActivateSeq { .. } => "activate-seq",
        }
    }
}

impl crate::named::Named for MlpMode {
    const WHAT: &'static str = "MLP mode";

    fn name(&self) -> &'static str {
        MlpMode::name(self)
    }

    fn from_name(name: &str) -> Option<Self> {
        MlpMode::parse(name)
    }
}

#[cfg(feature = "clap")]
impl clap::ValueEnum for MlpMode {
    fn value_variants<'a>() -> &'a [Self] {
        Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// Host time spent building hidden masks since the process started (all threads): the speed
/// benchmark reports it as a share of step time.
pub fn mask_build_time() -> Duration {
    Duration::from_nanos(MASK_BUILD_NANOS.load(Ordering::Relaxed))
}

static MASK_BUILD_NANOS: AtomicU64 = AtomicU64::new(0);

/// Per-token multipliers of the hidden units, broadcast against `[batch, seq, hidden]`.
#[derive(Clone, Debug)]
pub struct HiddenMask<B: Backend> {
    /// Multiplier of each hidden unit: `[batch, seq, hidden]` per token, or `[1, 1, hidden]` when constant.
    pub scale: Tensor<B, 3>,
    /// Gradient gate for gradient masking: where 0, the unit passes its value forward but no
    /// gradient reaches its weights (see [`MemSinkMlp::forward`]). Same shapes as `scale`.
    pub grad_gate: Option<Tensor<B, 3>>,
}

/// The sink-pool geometry of one MLP, shared by all layers.
#[derive(Clone, Debug)]
pub struct SinkLayout {
    /// Hidden units that are always on (the first ones).
    pub num_general: usize,
    /// The sink pool (the remaining units).
    pub pool: SinkPool,
    /// Share of general units.
    pub p_gen: f64,
    /// Probability that a sink is active for a sequence.
    pub p_mem: f64,
}

/// The factor dropping the sinks scales the general neurons by, `(p_gen + p_mem) / p_gen`, so
/// that the expected hidden activity matches training (the reference's rescale); 1 when there are
/// no sinks. The one definition: the drop-sinks mode, folding and exports use it.
pub fn drop_scale(p_gen: f64, p_mem: f64, num_sink: usize) -> f64 {
    if num_sink == 0 {
        1.0
    } else {
        (p_gen + p_mem) / p_gen
    }
}

impl SinkLayout {
    /// The general neurons' factor when the sinks are dropped with rescaling ([`drop_scale`]).
    pub fn drop_scale(&self) -> f64 {
        drop_scale(self.p_gen, self.p_mem, self.pool.len())
    }

    /// Total hidden width.
    pub fn hidden(&self) -> usize {
        self.num_general + self.pool.len()
    }

    /// The mask for `mode` in `layer`, or `None` when no unit is scaled (a model without sinks).
    pub fn hidden_mask<B: Backend>(
        &self,
        mode: &MlpMode,
        layout: &SeqLayout,
        layer: usize,
        device: &B::Device,
    ) -> Option<HiddenMask<B>> {
        if self.pool.is_empty() {
            return None;
        }
        let started = Instant::now();
        let mask = self.build_hidden_mask(mode, layout, layer, device);
        MASK_BUILD_NANOS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Some(mask)
    }

    fn build_hidden_mask<B: Backend>(
        &self,
        mode: &MlpMode,
        layout: &SeqLayout,
        layer: usize,
        device: &B::Device,
    ) -> HiddenMask<B> {
        let grad_gate = layout.route_to_sinks.as_ref().map(|flags| self.grad_gate(layout, flags, device));
        let scale = match mode {
            MlpMode::Train => self.per_sequence_scale(layout, &[], layer, device),
            MlpMode::ActivateSeq { exclude } => self.per_sequence_scale(layout, exclude, layer, device),
            MlpMode::All { exclude } => {
                let excluded = self.excluded(exclude, layer);
                let sinks = excluded.iter().map(|&off| if off { 0.0 } else { self.p_mem as f32 });
                self.constant_scale(1.0, sinks, device)
            }
            MlpMode::DropSinks { rescale } => {
                let general = if *rescale { self.drop_scale() as f32 } else { 1.0 };
                self.constant_scale(general, std::iter::repeat_n(0.0, self.pool.len()), device)
            }
        };
        HiddenMask { scale, grad_gate }
    }

    fn constant_scale<B: Backend>(
        &self,
        general: f32,
        sinks: impl Iterator<Item = f32>,
        device: &B::Device,
    ) -> Tensor<B, 3> {
        let row: Vec<f32> = std::iter::repeat_n(general, self.num_general).chain(sinks).collect();
        Tensor::from_data(TensorData::new(row, [1, 1, self.hidden()]), device)
    }

    /// Union of the sink subsets of `ids` (true = forced off).
    fn excluded(&self, ids: &[i64], layer: usize) -> Vec<bool> {
        let mut off = vec![false; self.pool.len()];
        for &id in ids {
            for (o, &on) in off.iter_mut().zip(self.pool.mask_cached(id, layer).iter()) {
                *o |= on;
            }
        }
        off
    }

    /// One mask row per distinct sequence ID, gathered per token.
    fn per_sequence_scale<B: Backend>(
        &self,
        layout: &SeqLayout,
        exclude: &[i64],
        layer: usize,
        device: &B::Device,
    ) -> Tensor<B, 3> {
        let excluded = self.excluded(exclude, layer);
        let (distinct, index) = layout.distinct_ids();
        let hidden = self.hidden();
        let mut table = Vec::with_capacity(distinct.len() * hidden);
        for &id in &distinct {
            let mask = self.pool.mask_cached(id, layer);
            table.extend(std::iter::repeat_n(1.0f32, self.num_general));
            table.extend(mask.iter().zip(&excluded).map(|(&on, &off)| if on && !off { 1.0f32 } else { 0.0 }));
        }
        gather_rows(table, hidden, distinct.len(), &index, layout, device)
    }

    fn grad_gate<B: Backend>(&self, layout: &SeqLayout, flags: &[bool], device: &B::Device) -> Tensor<B, 3> {
        let hidden = self.hidden();
        let row = |to_sinks: bool| {
            let general = if to_sinks { 0.0f32 } else { 1.0 };
            std::iter::repeat_n(general, self.num_general).chain(std::iter::repeat_n(1.0, self.pool.len()))
        };
        let table: Vec<f32> = row(false).chain(row(true)).collect();
        let index: Vec<usize> = flags.iter().map(|&f| f as usize).collect();
        gather_rows(table, hidden, 2, &index, layout, device)
    }
}

/// Expands a `[rows, hidden]` host table into a `[batch, seq, hidden]` tensor by a per-token row
/// index (a device-side gather). The mask is materialised per token rather than broadcast from
/// `[batch, 1, hidden]` even when rows are uniform: burn-flex multiplies contiguous operands of
/// equal shape faster than broadcast ones (measured: 4 % of a `ts-cpu` training step).
fn gather_rows<B: Backend>(
    table: Vec<f32>,
    hidden: usize,
    rows: usize,
    index: &[usize],
    layout: &SeqLayout,
    device: &B::Device,
) -> Tensor<B, 3> {
    let picks: Vec<i64> = index.iter().map(|&i| i as i64).collect();
    let table = Tensor::<B, 2>::from_data(TensorData::new(table, [rows, hidden]), device);
    let picks = Tensor::from_data(TensorData::new(picks, [index.len()]), device);
    table.select(0, picks).reshape([layout.batch, layout.seq_len, hidden])
}

/// A bias-free linear layer with N(0, `std`) weights: every projection of the model.
pub fn normal_linear<B: Backend>(d_in: usize, d_out: usize, std: f64, device: &B::Device) -> Linear<B> {
    LinearConfig::new(d_in, d_out)
        .with_bias(false)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device)
}

/// SwiGLU MLP: `down_proj(silu(gate_proj x) * up_proj x * mask)`; hidden unit `j < num_general` is general,
/// the rest form the sink pool.
#[derive(Module, Debug)]
pub struct MemSinkMlp<B: Backend> {
    /// Gate projection (`gate_proj` in Llama checkpoints).
    pub gate_proj: Linear<B>,
    /// Up projection (`up_proj`).
    pub up_proj: Linear<B>,
    /// Down projection (`down_proj`).
    pub down_proj: Linear<B>,
}

impl<B: Backend> MemSinkMlp<B> {
    /// A new MLP with normal(0, `std`) weights; `proj_std` for the residual projection.
    pub fn new(d_model: usize, d_hidden: usize, std: f64, proj_std: f64, device: &B::Device) -> Self {
        Self {
            gate_proj: normal_linear(d_model, d_hidden, std, device),
            up_proj: normal_linear(d_model, d_hidden, std, device),
            down_proj: normal_linear(d_hidden, d_model, proj_std, device),
        }
    }

    /// Applies the MLP to `[batch, seq, d_model]` with an optional hidden mask.
    ///
    /// With a gradient gate (gradient masking), gated-off units pass their value forward but
    /// neither their input weights (`gate_proj`/`up_proj` columns) nor their output weights (`down_proj` rows)
    /// receive gradient from those tokens: `down_proj(h·g) + (detach(h)·(1-g)) @ detach(W_down)`.
    pub fn forward(&self, x: Tensor<B, 3>, mask: Option<&HiddenMask<B>>) -> Tensor<B, 3> {
        self.forward_hooked(x, mask, |h| h)
    }

    /// [`MemSinkMlp::forward`] with `hook` applied to the hidden activations `[batch, seq, hidden]`
    /// after the mask and before the down projection (neuron localization reads and scales them).
    pub fn forward_hooked(
        &self,
        x: Tensor<B, 3>,
        mask: Option<&HiddenMask<B>>,
        hook: impl FnOnce(Tensor<B, 3>) -> Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let h = silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x);
        let Some(mask) = mask else { return self.down_proj.forward(hook(h)) };
        let h = hook(h * mask.scale.clone());
        match &mask.grad_gate {
            None => self.down_proj.forward(h),
            Some(gate) => {
                let blocked = h.clone().detach() * (gate.clone().neg() + 1.0);
                let frozen = self.down_proj.weight.val().detach().unsqueeze::<3>();
                self.down_proj.forward(h * gate.clone()) + blocked.matmul(frozen)
            }
        }
    }
}
