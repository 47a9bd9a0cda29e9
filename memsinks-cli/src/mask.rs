//! `memsinks mask`: print which sink neurons each sequence ID owns.

use anyhow::{bail, Context, Result};
use clap::Args;
use memsinks_model::{MaskScheme, SinkPool};

/// Print sink masks, one line per sequence ID: neuron `j` is character `j` (`1` = active).
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  memsinks mask --seq-ids 1-200 --sink-neurons 2458 --p-mem 0.3\n  memsinks mask --seq-ids 1,7,42 --sink-neurons 32 --scheme mixed-salted --layer 3"
)]
pub struct MaskArgs {
    /// IDs as a list of numbers and inclusive ranges: `1-200`, `1,7,42`, `5,10-12`.
    #[arg(long)]
    pub seq_ids: String,
    /// Size of the sink pool (`I - floor(I * p_gen)`).
    #[arg(long)]
    pub sink_neurons: usize,
    /// Probability that a sink neuron is active for a sequence.
    #[arg(long, default_value_t = memsinks_model::config::DEFAULT_P_MEM)]
    pub p_mem: f64,
    /// Mask scheme: `reference` is bit-exact with the paper's code.
    #[arg(long, value_enum, default_value = "reference")]
    pub scheme: MaskScheme,
    /// Layer (matters only for `mixed-salted`).
    #[arg(long, default_value_t = 0)]
    pub layer: usize,
    /// Prefix each line with the ID and the number of active neurons.
    #[arg(long)]
    pub verbose: bool,
}

/// The most IDs one call prints (one line each).
const MAX_IDS: u64 = 10_000_000;
/// The widest sink pool accepted: far beyond any MLP (a line is one character per neuron).
const MAX_SINK_NEURONS: usize = 1 << 24;

/// Parses `1-200`, `1,7,42`, `5,10-12` (negative IDs are allowed as single numbers).
pub fn parse_id_list(spec: &str) -> Result<Vec<i64>> {
    let mut ids = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let range = part.char_indices().skip(1).find(|&(_, c)| c == '-').map(|(i, _)| i);
        match range {
            Some(i) => {
                let (lo, hi) = (&part[..i], &part[i + 1..]);
                let lo: i64 = lo.parse().with_context(|| format!("bad range start `{lo}` in `{part}`"))?;
                let hi: i64 = hi.parse().with_context(|| format!("bad range end `{hi}` in `{part}`"))?;
                if hi < lo {
                    bail!("empty range `{part}`: the end is below the start");
                }
                let count = (hi as i128 - lo as i128 + 1) as u128;
                if count + ids.len() as u128 > MAX_IDS as u128 {
                    bail!("`{spec}` names more than {MAX_IDS} IDs: print fewer at a time");
                }
                ids.extend(lo..=hi);
            }
            None => ids.push(part.parse().with_context(|| format!("bad sequence ID `{part}`"))?),
        }
    }
    if ids.is_empty() {
        bail!("no sequence IDs in `{spec}`");
    }
    Ok(ids)
}

/// Runs the subcommand, writing to `out`.
pub fn run(args: &MaskArgs, out: &mut impl std::io::Write) -> Result<()> {
    let scheme = args.scheme;
    if args.sink_neurons == 0 || args.sink_neurons > MAX_SINK_NEURONS {
        bail!("--sink-neurons {} must be in 1..={MAX_SINK_NEURONS}", args.sink_neurons);
    }
    if !(0.0..=1.0).contains(&args.p_mem) {
        bail!("--p-mem {} must be in [0, 1]", args.p_mem);
    }
    let pool = SinkPool::new(scheme, args.sink_neurons, args.p_mem);
    for id in parse_id_list(&args.seq_ids)? {
        let mask = pool.mask_string(id, args.layer);
        if args.verbose {
            writeln!(out, "{id}\t{}\t{mask}", mask.bytes().filter(|&b| b == b'1').count())?;
        } else {
            writeln!(out, "{mask}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_lists() {
        assert_eq!(parse_id_list("1-3,7").unwrap(), vec![1, 2, 3, 7]);
        assert_eq!(parse_id_list("-5").unwrap(), vec![-5]);
        assert!(parse_id_list("3-1").is_err());
        assert!(parse_id_list("x").is_err());
        assert!(parse_id_list("").is_err());
        assert!(parse_id_list("1-100000000000").unwrap_err().to_string().contains("more than"));
    }

    #[test]
    fn prints_reference_masks() {
        let args = MaskArgs {
            seq_ids: "1,42".into(),
            sink_neurons: 32,
            p_mem: 0.3,
            scheme: MaskScheme::Reference,
            layer: 0,
            verbose: false,
        };
        let mut out = Vec::new();
        run(&args, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10000000010001010110100001100011\n10101110000010010000100100001010\n"
        );
    }
}
