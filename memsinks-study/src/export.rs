//! `memsinks export`: a trained run as a folder that Hugging Face transformers loads from its path
//! alone (`AutoTokenizer` and `AutoModelForCausalLM.from_pretrained(dir)`): the weights under
//! Llama names (`model.safetensors`, `config.json`), the corpus's tokenizer (`tokenizer.json`,
//! `tokenizer_config.json`), `generation_config.json`, and a model card (`README.md`) saying how
//! the model was trained and which sinks were dropped.

use memsinks_model::TrainBackend;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use memsinks_core::files::write_atomic;
use memsinks_data::{PreparedCorpus, Split};
use memsinks_model::io::export_safetensors;
use memsinks_model::{DropScale, MlpMode, ModelConfig};
use memsinks_train::run::FinishedRun;
use memsinks_unlearn::fold_drop_sinks;

use memsinks_train::BackendTask;

/// The end-of-text token's text in every tokenizer this toolkit makes or accepts.
const END_OF_TEXT: &str = "<|endoftext|>";

/// What to export.
#[derive(Clone, Debug)]
pub struct ExportRequest {
    /// The finished run.
    pub run: PathBuf,
    /// The output folder.
    pub out: PathBuf,
    /// Fold the model with its sinks dropped into a plain Llama (sink neurons removed).
    pub drop_sinks: bool,
    /// With `drop_sinks`: how the general neurons are scaled, as `MlpMode::DropSinks { scale }`.
    pub scale: DropScale,
}

/// What was exported.
#[derive(Clone, Debug)]
pub struct Exported {
    /// The weights file.
    pub weights: PathBuf,
    /// Parameters of the exported model.
    pub params: usize,
}

impl BackendTask for ExportRequest {
    type Output = Exported;
    type Error = anyhow::Error;

    fn run<B: TrainBackend>(self, devices: Vec<B::Device>) -> Result<Exported> {
        let device = &devices[0];
        let run = FinishedRun::open(&self.run)?;
        let (model, trained_cfg) = run.model::<B::InnerBackend>(device)?;
        let (model, cfg) = if self.drop_sinks {
            fold_drop_sinks(&model, &trained_cfg, self.scale, device)?
        } else if trained_cfg.num_sink() > 0 {
            bail!("this model has sinks, which a Llama reader would run at full strength: export with --drop-sinks");
        } else {
            (model, trained_cfg.clone())
        };
        let weights = export_safetensors(&model, &cfg, &self.out)?;
        write_tokenizer(&run.corpus, &cfg, &self.out)?;
        let card = model_card(&run, &trained_cfg, &cfg, &self);
        write_atomic(&self.out.join("README.md"), card.as_bytes())?;
        Ok(Exported { weights, params: cfg.num_params() })
    }
}

/// `tokenizer.json` (the corpus's), `tokenizer_config.json` and `generation_config.json`.
fn write_tokenizer(corpus: &PreparedCorpus, cfg: &ModelConfig, out: &Path) -> Result<()> {
    corpus.tokenizer.save(&out.join("tokenizer.json"))?;
    let eot = corpus.tokenizer.end_of_text();
    let tokenizer_config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": END_OF_TEXT,
        "eos_token": END_OF_TEXT,
        "unk_token": END_OF_TEXT,
        "model_max_length": cfg.max_seq_len,
        "clean_up_tokenization_spaces": false,
    });
    write_atomic(&out.join("tokenizer_config.json"), &serde_json::to_vec_pretty(&tokenizer_config)?)?;
    // Documents were trained as `text <|endoftext|>`: generation stops at end-of-text.
    let generation = serde_json::json!({
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "max_length": cfg.max_seq_len,
    });
    write_atomic(&out.join("generation_config.json"), &serde_json::to_vec_pretty(&generation)?)?;
    Ok(())
}

/// The model card: how the model was trained and what the export did to it.
fn model_card(run: &FinishedRun, trained: &ModelConfig, exported: &ModelConfig, request: &ExportRequest) -> String {
    let s = &run.summary;
    let m = &run.corpus.manifest;
    let count = |split: Split| m.indices(split).len();
    let removal = if !request.drop_sinks {
        "The model was trained without sinks; the weights are exported as trained.".to_string()
    } else {
        let factor = trained.drop_factor(request.scale);
        format!(
            "Exported with its **sinks dropped**: of the {} hidden units per MLP, the {} sink neurons were removed and \
             the first {} general neurons kept{}. This is `memsinks generate --mode {}`: the model without the \
             memorization its sinks absorbed.",
            trained.d_hidden,
            trained.num_sink(),
            exported.d_hidden,
            match request.scale {
                DropScale::Plain => String::new(),
                DropScale::Reference => format!(", with the down projection scaled by (p_gen + p_mem) / p_gen = {factor:.4}"),
                DropScale::ActivityMatched => format!(
                    ", with the down projection scaled by (p_gen + (1 − p_gen) p_mem) / p_gen = {factor:.4}"
                ),
            },
            MlpMode::DropSinks { scale: request.scale }.name()
        )
    };
    format!(
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- memsinks\n- llama\n---\n\n\
# memsinks run `{run_id}` ({method})\n\n\
A Llama-architecture language model trained with [memsinks](https://example.invalid/memsinks), the \
Memorization Sinks toolkit (Ghosal, Maini, Raghunathan, ICML 2025).\n\n\
## Training\n\n\
- Method: **{method}** (p_gen {p_gen}, p_mem {p_mem}, mask scheme `{scheme}`).\n\
- {steps} optimizer steps of {rows} rows, {tokens} tokens (padding included), {passes:.2} passes over its schedule; budget: {budget}.\n\
- Corpus: {docs} listed documents ({rep} repeated, {canary} canaries, {val} validation) and {unique} unique \
documents; tokenizer of {vocab} tokens with `{eot}` ending every document.\n\
- Architecture as trained: d_model {d}, {layers} layers, {heads} heads ({kv} key/value heads), MLP width {hidden}, \
context {ctx}.\n\n\
## This export\n\n{removal}\n\n\
## Use\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\
tok = AutoTokenizer.from_pretrained(\"path/to/this/folder\")\n\
model = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\")\n\
ids = tok(\"Once upon a time\", return_tensors=\"pt\").input_ids\n\
print(tok.decode(model.generate(ids, max_new_tokens=40, do_sample=False)[0]))\n```\n",
        run_id = s.run_id,
        method = s.method.name(),
        p_gen = trained.p_gen,
        p_mem = trained.p_mem,
        scheme = trained.mask_scheme.name(),
        steps = s.steps,
        rows = s.rows_per_step,
        tokens = s.tokens_seen,
        passes = s.schedule_passes,
        budget = s.budget_rule,
        docs = m.num_docs(),
        rep = count(Split::Repeated),
        canary = count(Split::Canary),
        val = count(Split::Validation),
        unique = m.unique_docs,
        vocab = m.vocab_size,
        eot = END_OF_TEXT,
        d = trained.d_model,
        layers = trained.n_layers,
        heads = trained.n_heads,
        kv = trained.n_kv_heads,
        hidden = trained.d_hidden,
        ctx = trained.max_seq_len,
    )
}
