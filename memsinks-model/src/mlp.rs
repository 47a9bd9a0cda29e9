//! The MemSink MLP (SwiGLU with a per-token hidden mask) and the modes the toolkit runs it in.

use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::kernels::{swiglu, Kernels};
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
    /// Sinks × 0, general units × the factor of `scale` ([`DropScale::factor`]).
    DropSinks {
        /// How the general units are scaled once the sinks are gone.
        scale: DropScale,
    },
    /// Each token uses its own sequence's training mask, minus the sinks of `exclude`d IDs.
    ActivateSeq {
        /// Sequence IDs whose sink subsets are switched off.
        exclude: Vec<i64>,
    },
}

impl MlpMode {
    /// Parses the CLI spelling: `train`, `all`, `drop-sinks`, `drop-sinks-plain`,
    /// `drop-sinks-matched`, `activate-seq`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "train" => MlpMode::Train,
            "all" => MlpMode::All { exclude: vec![] },
            "drop-sinks" => MlpMode::DropSinks { scale: DropScale::Reference },
            "drop-sinks-plain" => MlpMode::DropSinks { scale: DropScale::Plain },
            "drop-sinks-matched" => MlpMode::DropSinks { scale: DropScale::ActivityMatched },
            "activate-seq" => MlpMode::ActivateSeq { exclude: vec![] },
            _ => return None,
        })
    }

    /// Every mode by CLI spelling (no exclusions).
    pub const ALL: &'static [MlpMode] = &[
        MlpMode::Train,
        MlpMode::All { exclude: Vec::new() },
        MlpMode::DropSinks { scale: DropScale::Reference },
        MlpMode::DropSinks { scale: DropScale::Plain },
        MlpMode::DropSinks { scale: DropScale::ActivityMatched },
        MlpMode::ActivateSeq { exclude: Vec::new() },
    ];

    /// The CLI spelling (inverse of [`MlpMode::parse`], ignoring exclusions).
    pub fn name(&self) -> &'static str {
        match self {
            MlpMode::Train => "train",
            MlpMode::All { .. } => "all",
            MlpMode::DropSinks { scale: DropScale::Reference } => "drop-sinks",
            MlpMode::DropSinks { scale: DropScale::Plain } => "drop-sinks-plain",
            MlpMode::DropSinks { scale: DropScale::ActivityMatched } => "drop-sinks-matched",
            MlpMode::ActivateSeq { .. } => "activate-seq",
        }
    }
}

impl memsinks_core::named::Named for MlpMode {
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
///
/// A *compact* mask ([`SinkGeometry::compact_hidden_mask`]) keeps only the `active` units, those
/// with a non-zero multiplier for some token of the batch: with a sparse pool (NULLs' `p_mem`
/// around 0.01) most sinks are off for every token, and the MLP then computes with the active
/// columns of its weights alone.
#[derive(Clone, Debug)]
pub struct HiddenMask<B: Backend> {
    /// Multiplier of each (active) hidden unit: `[batch, seq, width]` per token, or
    /// `[1, 1, width]` when constant; `width` is the hidden size, or `active`'s length.
    pub scale: Tensor<B, 3>,
    /// Gradient gate for gradient masking: where 0, the unit passes its value forward but no
    /// gradient reaches its weights (see [`MemSinkMlp::forward`]). Same shapes as `scale`.
    pub grad_gate: Option<Tensor<B, 3>>,
    /// The hidden units `scale` covers, when not all of them (a compact mask).
    pub active: Option<Tensor<B, 1, Int>>,
}

impl<B: Backend> HiddenMask<B> {
    /// The mask in float type `dtype` (that of the activations it multiplies).
    pub fn cast(self, dtype: burn::tensor::DType) -> Self {
        Self { scale: self.scale.cast(dtype), grad_gate: self.grad_gate.map(|g| g.cast(dtype)), ..self }
    }
}

/// Multipliers of the hidden units on the host: one row per distinct case (a sequence ID, or the
/// gradient-masking flag), and each token's row, or one constant row for every token.
struct HostMask {
    table: Vec<f32>,
    rows: usize,
    index: Option<Vec<usize>>,
}

impl HostMask {
    /// Whether unit `j` is non-zero in some row.
    fn used(&self, hidden: usize) -> Vec<bool> {
        let mut used = vec![false; hidden];
        for row in self.table.chunks(hidden) {
            for (u, &v) in used.iter_mut().zip(row) {
                *u |= v != 0.0;
            }
        }
        used
    }

    /// The table keeping only the columns `keep`.
    fn columns(self, hidden: usize, keep: &[usize]) -> Self {
        let table = self.table.chunks(hidden).flat_map(|row| keep.iter().map(move |&j| row[j])).collect();
        Self { table, ..self }
    }

