//! The `bakeoff route calibrate` results file (`routing.json` in a compare folder): the
//! complexity router's weights and threshold fitted on one part of two models' per-item eval
//! results, and how they route the other part against random routing at the same share.
//! `serve --calibration` starts from it; the report's routing section reads it.

use serde::{Deserialize, Serialize};

use crate::header::ResultsHeader;

/// Bumped on any change that an old reader would misread.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterCalibration {
    #[serde(flatten)]
    pub header: ResultsHeader,
    pub created_unix: u64,
    /// The per-item results calibrated on (an eval results file or a per-item list), as given.
    pub source: String,
    /// The fast and strong models: labels in the eval results, or keys of the per-item format.
    pub fast: String,
    pub strong: String,
    /// Share of the items held out of the fit and the threshold choice.
    pub holdout: f64,
    /// The share of requests asked to go to the strong model.
    pub target_share: f64,
    /// Whether `weights` were fitted on these items (else they are the ones in force before).
    pub fitted: bool,
    pub weights: ComplexityWeights,
    pub calibration: Calibration,
    pub held_out: Option<HeldOut>,
}

/// The complexity score is `σ(bias + Σ weightᵢ·featureᵢ)`, each feature in [0, 1] (serve's
/// `complexity` module computes them from the request).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplexityWeights {
    pub bias: f32,
    pub length: f32,
    pub code: f32,
    pub math: f32,
    pub reasoning: f32,
    pub turns: f32,
    pub max_tokens: f32,
}

impl ComplexityWeights {
    /// The weights in the features' order (length, code, math, reasoning, turns, max_tokens).
    pub fn features(&self) -> [f32; 6] {
        [
            self.length,
            self.code,
            self.math,
            self.reasoning,
            self.turns,
            self.max_tokens,
        ]
    }

    pub fn from_parts(bias: f32, w: [f32; 6]) -> Self {
        ComplexityWeights {
            bias,
            length: w[0],
            code: w[1],
            math: w[2],
            reasoning: w[3],
            turns: w[4],
            max_tokens: w[5],
        }
    }

    pub const FEATURE_NAMES: [&'static str; 6] =
        ["length", "code", "math", "reasoning", "turns", "max_tokens"];

    pub fn is_finite(&self) -> bool {
        self.bias.is_finite() && self.features().iter().all(|w| w.is_finite())
    }
}

/// The threshold chosen on the calibration items, and the curve it was chosen from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub items: usize,
    pub threshold: f32,
    /// The share the threshold actually sends to the strong model (ties can move it).
    pub strong_share: f64,
    pub quality: f64,
    pub fast_only: f64,
    pub strong_only: f64,
    /// Quality of sending the same share to the strong model at random.
    pub random_at_share: f64,
    /// Share of the fast-to-strong quality gap recovered: (quality − fast) / (strong − fast).
    pub gap_recovered: Option<f64>,
    pub curve: Vec<CurvePoint>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Share of items sent to the strong model.
    pub strong_share: f64,
    pub threshold: f32,
    /// Mean item score of the routed answers.
    pub quality: f64,
}

/// How the threshold chosen on the calibration items routes the held-out ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldOut {
    pub items: usize,
    pub strong_share: f64,
    /// Mean item score of the routed answers, with a 95% bootstrap interval.
    pub quality: f64,
    pub quality_ci: (f64, f64),
    /// Expected mean score of sending the same share to the strong model at random.
    pub random_at_share: f64,
    pub random_ci: (f64, f64),
    /// Routed minus random, paired over the same resamples.
    pub gain_ci: (f64, f64),
    pub fast_only: f64,
    pub strong_only: f64,
    /// Per eval component (the part of an item id before `/`), where ids have one.
    #[serde(default)]
    pub by_component: Vec<ComponentRouting>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComponentRouting {
    pub component: String,
    pub items: usize,
    pub strong_share: f64,
    pub quality: f64,
    pub fast_only: f64,
    pub strong_only: f64,
}
