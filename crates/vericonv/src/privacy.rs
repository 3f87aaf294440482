//! The four ways the client hides its inputs, and in mode `split-model` its kernel, from the
//! clouds (docs/scheme.md §9, §11, §12, §14).
//!
//! | mode | what a cloud receives | inputs private | kernel private |
//! |---|---|---|---|
//! | [`Privacy::Pad`] (default) | `K'`; `β·(X + R)`, `R` a uniform one-time pad | yes (ChaCha) | no |
//! | [`Privacy::TwoServer`] | `K'`; one additive share of `β·X[π]` | while the two clouds do not collude | no |
//! | [`Privacy::SplitModel`] | one additive share of `K`; `X + R`, `R` a uniform pad | yes, even if the clouds collude | while they do not collude |
//! | [`Privacy::LowRank`] | `K'`; `β·(X + R)`, `R` of rank ρ | no: broken on structured inputs | no |
//!
//! `K'` is the kernel permuted and scaled per channel: `vericonv attack` recovers every kernel
//! slice from it up to one scalar. Modes `pad` and `split-model` draw their pads offline on the
//! client's own backend (`U = Conv(K, R)`, one convolution per image).

/// How the client masks the inputs of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Privacy {
    /// The paper's scheme (docs/scheme.md §4–§7): a rank-ρ mask whose row and column factors all
    /// channels of an image share. Its input privacy does not hold on structured data.
    LowRank {
        /// The mask rank ρ (at least 1).
        rank: usize,
    },
    /// Two non-colluding clouds each convolve one additive share of `β·X[π]` (docs/scheme.md §11).
    TwoServer,
    /// One cloud; the client masks with a uniform pad `R` and unmasks with `Conv(K, R)`, both
    /// precomputed offline on its own backend (docs/scheme.md §12). The default.
    Pad,
    /// Mode `pad` with the plain kernel split into two additive shares, one per cloud: both
    /// clouds receive the same padded input `X + R` (docs/scheme.md §14).
    SplitModel,
}

/// Mode `pad`: the one-cloud mode whose input privacy holds (docs/scheme.md §15).
impl Default for Privacy {
    fn default() -> Self {
        Privacy::Pad
    }
}

/// The one line every run in mode `lowrank` prints (docs/scheme.md §9).
pub const LOWRANK_WARNING: &str = "warning: privacy mode `lowrank` (the paper's scheme) does not keep structured inputs private: \
     `vericonv attack` recovers them exactly (docs/privacy.md, \"Privacy, measured\"); use --privacy pad, two-server or split-model";

impl Privacy {
    /// The mode's name on the command line and in reports: `lowrank`, `two-server`, `pad` or
    /// `split-model`.
    pub fn name(self) -> &'static str {
        match self {
            Privacy::LowRank { .. } => "lowrank",
            Privacy::TwoServer => "two-server",
            Privacy::Pad => "pad",
            Privacy::SplitModel => "split-model",
        }
    }

    /// The mode with its parameter, for reports: `lowrank (rank 2)`, `two-server`, `pad`.
    pub fn label(self) -> String {
        match self {
            Privacy::LowRank { rank } => format!("lowrank (rank {rank})"),
            other => other.name().to_string(),
        }
    }

    /// How many clouds the mode needs.
    pub fn clouds(self) -> usize {
        match self {
            Privacy::TwoServer | Privacy::SplitModel => 2,
            Privacy::LowRank { .. } | Privacy::Pad => 1,
        }
    }

    /// Whether the mode unmasks with one-time pads made offline (`pad` and `split-model`).
    pub fn uses_pads(self) -> bool {
        matches!(self, Privacy::Pad | Privacy::SplitModel)
    }

    /// The mask rank ρ in mode `lowrank`, else `None`.
    pub fn rank(self) -> Option<usize> {
        match self {
            Privacy::LowRank { rank } => Some(rank),
            _ => None,
        }
    }
}
