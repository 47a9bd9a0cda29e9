//! Model configuration, named presets and the parameter count.

use burn::config::Config;

use crate::mask::{MaskScheme, SinkPool};
use crate::ModelError;

/// The paper's share of general neurons (`p_gen`): the default everywhere it is configured.
pub const DEFAULT_P_GEN: f64 = 0.7;
/// The paper's sink activity per sequence (`p_mem`): the default everywhere it is configured.
pub const DEFAULT_P_MEM: f64 = 0.3;

/// Configuration of a Llama-style decoder whose MLPs carry a MemSink pool.
///
/// `p_gen = 1` gives a standard model with no sinks.
#[derive(Config, Debug, PartialEq)]
pub struct ModelConfig {
    /// Vocabulary size (embedding rows and LM-head outputs).
    pub vocab_size: usize,
    /// Residual stream width.
    pub d_model: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention); must divide `n_heads`.
    pub n_kv_heads: usize,
    /// MLP hidden size `I` (general + sink neurons).
    pub d_hidden: usize,
    /// Longest sequence the RoPE tables cover.
    pub max_seq_len: usize,
    /// RoPE base.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// Share of hidden neurons that are general (always on): the first `floor(I * p_gen)`.
    #[config(default = "DEFAULT_P_GEN")]
    pub p_gen: f64,
    /// Probability that a sink neuron is active for a given sequence.
    #[config(default = "DEFAULT_P_MEM")]
    pub p_mem: f64,
    /// How a sequence ID selects its sinks.
    #[config(default = "MaskScheme::Reference")]
    pub mask_scheme: MaskScheme,
    /// Use the token embedding as the LM head (SmolLM2 does; the paper's models do not).
    #[config(default = false)]
    pub tie_embeddings: bool,
    /// Standard deviation of the normal weight initialisation.
    #[config(default = 0.02)]
    pub init_std: f64,
    /// A batch whose active hidden units (general, plus the sinks some token uses) are fewer
    /// than this share of `d_hidden` computes its MLPs with those units alone: sparse pools
    /// (NULLs' `p_gen` 0.061, `p_mem` 0.013) then cost a fraction of the dense MLP. 0 turns it
    /// off. With the paper's `p_gen = 0.7` no batch qualifies.
    #[config(default = 0.5)]
    pub compact_below: f64,
}

/// Names of the built-in presets, in the order `memsinks` lists them.
pub const PRESET_NAMES: [&str; 5] = ["tiny", "ts-cpu", "ts-paper", "smollm2-360m", "smollm2-1.7b"];

