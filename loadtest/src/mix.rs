//! The seeded request mix. Payment `n` and read `n` are pure functions of the seed and `n`,
//! so a run with the same seed and options offers the same sequence whatever the timing
//! (and in closed loop whichever worker takes it).

/// What a payment is meant to exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PayKind {
    /// An ordinary payment: accepted (202), then normally captured.
    Normal,
    /// Merchant `test_decline`: accepted, then declined at the gateway and released.
    Decline,
    /// More than the wallet ever held: 422 `insufficient_funds`.
    Refuse,
}

impl PayKind {
    pub fn label(self) -> &'static str {
        match self {
            PayKind::Normal => "pay",
            PayKind::Decline => "pay-decline",
            PayKind::Refuse => "pay-refuse",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayOp {
    pub n: u64,
    pub wallet: usize,
    pub amount: i64,
    pub kind: PayKind,
    pub merchant: String,
    /// Send it a second time with the same key and check the replay.
    pub retry: bool,
    /// Poll it until final to observe finalization from the outside.
    pub poll: bool,
    /// Once seen succeeded (it is polled), refund it: in full, or (odd `n`) in two parts.
    pub refund: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOp {
    /// `GET /v1/wallets/{id}/balance` of this wallet.
    Balance { wallet: usize },
    /// `GET /v1/payments/{id}` of a recently accepted payment, chosen by `pick`.
    Payment { pick: u64 },
}

#[derive(Debug, Clone)]
pub struct Mix {
    pub seed: u64,
    pub wallets: usize,
    pub deposit: i64,
    pub decline_share: f64,
    pub refuse_share: f64,
    pub retry_share: f64,
    pub poll_share: f64,
    pub refund_share: f64,
}

const PAY_STREAM: u64 = 0x7061_7900;
const READ_STREAM: u64 = 0x7265_6164;

/// SplitMix64 finaliser: decorrelates (seed, stream, n) into an RNG seed.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn rng(seed: u64, stream: u64, n: u64) -> fastrand::Rng {
    fastrand::Rng::with_seed(mix64(mix64(seed ^ stream).wrapping_add(n)))
}

impl Mix {
    pub fn pay(&self, n: u64) -> PayOp {
        let mut r = rng(self.seed, PAY_STREAM, n);
        let wallet = r.usize(0..self.wallets);
        let x = r.f64();
        let kind = if x < self.refuse_share {
            PayKind::Refuse
        } else if x < self.refuse_share + self.decline_share {
            PayKind::Decline
        } else {
            PayKind::Normal
        };
        let amount = match kind {
            // More than the wallet's only deposit: certainly refused, whatever else ran.
            PayKind::Refuse => self.deposit + 1 + r.i64(0..100_000),
            // Mostly small baskets, some larger, a few big ones (minor units).
            _ => match r.u32(0..100) {
                0..=69 => r.i64(100..2_000),
                70..=94 => r.i64(2_000..20_000),
                _ => r.i64(20_000..Self::MAX_ORDINARY_AMOUNT),
            },
        };
        let merchant = match kind {
            PayKind::Decline => "test_decline".to_owned(),
            _ => format!("shop_{:02}", r.u32(0..50)),
        };
        let retry = r.f64() < self.retry_share;
        let poll = kind != PayKind::Refuse && r.f64() < self.poll_share;
        // Drawn last, so the rest of the mix is the same whatever the refund share.
        let refund = kind == PayKind::Normal && r.f64() < self.refund_share;
        PayOp {
            n,
            wallet,
            amount,
            kind,
            merchant,
            retry,
            poll: poll || refund,
            refund,
        }
    }

    pub fn read(&self, n: u64) -> ReadOp {
        let mut r = rng(self.seed, READ_STREAM, n);
        if r.bool() {
            ReadOp::Balance {
                wallet: r.usize(0..self.wallets),
            }
        } else {
            ReadOp::Payment { pick: r.u64(..) }
        }
    }

    /// The most an ordinary payment asks for (to size deposits).
    pub const MAX_ORDINARY_AMOUNT: i64 = 100_000;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(seed: u64) -> Mix {
        Mix {
            seed,
            wallets: 100,
            deposit: 1_000_000_000,
            decline_share: 0.1,
            refuse_share: 0.05,
            retry_share: 0.2,
            poll_share: 0.3,
            refund_share: 0.1,
        }
    }

    #[test]
    fn same_seed_same_sequence() {
        let (a, b, c) = (mix(7), mix(7), mix(8));
        let seq = |m: &Mix| (0..500).map(|n| m.pay(n)).collect::<Vec<_>>();
        assert_eq!(seq(&a), seq(&b));
        assert_ne!(seq(&a), seq(&c));
        // Order of generation does not matter (closed-loop workers race for `n`).
        assert_eq!(a.pay(321), b.pay(321));
        assert_eq!(a.read(5), b.read(5));
    }

    #[test]
    fn shares_are_respected() {
        let m = mix(1);
        let ops: Vec<_> = (0..20_000).map(|n| m.pay(n)).collect();
        let share = |f: &dyn Fn(&PayOp) -> bool| {
            ops.iter().filter(|o| f(o)).count() as f64 / ops.len() as f64
        };
        assert!((share(&|o| o.kind == PayKind::Refuse) - 0.05).abs() < 0.01);
        assert!((share(&|o| o.kind == PayKind::Decline) - 0.1).abs() < 0.01);
        assert!((share(&|o| o.retry) - 0.2).abs() < 0.015);
        // Refunds: a tenth of the ordinary payments, each of them polled.
        let normal = share(&|o| o.kind == PayKind::Normal);
        assert!((share(&|o| o.refund) / normal - 0.1).abs() < 0.015);
        assert!(ops
            .iter()
            .all(|o| !o.refund || (o.poll && o.kind == PayKind::Normal)));
        for o in &ops {
            assert!(o.wallet < 100);
            match o.kind {
                PayKind::Refuse => {
                    assert!(o.amount > m.deposit && o.amount <= m.deposit + 100_000);
                    assert!(!o.poll);
                }
                PayKind::Decline => assert_eq!(o.merchant, "test_decline"),
                PayKind::Normal => {
                    assert!((100..Mix::MAX_ORDINARY_AMOUNT).contains(&o.amount));
                    assert!(o.merchant.starts_with("shop_"));
                }
            }
        }
        // Every wallet gets used.
        let mut used = [false; 100];
        ops.iter().for_each(|o| used[o.wallet] = true);
        assert!(used.iter().all(|u| *u));
        let reads = (0..1000)
            .filter(|&n| matches!(m.read(n), ReadOp::Balance { .. }))
            .count();
        assert!((400..600).contains(&reads));
    }
}
