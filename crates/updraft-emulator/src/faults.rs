//! Seeded coin flips for fault injection: the same seed gives the same faults, so a failing
//! test run can be replayed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug)]
pub struct Dice {
    rng: StdRng,
}

impl Dice {
    pub fn new(seed: u64) -> Self {
        Dice {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// True with probability `fraction` (clamped to 0..=1); no randomness used for 0.
    pub fn roll(&mut self, fraction: f64) -> bool {
        if fraction <= 0.0 || fraction.is_nan() {
            return false;
        }
        self.rng.random_bool(fraction.min(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_faults_and_fraction_roughly_kept() {
        let mut a = Dice::new(7);
        let mut b = Dice::new(7);
        let rolls_a: Vec<bool> = (0..1000).map(|_| a.roll(0.2)).collect();
        let rolls_b: Vec<bool> = (0..1000).map(|_| b.roll(0.2)).collect();
        assert_eq!(rolls_a, rolls_b);
        let hits = rolls_a.iter().filter(|x| **x).count();
        assert!((120..280).contains(&hits), "{hits}");
        assert!(!Dice::new(1).roll(0.0));
        assert!(Dice::new(1).roll(1.0));
    }
}