impl ModelConfig {
    /// A named preset (see [`PRESET_NAMES`]).
    pub fn preset(name: &str) -> Result<Self, ModelError> {
        let cfg = match name {
            // Small enough for unit tests; GQA on so the grouped path is exercised everywhere.
            "tiny" => ModelConfig::new(64, 32, 2, 4, 2, 64, 64),
            "ts-cpu" => ModelConfig::new(4096, 256, 4, 4, 4, 1024, 256),
            // GPT-2-medium-like: 24 layers, d 1024, 16 heads, GPT-2's 50,257-token vocabulary and an
            // untied head; I = 1904 puts the count at 344.0M (GPT-2 medium: 345M with tied embeddings).
            "ts-paper" => ModelConfig::new(50_257, 1024, 24, 16, 16, 1904, 512),
            "smollm2-360m" => {
                ModelConfig::new(49_152, 960, 32, 15, 5, 2560, 2048).with_rope_theta(1e5).with_tie_embeddings(true)
            }
            "smollm2-1.7b" => {
                ModelConfig::new(49_152, 2048, 24, 32, 32, 8192, 2048).with_rope_theta(1.3e5).with_tie_embeddings(true)
            }
            other => return Err(ModelError::UnknownPreset(other.to_string())),
        };
        Ok(cfg)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Number of general (always-on) hidden neurons: `floor(I * p_gen)`.
    pub fn num_general(&self) -> usize {
        ((self.d_hidden as f64) * self.p_gen).floor() as usize
    }

    /// Number of sink neurons.
    pub fn num_sink(&self) -> usize {
        self.d_hidden - self.num_general()
    }

    /// The general neurons' factor when the sinks are dropped with `scale`.
    pub fn drop_factor(&self, scale: crate::DropScale) -> f64 {
        scale.factor(self.p_gen, self.p_mem, self.num_sink())
    }

    /// The sink pool the masks are drawn from.
    pub fn sink_pool(&self) -> SinkPool {
        SinkPool::new(self.mask_scheme, self.num_sink(), self.p_mem)
    }

    /// Checks the shape constraints; every constructor path calls it.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |msg: String| Err(ModelError::Invalid(msg));
        if self.vocab_size == 0 || self.d_model == 0 || self.n_layers == 0 || self.d_hidden == 0 {
            return bad("vocab_size, d_model, n_layers and d_hidden must be positive".into());
        }
        if self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return bad(format!("d_model {} is not divisible by n_heads {}", self.d_model, self.n_heads));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!("head_dim {} must be even for RoPE", self.head_dim()));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!("n_kv_heads {} must divide n_heads {}", self.n_kv_heads, self.n_heads));
        }
        if !(self.p_gen > 0.0 && self.p_gen <= 1.0) {
            return bad(format!("p_gen {} must be in (0, 1]", self.p_gen));
        }
        if self.num_general() == 0 {
            return bad(format!(
                "p_gen {} of d_hidden {} leaves no general neuron (floor(d_hidden * p_gen) = 0): the model \
                 would have no MLP once its sinks are dropped; raise p_gen or d_hidden",
                self.p_gen, self.d_hidden
            ));
        }
        if self.p_gen < 1.0 && self.num_sink() == 0 {
            return bad(format!(
                "p_gen {} of d_hidden {} leaves no sink neuron: use p_gen 1 for a model without sinks, or a \
                 smaller p_gen",
                self.p_gen, self.d_hidden
            ));
        }
        if !(0.0..=1.0).contains(&self.p_mem) {
            return bad(format!("p_mem {} must be in [0, 1]", self.p_mem));
        }
        if !(0.0..=1.0).contains(&self.compact_below) {
            return bad(format!("compact_below {} must be in [0, 1]", self.compact_below));
        }
        if self.max_seq_len == 0 {
            return bad("max_seq_len must be positive".into());
        }
        Ok(())
    }

    /// Parameter count computed from the configuration alone (nothing is allocated).
    pub fn num_params(&self) -> usize {
        let d = self.d_model;
        let hd = self.head_dim();
        let attention = d * (self.n_heads * hd) * 2 + d * (self.n_kv_heads * hd) * 2;
        let mlp = 3 * d * self.d_hidden;
        let norms = 2 * d;
        let embedding = self.vocab_size * d;
        let head = if self.tie_embeddings { 0 } else { self.vocab_size * d };
        embedding + self.n_layers * (attention + mlp + norms) + d + head
    }

    /// The configuration as RON text.
    pub fn to_ron(&self) -> String {
        ron::ser::to_string_pretty(self, ron::ser::PrettyConfig::default()).expect("config serialises")
    }

    /// Parses RON text and validates it.
    pub fn from_ron(text: &str) -> Result<Self, ModelError> {
        let cfg: Self = ron::from_str(text).map_err(|e| ModelError::Format(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An independent spelling of the Llama parameter formula, per tensor.
    fn llama_formula(v: usize, d: usize, l: usize, h: usize, kv: usize, i: usize, tied: bool) -> usize {
        let hd = d / h;
        let per_layer = d * d /* q */ + 2 * d * kv * hd /* k, v */ + d * d /* o */
            + 3 * d * i /* gate, up, down */ + 2 * d /* norms */;
        v * d + l * per_layer + d + if tied { 0 } else { v * d }
    }

    #[test]
    fn every_preset_validates_and_counts_match_the_formula() {
        for name in PRESET_NAMES {
            let c = ModelConfig::preset(name).unwrap();
            c.validate().unwrap();
            let expected = llama_formula(
                c.vocab_size,
                c.d_model,
                c.n_layers,
                c.n_heads,
                c.n_kv_heads,
                c.d_hidden,
                c.tie_embeddings,
            );
            assert_eq!(c.num_params(), expected, "{name}");
        }
    }

    #[test]
    fn preset_counts_match_the_published_models() {
        // SmolLM2's published sizes: 361.82M and 1.711B parameters.
        assert_eq!(ModelConfig::preset("smollm2-360m").unwrap().num_params(), 361_821_120);
        assert_eq!(ModelConfig::preset("smollm2-1.7b").unwrap().num_params(), 1_711_376_384);
        let paper = ModelConfig::preset("ts-paper").unwrap().num_params();
        assert!((340_000_000..348_000_000).contains(&paper), "ts-paper has {paper}");
    }

    #[test]
    fn general_and_sink_split_follows_floor() {
        let c = ModelConfig::new(10, 8, 1, 2, 2, 3511, 4);
        assert_eq!(c.num_general(), (3511.0f64 * 0.7).floor() as usize);
        assert_eq!(c.num_general() + c.num_sink(), 3511);
        assert_eq!(ModelConfig::new(10, 8, 1, 2, 2, 64, 4).with_p_gen(1.0).num_sink(), 0);
    }

    #[test]
    fn ron_round_trip_and_bad_values() {
        let c = ModelConfig::preset("smollm2-360m").unwrap();
        assert_eq!(ModelConfig::from_ron(&c.to_ron()).unwrap(), c);
        let bad = ModelConfig::new(10, 30, 1, 4, 4, 8, 4).to_ron();
        let err = ModelConfig::from_ron(&bad).unwrap_err().to_string();
        assert!(err.contains("n_heads"), "{err}");
        assert!(ModelConfig::from_ron("(vocab_size: 3").is_err());
        // floor(64 * 0.01) = 0 general neurons; floor(1 * 0.7) = 0 too.
        let err = ModelConfig::new(10, 8, 1, 2, 2, 64, 4).with_p_gen(0.01).validate().unwrap_err().to_string();
        assert!(err.contains("no general neuron"), "{err}");
        assert!(ModelConfig::new(10, 8, 1, 2, 2, 1, 4).validate().is_err());
        ModelConfig::new(10, 8, 1, 2, 2, 2, 4).validate().unwrap();
        assert!(ModelConfig::preset("nope").unwrap_err().to_string().contains("ts-cpu"));
    }
}