    fn into_device<B: Backend>(self, width: usize, layout: &SeqLayout, device: &B::Device) -> Tensor<B, 3> {
        match &self.index {
            Some(index) => gather_rows(self.table, width, self.rows, index, layout, device),
            None => Tensor::from_data(TensorData::new(self.table, [1, 1, width]), device),
        }
    }
}

/// The sink-pool geometry of one MLP, shared by all layers.
#[derive(Clone, Debug)]
pub struct SinkGeometry {
    /// Hidden units that are always on (the first ones).
    pub num_general: usize,
    /// The sink pool (the remaining units).
    pub pool: SinkPool,
    /// Share of general units.
    pub p_gen: f64,
    /// Probability that a sink is active for a sequence.
    pub p_mem: f64,
    /// A batch whose active units are fewer than this share of the hidden units computes with
    /// those units alone ([`SinkGeometry::compact_hidden_mask`]); 0 never does.
    pub compact_below: f64,
}

/// How the general neurons are scaled when the sinks are dropped. The study evaluates all three
/// and lets the dev half of the repeated documents choose the one its headline uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum DropScale {
    /// General × 1.
    Plain,
    /// General × `(p_gen + p_mem) / p_gen` (1.43 at the paper's setting): the reference code's
    /// factor, kept for fidelity. It matches no activity of training.
    #[default]
    Reference,
    /// General × `(p_gen + (1 − p_gen) · p_mem) / p_gen` (≈ 1.13 at the paper's setting): in
    /// training a share `p_gen + (1 − p_gen) · p_mem` of the hidden units is on in expectation
    /// (0.79), which the general units alone (a share `p_gen`) match at this factor.
    ActivityMatched,
}

impl DropScale {
    /// The general neurons' factor; 1 when there are no sinks (nothing was dropped). The one
    /// definition: the drop-sinks modes, folding and exports use it.
    pub fn factor(self, p_gen: f64, p_mem: f64, num_sink: usize) -> f64 {
        if num_sink == 0 {
            return 1.0;
        }
        match self {
            DropScale::Plain => 1.0,
            DropScale::Reference => (p_gen + p_mem) / p_gen,
            DropScale::ActivityMatched => (p_gen + (1.0 - p_gen) * p_mem) / p_gen,
        }
    }
}

impl SinkGeometry {
    /// The general neurons' factor when the sinks are dropped with `scale`.
    pub fn drop_factor(&self, scale: DropScale) -> f64 {
        scale.factor(self.p_gen, self.p_mem, self.pool.len())
    }

    /// Total hidden width.
    pub fn hidden(&self) -> usize {
        self.num_general + self.pool.len()
    }

    /// The mask for `mode` in `layer` over every hidden unit, or `None` when no unit is scaled (a
    /// model without sinks).
    pub fn hidden_mask<B: Backend>(
        &self,
        mode: &MlpMode,
        layout: &SeqLayout,
        layer: usize,
        device: &B::Device,
    ) -> Option<HiddenMask<B>> {
        self.timed_mask(mode, layout, layer, device, false)
    }

    /// [`SinkGeometry::hidden_mask`], compact when the batch's active units are fewer than
    /// `compact_below` of the hidden units: the mask then covers those units alone, and the MLP
    /// computes with their weights alone (the same values: every other unit is zero for every
    /// token of the batch). With the paper's `p_gen = 0.7` a mask is never compact.
    pub fn compact_hidden_mask<B: Backend>(
        &self,
        mode: &MlpMode,
        layout: &SeqLayout,
        layer: usize,
        device: &B::Device,
    ) -> Option<HiddenMask<B>> {
        self.timed_mask(mode, layout, layer, device, true)
    }

    fn timed_mask<B: Backend>(
        &self,
        mode: &MlpMode,
        layout: &SeqLayout,
        layer: usize,
        device: &B::Device,
        compact: bool,
    ) -> Option<HiddenMask<B>> {
        if self.pool.is_empty() {
            return None;
        }
        let started = Instant::now();
        let mask = self.build_hidden_mask(mode, layout, layer, device, compact);
        MASK_BUILD_NANOS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Some(mask)
    }

