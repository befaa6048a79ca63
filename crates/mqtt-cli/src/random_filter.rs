//! mosquitto_sub's `--random-filter`: print a random share of the messages.

use crate::Failure;

/// Keeps each message with a fixed chance, in steps of 0.1 % (mosquitto_sub's
/// resolution), drawing from a xorshift generator seeded from the clock: the choice
/// needs to look random, not to resist prediction.
#[derive(Clone, Debug)]
pub struct RandomFilter {
    /// The chance of keeping a message, in tenths of a percent (1 to 1000).
    per_mille: u64,
    /// xorshift64* state, never 0.
    state: u64,
}

impl RandomFilter {
    /// Keeps every message.
    pub fn all() -> Self {
        Self::with_seed(1000, 0)
    }

    /// Parses `--random-filter CHANCE`: a percentage from 0.1 to 100.0, as
    /// mosquitto_sub's man page gives it (fractions below 0.1 % are dropped).
    ///
    /// mosquitto_sub 2.0.11 scales the chance by 10 and compares it with a draw out of
    /// 10000, so there `100` prints about 10 % and `1000` prints everything; we follow
    /// the man page and its help text ("Set to 100 to have all messages printed").
    pub fn parse(chance: &str) -> Result<Self, Failure> {
        let out_of_range = || Failure::new("--random-filter chance must be between 0.1-100.0");
        let percent: f64 = chance.trim().parse().map_err(|_| out_of_range())?;
        if !(0.1..=100.0).contains(&percent) {
            return Err(out_of_range());
        }
        // In range, so the product is 1.0 to 1000.0 (plus rounding): the cast is exact
        // after `round`, and 0.1 cannot round below 1.
        let per_mille = ((percent * 10.0).round() as u64).clamp(1, 1000);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()).rotate_left(32);
        Ok(Self::with_seed(per_mille, seed))
    }

    /// A filter keeping `per_mille` messages in 1000, drawing from `seed`.
    pub fn with_seed(per_mille: u64, seed: u64) -> Self {
        Self {
            per_mille: per_mille.min(1000),
            // xorshift never leaves 0; any other start will do.
            state: if seed == 0 {
                0x9E37_79B9_7F4A_7C15
            } else {
                seed
            },
        }
    }

    /// Whether to print the next message.
    pub fn keep(&mut self) -> bool {
        if self.per_mille >= 1000 {
            return true;
        }
        // xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift
        // generators"): the high bits of the product are the good ones.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let draw = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32;
        draw % 1000 < self.per_mille
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_and_share() {
        for bad in ["0", "0.05", "100.1", "-1", "abc", "NaN", ""] {
            assert!(RandomFilter::parse(bad).is_err(), "{bad}");
        }
        assert!(RandomFilter::parse("0.1").is_ok());
        let mut all = RandomFilter::parse("100").unwrap();
        assert!((0..1000).all(|_| all.keep()));
        let mut half = RandomFilter::with_seed(500, 42);
        let kept = (0..10_000).filter(|_| half.keep()).count();
        assert!((4_500..5_500).contains(&kept), "{kept}");
        let mut rare = RandomFilter::with_seed(1, 7);
        let kept = (0..100_000).filter(|_| rare.keep()).count();
        assert!((50..150).contains(&kept), "{kept}");
    }
}
