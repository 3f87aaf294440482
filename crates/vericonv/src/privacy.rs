//! The three ways the client hides its inputs from the cloud (docs/scheme.md §9, §11, §12).
//!
//! | mode | what one cloud receives | input privacy |
//! |---|---|---|
//! | [`Privacy::LowRank`] | `β·(X + R)`, `R` of rank ρ | broken on structured inputs (measured by `vericonv attack`) |
//! | [`Privacy::TwoServer`] | one additive share of `β·X[π]` | ChaCha, while the two clouds do not collude |
//! | [`Privacy::Pad`] | `β·(X + R)`, `R` a uniform one-time pad | ChaCha; the pad costs a full offline convolution |
//!
//! The kernel is not private in any mode: `K'` reveals every kernel slice up to one scalar.

use crate::keys::DEFAULT_RANK;

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
    /// precomputed offline on its own backend (docs/scheme.md §12).
    Pad,
}

impl Default for Privacy {
    fn default() -> Self {
        Privacy::LowRank { rank: DEFAULT_RANK }
    }
}

/// The one line every run in mode `lowrank` prints (docs/scheme.md §9).
pub const LOWRANK_WARNING: &str = "warning: privacy mode `lowrank` (the paper's scheme) does not keep structured inputs private: \
     `vericonv attack` recovers them exactly (README, \"Privacy, measured\"); use --privacy two-server or pad";

impl Privacy {
    /// The mode's name on the command line and in reports: `lowrank`, `two-server` or `pad`.
    pub fn name(self) -> &'static str {
        match self {
            Privacy::LowRank { .. } => "lowrank",
            Privacy::TwoServer => "two-server",
            Privacy::Pad => "pad",
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
            Privacy::TwoServer => 2,
            _ => 1,
        }
    }

    /// The mask rank ρ in mode `lowrank`, else `None`.
    pub fn rank(self) -> Option<usize> {
        match self {
            Privacy::LowRank { rank } => Some(rank),
            _ => None,
        }
    }
}
