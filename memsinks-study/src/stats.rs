//! Means over seeds with 95 % confidence intervals, and verdicts that respect them: a claim is
//! called only when the whole interval lies on one side of its threshold.

/// Two-sided 97.5 % quantiles of Student's t for 1..=30 degrees of freedom.
const T_975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120,
    2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
];

/// A mean over seeds with the half-width of its 95 % confidence interval (Student's t with
/// `n - 1` degrees of freedom); no interval from a single seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// The mean.
    pub mean: f64,
    /// Half-width of the 95 % interval, `None` for one value.
    pub half_width: Option<f64>,
    /// Values averaged.
    pub n: usize,
    /// Values left out because they were not finite (a diverged seed): shown with the estimate,
    /// never dropped silently.
    pub non_finite: usize,
}

/// Where an estimate lies relative to a threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The whole interval is above.
    Above,
    /// The whole interval is below.
    Below,
    /// The interval contains the threshold.
    Straddles,
    /// One seed: no interval, no verdict.
    NoInterval,
}

impl Estimate {
    /// The verdict on "the mean is above `threshold`" in words: `above` or `below` only when the
    /// whole 95 % interval lies on that side; otherwise why there is no verdict. Every finding
    /// and table of the reports draws its verdict here, so that no claim rests on a mean alone.
    pub fn verdict(&self, threshold: f64, above: &str, below: &str) -> String {
        match self.side_of(threshold) {
            Side::Above => above.to_string(),
            Side::Below => below.to_string(),
            Side::Straddles => format!("inconclusive: the 95 % interval contains {threshold}"),
            Side::NoInterval => "inconclusive: one seed gives no interval".to_string(),
        }
    }

    /// The estimate of the finite values of `xs` (counting the others), `None` when there are none.
    pub fn of(xs: &[f64]) -> Option<Self> {
        let non_finite = xs.iter().filter(|x| !x.is_finite()).count();
        let xs: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        let n = xs.len();
        if n == 0 {
            return None;
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        let half_width = (n > 1).then(|| {
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let t = T_975.get(n - 2).copied().unwrap_or(1.96);
            t * (var / n as f64).sqrt()
        });
        Some(Self { mean, half_width, n, non_finite })
    }

    /// Where the interval lies relative to `threshold`.
    pub fn side_of(&self, threshold: f64) -> Side {
        match self.half_width {
            None => Side::NoInterval,
            Some(h) if self.mean - h > threshold => Side::Above,
            Some(h) if self.mean + h < threshold => Side::Below,
            Some(_) => Side::Straddles,
        }
    }

    /// `mean` or `mean ± half-width` with `digits` decimals, each multiplied by `scale`; with
    /// non-finite values left out, how many.
    pub fn format(&self, digits: usize, scale: f64) -> String {
        let value = match self.half_width {
            Some(h) => format!("{:.digits$} ± {:.digits$}", self.mean * scale, h * scale),
            None => format!("{:.digits$}", self.mean * scale),
        };
        match self.non_finite {
            0 => value,
            k => format!("{value} ({k} of {} not finite, left out)", k + self.n),
        }
    }

    /// The interval in words, `[lo, hi]`, each multiplied by `scale` (the mean alone without one).
    pub fn interval(&self, digits: usize, scale: f64) -> String {
        match self.half_width {
            Some(h) => format!("[{:.digits$}, {:.digits$}]", (self.mean - h) * scale, (self.mean + h) * scale),
            None => format!("{:.digits$} (one seed)", self.mean * scale),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_follow_student_t_and_verdicts_need_one_side() {
        let e = Estimate::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(e.mean, 2.0);
        // s = 1, n = 3: 4.303 / sqrt(3).
        assert!((e.half_width.unwrap() - 4.303 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(e.side_of(-1.0), Side::Above);
        assert_eq!(e.side_of(5.0), Side::Below);
        assert_eq!(e.side_of(2.5), Side::Straddles);
        let one = Estimate::of(&[0.7, f64::NAN]).unwrap();
        assert_eq!((one.n, one.side_of(0.5)), (1, Side::NoInterval));
        assert_eq!(one.format(1, 100.0), "70.0 (1 of 2 not finite, left out)");
        assert!(Estimate::of(&[f64::NAN]).is_none());
    }
}
