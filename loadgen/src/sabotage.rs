//! Saboteurs: how a lying simulated worker turns an honest outcome into a wrong one.
//!
//! - [`Sabotage`]: the modes (random, colluding, sleeper, intermittent, forged).
//! - [`Liar`]: one saboteur's state (its results so far and its random stream).
//! - [`forge`]: the wrong output itself. Lies look plausible: the honest output with one
//!   leaf changed (the first number, string or boolean in canonical key order), so a verifier
//!   cannot tell a lie by its shape, only by comparing replicas. Except for
//!   [`Sabotage::Forged`]: one constant output, [`forged_output`], for every input (what a
//!   Sybil attack that needs no cleverness sends).
//!
//! Which workers lie is chosen here too ([`choose_saboteurs`]), from the seed, so two runs with
//! the same seed have the same liars telling the same lies.

use grid_protocol::{Outcome, canonical_json};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Number, Value};
use sha2::{Digest, Sha256};

/// How saboteurs lie.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sabotage {
    /// A fresh random wrong output for every chunk; two random liars almost never agree.
    Random,
    /// The same wrong output from every saboteur for a given input (a hash of the seed and the
    /// input picks it), so liars who meet on a chunk agree with each other.
    Colluding,
    /// Honest for the first `honest_results` results, then lies like [`Sabotage::Colluding`]:
    /// earns trust first.
    Sleeper {
        /// Honest results before the first lie.
        honest_results: u64,
    },
    /// Lies like [`Sabotage::Colluding`] with this probability on each chunk.
    Intermittent {
        /// Between 0 and 1.
        probability: f64,
    },
    /// Every saboteur answers every chunk with the one output [`forged_output`] (agreed in
    /// advance, whatever the input); an honest output that happens to equal it is left alone.
    Forged,
}

/// One saboteur's state.
#[derive(Debug)]
pub struct Liar {
    mode: Sabotage,
    /// The run's seed: colluders derive their shared lie from it.
    seed: u64,
    /// Results given so far (honest or not).
    results: u64,
    rng: SmallRng,
}

impl Liar {
    /// The saboteur with worker index `index` in a run seeded `seed`.
    pub fn new(mode: Sabotage, seed: u64, index: u32) -> Self {
        Liar {
            mode,
            seed,
            results: 0,
            rng: SmallRng::seed_from_u64(mix(seed, u64::from(index))),
        }
    }

    /// The outcome this saboteur reports for `input`, whose honest outcome is `honest`, and
    /// whether it is a lie.
    pub fn report(&mut self, input: &Value, honest: Outcome) -> (Outcome, bool) {
        self.results += 1;
        let salt = match self.mode {
            Sabotage::Forged => {
                let forged = Outcome::Ok(forged_output());
                let lie = forged != honest;
                return (forged, lie);
            }
            Sabotage::Random => self.rng.random::<[u8; 32]>(),
            Sabotage::Colluding => colluding_salt(self.seed, input),
            Sabotage::Sleeper { honest_results } => {
                if self.results <= honest_results {
                    return (honest, false);
                }
                colluding_salt(self.seed, input)
            }
            Sabotage::Intermittent { probability } => {
                if !self.rng.random_bool(probability.clamp(0.0, 1.0)) {
                    return (honest, false);
                }
                colluding_salt(self.seed, input)
            }
        };
        (forge(&honest, &salt), true)
    }
}

/// Pick `count` of `workers` indexes to be saboteurs, reproducibly from `seed`, in ascending
/// order.
pub fn choose_saboteurs(workers: u32, count: u32, seed: u64) -> Vec<u32> {
    let mut rng = SmallRng::seed_from_u64(mix(seed, 0x5ab0_7e0e));
    let count = count.min(workers) as usize;
    let mut chosen: Vec<u32> = rand::seq::index::sample(&mut rng, workers as usize, count)
        .into_iter()
        .filter_map(|index| u32::try_from(index).ok())
        .collect();
    chosen.sort_unstable();
    chosen
}

