//! A xorshift64 generator: seeded, reproducible and tiny. For the protocol simulations, tests,
//! and bootstorm's fault injection and boot profiles; never for anything secret.

#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// Any seed works (zero, the one fixed point, is mapped away).
    pub fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` (never for p <= 0, without drawing).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reproducible_and_roughly_uniform() {
        let (mut a, mut b) = (super::XorShift::new(7), super::XorShift::new(7));
        assert!((0..100).all(|_| a.next() == b.next()));
        let mut z = super::XorShift::new(0);
        assert_ne!(z.next(), 0, "a zero seed does not stick at zero");
        let hits = (0..100_000).filter(|_| a.chance(0.25)).count();
        assert!((24_000..26_000).contains(&hits), "{hits}");
        assert!(!a.chance(0.0));
    }
}
