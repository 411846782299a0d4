//! bakeoff's own weight-type enum: every storage type the loaders, kernels and writers handle,
//! with ggml's block geometry and type ids. candle's `GgmlDType` cannot express IQ4_NL / IQ4_XS,
//! so it is used only where candle's own API needs it (see [`WeightType::to_candle`]).

use candle_core::quantized::GgmlDType;

/// A tensor's storage type: plain floats or one of ggml's block quantizations. Variant names
/// follow candle's `GgmlDType` so that code reads the same.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WeightType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    IQ4_NL,
    IQ4_XS,
}

impl WeightType {
    /// Every type, in ggml id order.
    pub const ALL: [WeightType; 17] = [
        WeightType::F32,
        WeightType::F16,
        WeightType::Q4_0,
        WeightType::Q4_1,
        WeightType::Q5_0,
        WeightType::Q5_1,
        WeightType::Q8_0,
        WeightType::Q8_1,
        WeightType::Q2K,
        WeightType::Q3K,
        WeightType::Q4K,
        WeightType::Q5K,
        WeightType::Q6K,
        WeightType::Q8K,
        WeightType::IQ4_NL,
        WeightType::IQ4_XS,
        WeightType::BF16,
    ];

    /// Values per block (1 for plain floats).
    pub fn block_size(self) -> usize {
        match self {
            WeightType::F32 | WeightType::F16 | WeightType::BF16 => 1,
            WeightType::Q4_0
            | WeightType::Q4_1
            | WeightType::Q5_0
            | WeightType::Q5_1
            | WeightType::Q8_0
            | WeightType::Q8_1
            | WeightType::IQ4_NL => 32,
            WeightType::Q2K
            | WeightType::Q3K
            | WeightType::Q4K
            | WeightType::Q5K
            | WeightType::Q6K
            | WeightType::Q8K
            | WeightType::IQ4_XS => 256,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn type_size(self) -> usize {
        match self {
            WeightType::F32 => 4,
            WeightType::F16 | WeightType::BF16 => 2,
            WeightType::Q4_0 => 18,
            WeightType::Q4_1 => 20,
            WeightType::Q5_0 => 22,
            WeightType::Q5_1 => 24,
            WeightType::Q8_0 => 34,
            WeightType::Q8_1 => 36,
            WeightType::Q2K => 84,
            WeightType::Q3K => 110,
            WeightType::Q4K => 144,
            WeightType::Q5K => 176,
            WeightType::Q6K => 210,
            WeightType::Q8K => 292,
            WeightType::IQ4_NL => 18,
            WeightType::IQ4_XS => 136,
        }
    }

    /// ggml's `enum ggml_type` id, as GGUF files store it.
    pub fn ggml_id(self) -> u32 {
        match self {
            WeightType::F32 => 0,
            WeightType::F16 => 1,
            WeightType::Q4_0 => 2,
            WeightType::Q4_1 => 3,
            WeightType::Q5_0 => 6,
            WeightType::Q5_1 => 7,
            WeightType::Q8_0 => 8,
            WeightType::Q8_1 => 9,
            WeightType::Q2K => 10,
            WeightType::Q3K => 11,
            WeightType::Q4K => 12,
            WeightType::Q5K => 13,
            WeightType::Q6K => 14,
            WeightType::Q8K => 15,
            WeightType::IQ4_NL => 20,
            WeightType::IQ4_XS => 23,
            WeightType::BF16 => 30,
        }
    }

    /// The type with ggml id `id`; `None` for ids bakeoff does not handle.
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.ggml_id() == id)
    }