/// The lie every colluding saboteur of a run seeded `seed` tells for `input` (whose honest
/// outcome is `honest`): what a verifier sees when colluders win a vote.
pub fn colluding_lie(seed: u64, input: &Value, honest: &Outcome) -> Outcome {
    forge(honest, &colluding_salt(seed, input))
}

/// The output every [`Sabotage::Forged`] saboteur sends for every chunk: `{"forged":true}`.
pub fn forged_output() -> Value {
    serde_json::json!({ "forged": true })
}

/// The salt every colluder derives for `input`: equal inputs, equal lies.
fn colluding_salt(seed: u64, input: &Value) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"grid-loadgen colluding\0");
    hasher.update(seed.to_le_bytes());
    hasher.update(canonical_json(input).as_bytes());
    hasher.finalize().into()
}

/// A wrong outcome derived from `salt`: the honest output with its first leaf changed, or,
/// for an honest error, a made-up output. Never equal to `honest`.
pub fn forge(honest: &Outcome, salt: &[u8; 32]) -> Outcome {
    let tweak = u64::from_le_bytes([
        salt[0], salt[1], salt[2], salt[3], salt[4], salt[5], salt[6], salt[7],
    ]);
    let made_up = || serde_json::json!({ "forged": hex::encode(&salt[..8]) });
    match honest {
        Outcome::Ok(value) => {
            let mut lie = value.clone();
            if !perturb_first_leaf(&mut lie, tweak) || lie == *value {
                lie = made_up();
            }
            Outcome::Ok(lie)
        }
        Outcome::Err(_) => Outcome::Ok(made_up()),
    }
}

/// Change the first scalar leaf (object keys in sorted order, as canonical JSON has them).
/// Returns false when there is none (empty containers, or only nulls).
fn perturb_first_leaf(value: &mut Value, tweak: u64) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(flag) => {
            *flag = !*flag;
            true
        }
        Value::Number(number) => {
            // Between 1 and 1000 off: small enough to look like a plausible answer.
            let delta = tweak % 1000 + 1;
            let changed = if let Some(n) = number.as_u64() {
                Number::from(n.wrapping_add(delta))
            } else if let Some(n) = number.as_i64() {
                Number::from(n.wrapping_add(delta.cast_signed()))
            } else {
                let n = number.as_f64().unwrap_or(0.0);
                let shifted = n + delta as f64;
                let shifted = if shifted == n { -n - 1.0 } else { shifted };
                Number::from_f64(shifted).unwrap_or_else(|| Number::from(delta))
            };
            *number = changed;
            true
        }
        Value::String(text) => {
            text.push_str(&format!("~{:04x}", tweak & 0xffff));
            true
        }
        Value::Array(items) => items.iter_mut().any(|item| perturb_first_leaf(item, tweak)),
        Value::Object(map) => {
            let mut keys: Vec<String> = map.keys().cloned().collect();
            keys.sort_unstable();
            keys.iter().any(|key| {
                map.get_mut(key)
                    .is_some_and(|item| perturb_first_leaf(item, tweak))
            })
        }
    }
}