    fn build_hidden_mask<B: Backend>(
        &self,
        mode: &MlpMode,
        layout: &SeqLayout,
        layer: usize,
        device: &B::Device,
        compact: bool,
    ) -> HiddenMask<B> {
        let hidden = self.hidden();
        let scale = match mode {
            MlpMode::Train => self.per_sequence_scale(layout, &[], layer),
            MlpMode::ActivateSeq { exclude } => self.per_sequence_scale(layout, exclude, layer),
            MlpMode::All { exclude } => {
                let excluded = self.excluded(exclude, layer);
                let sinks = excluded.iter().map(|&off| if off { 0.0 } else { self.p_mem as f32 });
                self.constant_scale(1.0, sinks)
            }
            MlpMode::DropSinks { scale } => {
                let general = self.drop_factor(*scale) as f32;
                self.constant_scale(general, std::iter::repeat_n(0.0, self.pool.len()))
            }
        };
        let gate = layout.route_to_sinks.as_ref().map(|flags| self.grad_gate(flags));
        let keep: Option<Vec<usize>> = compact.then(|| scale.used(hidden)).and_then(|used| {
            let active: Vec<usize> = (0..hidden).filter(|&j| used[j]).collect();
            ((active.len() as f64) < self.compact_below * hidden as f64).then_some(active)
        });
        let (scale, gate, width) = match &keep {
            Some(cols) => (scale.columns(hidden, cols), gate.map(|g| g.columns(hidden, cols)), cols.len()),
            None => (scale, gate, hidden),
        };
        let active = keep.map(|cols| {
            let cols: Vec<i64> = cols.into_iter().map(|j| j as i64).collect();
            Tensor::from_data(TensorData::new(cols, [width]), device)
        });
        HiddenMask {
            scale: scale.into_device(width, layout, device),
            grad_gate: gate.map(|g| g.into_device(width, layout, device)),
            active,
        }
    }

    fn constant_scale(&self, general: f32, sinks: impl Iterator<Item = f32>) -> HostMask {
        let table: Vec<f32> = std::iter::repeat_n(general, self.num_general).chain(sinks).collect();
        HostMask { table, rows: 1, index: None }
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
    fn per_sequence_scale(&self, layout: &SeqLayout, exclude: &[i64], layer: usize) -> HostMask {
        let excluded = self.excluded(exclude, layer);
        let (distinct, index) = layout.distinct_ids();
        let mut table = Vec::with_capacity(distinct.len() * self.hidden());
        for &id in &distinct {
            let mask = self.pool.mask_cached(id, layer);
            table.extend(std::iter::repeat_n(1.0f32, self.num_general));
            table.extend(mask.iter().zip(&excluded).map(|(&on, &off)| if on && !off { 1.0f32 } else { 0.0 }));
        }
        HostMask { table, rows: distinct.len(), index: Some(index) }
    }

    fn grad_gate(&self, flags: &[bool]) -> HostMask {
        let row = |to_sinks: bool| {
            let general = if to_sinks { 0.0f32 } else { 1.0 };
            std::iter::repeat_n(general, self.num_general).chain(std::iter::repeat_n(1.0, self.pool.len()))
        };
        let table: Vec<f32> = row(false).chain(row(true)).collect();
        HostMask { table, rows: 2, index: Some(flags.iter().map(|&f| f as usize).collect()) }
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
}

impl<B: Kernels> MemSinkMlp<B> {
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
        if let Some(active) = mask.and_then(|m| m.active.clone()) {
            let mask = mask.expect("a compact mask");
            return self.forward_compact(x, mask, active, hook);
        }
        let (gate, up) = (self.gate_proj.forward(x.clone()), self.up_proj.forward(x));
        let Some(mask) = mask else { return self.down_proj.forward(hook(swiglu(gate, up, None))) };
        let h = hook(swiglu(gate, up, Some(mask.scale.clone())));
        match &mask.grad_gate {
            None => self.down_proj.forward(h),
            Some(gate) => {
                let blocked = h.clone().detach() * (gate.clone().neg() + 1.0);
                let frozen = self.down_proj.weight.val().detach().unsqueeze::<3>();
                self.down_proj.forward(h * gate.clone()) + blocked.matmul(frozen)
            }
        }
    }

    /// The forward pass over the `active` hidden units alone (a compact mask): the same values as
    /// the full pass, whose other units are zero for every token; their weights get zero
    /// gradient. `hook` sees `[batch, seq, active]`.
    fn forward_compact(
        &self,
        x: Tensor<B, 3>,
        mask: &HiddenMask<B>,
        active: Tensor<B, 1, Int>,
        hook: impl FnOnce(Tensor<B, 3>) -> Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        // burn's `Linear` keeps its weight as `[d_in, d_out]`.
        let gate = self.gate_proj.weight.val().select(1, active.clone()).unsqueeze::<3>();
        let up = self.up_proj.weight.val().select(1, active.clone()).unsqueeze::<3>();
        let down = self.down_proj.weight.val().select(0, active);
        let h = hook(swiglu(x.clone().matmul(gate), x.matmul(up), Some(mask.scale.clone())));
        match &mask.grad_gate {
            None => h.matmul(down.unsqueeze()),
            Some(g) => {
                let blocked = h.clone().detach() * (g.clone().neg() + 1.0);
                (h * g.clone()).matmul(down.clone().unsqueeze()) + blocked.matmul(down.detach().unsqueeze())
            }
        }
    }
}