    /// ggml's lower-case name (`q4_k`, `iq4_xs`).
    pub fn name(self) -> &'static str {
        match self {
            WeightType::F32 => "f32",
            WeightType::F16 => "f16",
            WeightType::BF16 => "bf16",
            WeightType::Q4_0 => "q4_0",
            WeightType::Q4_1 => "q4_1",
            WeightType::Q5_0 => "q5_0",
            WeightType::Q5_1 => "q5_1",
            WeightType::Q8_0 => "q8_0",
            WeightType::Q8_1 => "q8_1",
            WeightType::Q2K => "q2_k",
            WeightType::Q3K => "q3_k",
            WeightType::Q4K => "q4_k",
            WeightType::Q5K => "q5_k",
            WeightType::Q6K => "q6_k",
            WeightType::Q8K => "q8_k",
            WeightType::IQ4_NL => "iq4_nl",
            WeightType::IQ4_XS => "iq4_xs",
        }
    }

    /// candle's equivalent, for the candle backend and candle-based writers; `None` for the
    /// types candle does not know (IQ4_NL, IQ4_XS).
    pub fn to_candle(self) -> Option<GgmlDType> {
        Some(match self {
            WeightType::F32 => GgmlDType::F32,
            WeightType::F16 => GgmlDType::F16,
            WeightType::BF16 => GgmlDType::BF16,
            WeightType::Q4_0 => GgmlDType::Q4_0,
            WeightType::Q4_1 => GgmlDType::Q4_1,
            WeightType::Q5_0 => GgmlDType::Q5_0,
            WeightType::Q5_1 => GgmlDType::Q5_1,
            WeightType::Q8_0 => GgmlDType::Q8_0,
            WeightType::Q8_1 => GgmlDType::Q8_1,
            WeightType::Q2K => GgmlDType::Q2K,
            WeightType::Q3K => GgmlDType::Q3K,
            WeightType::Q4K => GgmlDType::Q4K,
            WeightType::Q5K => GgmlDType::Q5K,
            WeightType::Q6K => GgmlDType::Q6K,
            WeightType::Q8K => GgmlDType::Q8K,
            WeightType::IQ4_NL | WeightType::IQ4_XS => return None,
        })
    }

    /// Bytes that `count` values occupy; `None` when they do not fill whole blocks or the size
    /// overflows.
    pub fn storage_bytes(self, count: usize) -> Option<usize> {
        let bs = self.block_size();
        if !count.is_multiple_of(bs) {
            return None;
        }
        (count / bs).checked_mul(self.type_size())
    }
}

impl std::fmt::Display for WeightType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<GgmlDType> for WeightType {
    fn from(d: GgmlDType) -> Self {
        match d {
            GgmlDType::F32 => WeightType::F32,
            GgmlDType::F16 => WeightType::F16,
            GgmlDType::BF16 => WeightType::BF16,
            GgmlDType::Q4_0 => WeightType::Q4_0,
            GgmlDType::Q4_1 => WeightType::Q4_1,
            GgmlDType::Q5_0 => WeightType::Q5_0,
            GgmlDType::Q5_1 => WeightType::Q5_1,
            GgmlDType::Q8_0 => WeightType::Q8_0,
            GgmlDType::Q8_1 => WeightType::Q8_1,
            GgmlDType::Q2K => WeightType::Q2K,
            GgmlDType::Q3K => WeightType::Q3K,
            GgmlDType::Q4K => WeightType::Q4K,
            GgmlDType::Q5K => WeightType::Q5K,
            GgmlDType::Q6K => WeightType::Q6K,
            GgmlDType::Q8K => WeightType::Q8K,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn geometry_matches_candle_where_candle_has_the_type() {
        for t in WeightType::ALL {
            assert_eq!(WeightType::from_ggml_id(t.ggml_id()), Some(t));
            if let Some(c) = t.to_candle() {
                assert_eq!(c.block_size(), t.block_size(), "{t}");
                assert_eq!(c.type_size(), t.type_size(), "{t}");
                assert_eq!(WeightType::from(c), t);
            }
        }
        assert_eq!(WeightType::from_ggml_id(4), None);
        assert_eq!(WeightType::from_ggml_id(16), None);
    }
}