/// SplitMix64 of two numbers: independent streams per worker from one seed.
fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn honest(value: Value) -> Outcome {
        Outcome::Ok(value)
    }

    #[test]
    fn lies_keep_the_shape_and_differ() {
        let salt = [7u8; 32];
        for value in [
            json!(5),
            json!(-5),
            json!(2.5),
            json!("text"),
            json!(true),
            json!({"count": 25}),
            json!({"b": 1, "a": [null, "x"]}),
            json!(null),
            json!([]),
            json!({}),
            json!(u64::MAX),
        ] {
            let lie = forge(&honest(value.clone()), &salt);
            assert_ne!(lie, honest(value.clone()), "{value}");
        }
        // The first leaf in canonical order changes, the rest stays.
        let Outcome::Ok(lie) = forge(&honest(json!({"b": 1, "a": [null, "x"]})), &salt) else {
            panic!("a lie is an output");
        };
        assert_eq!(lie["b"], json!(1));
        assert_ne!(lie["a"][1], json!("x"));
        // An honest error becomes a made-up output.
        assert!(!forge(&Outcome::Err("bad input".into()), &salt).is_err());
    }

    #[test]
    fn colluders_agree_and_random_liars_do_not() {
        let input = json!({"i": 42});
        let mut a = Liar::new(Sabotage::Colluding, 9, 1);
        let mut b = Liar::new(Sabotage::Colluding, 9, 2);
        let (lie_a, lied_a) = a.report(&input, honest(input.clone()));
        let (lie_b, lied_b) = b.report(&input, honest(input.clone()));
        assert!(lied_a && lied_b);
        assert_eq!(lie_a, lie_b);
        assert_eq!(lie_a, colluding_lie(9, &input, &honest(input.clone())));
        assert_ne!(lie_a, honest(input.clone()));
        // Another seed, another lie.
        let (other, _) =
            Liar::new(Sabotage::Colluding, 10, 1).report(&input, honest(input.clone()));
        assert_ne!(other, lie_a);

        let mut r1 = Liar::new(Sabotage::Random, 9, 1);
        let mut r2 = Liar::new(Sabotage::Random, 9, 2);
        assert_ne!(
            r1.report(&input, honest(input.clone())).0,
            r2.report(&input, honest(input.clone())).0
        );
    }

    #[test]
    fn forgers_agree_with_each_other_on_any_input() {
        let mut a = Liar::new(Sabotage::Forged, 1, 1);
        let mut b = Liar::new(Sabotage::Forged, 2, 7);
        for input in [
            json!(1),
            json!({"i": 42}),
            json!("x"),
            json!(null),
            json!([1, 2]),
        ] {
            let (lie_a, lied_a) = a.report(&input, honest(input.clone()));
            let (lie_b, lied_b) = b.report(&input, Outcome::Err("refused".into()));
            assert!(lied_a && lied_b, "{input}");
            assert_eq!(lie_a, Outcome::Ok(json!({"forged": true})));
            assert_eq!(lie_a, lie_b);
        }
        // The truth that looks like the forgery is not counted as a lie.
        let (same, lied) = a.report(&json!(0), honest(forged_output()));
        assert_eq!((same, lied), (honest(forged_output()), false));
    }

    #[test]
    fn sleepers_wait_and_intermittent_liars_sometimes_lie() {
        let input = json!(1);
        let mut sleeper = Liar::new(Sabotage::Sleeper { honest_results: 3 }, 0, 0);
        let lied: Vec<bool> = (0..5)
            .map(|_| sleeper.report(&input, honest(input.clone())).1)
            .collect();
        assert_eq!(lied, [false, false, false, true, true]);
        // Sleepers that woke up tell the colluders' lie, so they agree with each other.
        let mut other = Liar::new(Sabotage::Sleeper { honest_results: 0 }, 0, 9);
        let input = json!({"i": 3});
        assert_eq!(
            sleeper.report(&input, honest(input.clone())),
            other.report(&input, honest(input.clone()))
        );
        let input = json!(1);

        let mut liar = Liar::new(Sabotage::Intermittent { probability: 0.3 }, 0, 0);
        let lies = (0..1000)
            .filter(|_| liar.report(&input, honest(input.clone())).1)
            .count();
        assert!((200..400).contains(&lies), "{lies} lies in 1000");
        let mut never = Liar::new(Sabotage::Intermittent { probability: 0.0 }, 0, 0);
        assert!(!never.report(&input, honest(input.clone())).1);
    }

    #[test]
    fn saboteurs_are_chosen_reproducibly() {
        let a = choose_saboteurs(100, 20, 5);
        assert_eq!(a.len(), 20);
        assert_eq!(a, choose_saboteurs(100, 20, 5));
        assert_ne!(a, choose_saboteurs(100, 20, 6));
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a.iter().all(|&i| i < 100));
        assert_eq!(choose_saboteurs(3, 5, 0), vec![0, 1, 2]);
    }
}
