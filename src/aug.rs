//! Host side of the data augmentation: which image goes where in an epoch, with which shift and
//! mirror, packed into one u32 per example for the device's stem kernel; and the test-time
//! augmentation views. The pixel arithmetic itself (reflect-indexed shift, mirror, normalise)
//! is done by the backend's `stem`; `reflect` and `unpack` define it.
use rand::seq::SliceRandom;
use rand::Rng;

const INDEX_BITS: u32 = 20;
/// Largest image index a word can carry.
pub const MAX_INDEX: usize = (1 << INDEX_BITS) - 1;
/// Shifts are stored as `s + SHIFT_BIAS` in 3 bits: −4..=3.
const SHIFT_BIAS: i32 = 4;

/// One example of a batch: dataset image `index`, translated by (sy, sx) pixels with reflect
/// padding, then mirrored left-right when `flip`. Output pixel (y, x) of the 32×32 view is
/// source pixel (reflect(y + sy), reflect(x' + sx)) with x' = 31 − x when `flip`, else x.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aug {
    pub index: usize,
    pub sy: i32,
    pub sx: i32,
    pub flip: bool,
}

/// Packs an `Aug` into a word: bits 0–19 index, 20–22 sy+4, 23–25 sx+4, 26 flip.
pub fn pack(a: Aug) -> u32 {
    assert!(a.index <= MAX_INDEX, "image index {} too large", a.index);
    assert!((-SHIFT_BIAS..SHIFT_BIAS).contains(&a.sy) && (-SHIFT_BIAS..SHIFT_BIAS).contains(&a.sx));
    a.index as u32
        | (((a.sy + SHIFT_BIAS) as u32) << INDEX_BITS)
        | (((a.sx + SHIFT_BIAS) as u32) << (INDEX_BITS + 3))
        | ((a.flip as u32) << (INDEX_BITS + 6))
}

pub fn unpack(w: u32) -> Aug {
    Aug {
        index: (w & ((1 << INDEX_BITS) - 1)) as usize,
        sy: ((w >> INDEX_BITS) & 7) as i32 - SHIFT_BIAS,
        sx: ((w >> (INDEX_BITS + 3)) & 7) as i32 - SHIFT_BIAS,
        flip: (w >> (INDEX_BITS + 6)) & 1 == 1,
    }
}

/// PyTorch "reflect" padding index (no edge repeat): −1 → 1, −2 → 2, n → n−2, n+1 → n−3.
pub fn reflect(i: i32, n: i32) -> usize {
    let r = if i < 0 {
        -i
    } else if i >= n {
        2 * n - 2 - i
    } else {
        i
    };
    debug_assert!((0..n).contains(&r), "reflect({i}, {n}) out of range");
    r as usize
}

/// The per-image mirror bits drawn once per run (airbench's "alternating flip": image i is
/// mirrored in epoch e iff bit_i XOR (e mod 2)).
pub fn flip_bits(rng: &mut impl Rng, n: usize) -> Vec<bool> {
    (0..n).map(|_| rng.random_bool(0.5)).collect()
}

/// One epoch's plan over images `0..flips.len()`: a fresh uniform permutation, a fresh
/// uniform shift in [−max_shift, max_shift]² per example, and the alternating mirror.
pub fn epoch_words(rng: &mut impl Rng, epoch: usize, flips: &[bool], max_shift: i32) -> Vec<u32> {
    let mut order: Vec<usize> = (0..flips.len()).collect();
    order.shuffle(rng);
    order
        .into_iter()
        .map(|index| {
            let sy = rng.random_range(-max_shift..=max_shift);
            let sx = rng.random_range(-max_shift..=max_shift);
            pack(Aug { index, sy, sx, flip: flips[index] ^ (epoch % 2 == 1) })
        })
        .collect()
}

/// Test-time augmentation views as (sy, sx, flip, weight); the logits of the views are summed
/// with these weights. Level 0: the image; 1: plus its mirror; 2 (airbench): plus both shifted
/// by one pixel down-right and up-left, each also mirrored.
pub fn tta_views(level: usize) -> Vec<(i32, i32, bool, f32)> {
    match level {
        0 => vec![(0, 0, false, 1.0)],
        1 => vec![(0, 0, false, 0.5), (0, 0, true, 0.5)],
        _ => vec![
            (0, 0, false, 0.25),
            (0, 0, true, 0.25),
            (-1, -1, false, 0.125),
            (-1, -1, true, 0.125),
            (1, 1, false, 0.125),
            (1, 1, true, 0.125),
        ],
    }
}

/// Words for evaluating images `start..start+n` under one view.
pub fn view_words(start: usize, n: usize, sy: i32, sx: i32, flip: bool) -> Vec<u32> {
    (start..start + n).map(|index| pack(Aug { index, sy, sx, flip })).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn pack_roundtrip_covers_every_field() {
        for &index in &[0, 1, 49_999, MAX_INDEX] {
            for sy in -4..4 {
                for sx in -4..4 {
                    for flip in [false, true] {
                        let a = Aug { index, sy, sx, flip };
                        assert_eq!(unpack(pack(a)), a);
                    }
                }
            }
        }
    }

    #[test]
    fn reflect_matches_pytorch_reflect_padding() {
        let got: Vec<usize> = (-2..34).map(|i| reflect(i, 32)).collect();
        let mut want = vec![2, 1];
        want.extend(0..32);
        want.extend([30, 29]);
        assert_eq!(got, want);
    }

    #[test]
    fn epoch_plan_is_a_permutation_with_alternating_flips() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let flips = flip_bits(&mut rng, 1000);
        let e0 = epoch_words(&mut rng, 0, &flips, 2);
        let e1 = epoch_words(&mut rng, 1, &flips, 2);
        for (e, words) in [(0, &e0), (1, &e1)] {
            let mut seen = vec![false; 1000];
            for &w in words.iter() {
                let a = unpack(w);
                assert!(!seen[a.index]);
                seen[a.index] = true;
                assert!((-2..=2).contains(&a.sy) && (-2..=2).contains(&a.sx));
                assert_eq!(a.flip, flips[a.index] ^ (e == 1));
            }
        }
        assert_ne!(e0, e1, "a fresh permutation and fresh shifts every epoch");
        // every shift value occurs
        let sys: std::collections::BTreeSet<i32> = e0.iter().map(|&w| unpack(w).sy).collect();
        assert_eq!(sys.into_iter().collect::<Vec<_>>(), vec![-2, -1, 0, 1, 2]);
    }

    #[test]
    fn tta_weights_sum_to_one() {
        for level in 0..3 {
            let s: f32 = tta_views(level).iter().map(|v| v.3).sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
        assert_eq!(tta_views(2).len(), 6);
    }
}
