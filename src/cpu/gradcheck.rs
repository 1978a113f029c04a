//! Finite-difference checks of every backward op of the CPU reference, in f64 on small random
//! shapes. Each check builds a scalar loss `L = Σ r·out` (r random) through the forward op(s),
//! takes the analytic gradient from the backward op(s), and compares it with the central
//! difference `(L(θ+h) − L(θ−h)) / 2h` at a sample of coordinates of every input.
//! Tolerances: `testing::check`.
use super::conv::{conv3x3, conv3x3_bwd};
use super::layers::{bn_stats, head, head_bwd, pre_bwd, xent, Affine};
use crate::aug::{pack, Aug};
use crate::backend::Shape;
use crate::testing::{check, randn};

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// BN in training mode on `x`: the `[mean | invstd]` buffer.
fn batch_bn(x: &[f64], s: Shape) -> Vec<f64> {
    let mut bn = vec![0.0; 2 * s.c];
    let (mut rm, mut rv) = (vec![0.0; s.c], vec![1.0; s.c]);
    bn_stats(x, s, 1e-5, 0.6, &mut rm, &mut rv, &mut bn, 2);
    bn
}

/// conv3x3 ∘ GELU ∘ BN(batch stats) with and without the fused pool: gradients w.r.t. the conv
/// weight, the BN input and the BN shift (beta).
#[test]
fn conv_block_with_batchnorm() {
    for (pool, s, cout) in [(false, Shape::new(3, 5, 4, 6), 7), (true, Shape::new(2, 7, 6, 5), 4)] {
        let x = randn(s.len(), 1);
        let w: Vec<f64> = randn(cout * 9 * s.c, 2).iter().map(|v| v * 0.3).collect();
        let beta = randn(s.c, 3);
        let ys = if pool { s.with_c(cout).pooled() } else { s.with_c(cout) };
        let r = randn(ys.len(), 4);
        let loss = |x: &[f64], w: &[f64], beta: &[f64]| {
            let aff = Affine::from_bn_buf(&batch_bn(x, s), beta);
            let mut y = vec![0.0; ys.len()];
            let mut am = vec![0u8; if pool { ys.len() } else { 0 }];
            conv3x3(x, s, &aff, w, cout, pool, &mut y, &mut am, 2);
            (dot(&r, &y), am)
        };
        let (_, am) = loss(&x, &w, &beta);
        let aff = Affine::from_bn_buf(&batch_bn(&x, s), &beta);
        let (mut dw, mut da) = (vec![f64::NAN; w.len()], vec![f64::NAN; s.len()]);
        conv3x3_bwd(&x, s, &aff, &w, cout, pool, &am, &r, &mut dw, Some(&mut da), 2);
        let (mut dbeta, mut dx) = (vec![f64::NAN; s.c], vec![f64::NAN; s.len()]);
        pre_bwd(&da, &x, s, &aff, None, &mut dbeta, Some(&mut dx), 2);
        check("conv dW", &w, &dw, 40, |w| loss(&x, w, &beta).0);
        check("conv dx (through BN batch stats)", &x, &dx, 40, |x| loss(x, &w, &beta).0);
        check("BN dbeta", &beta, &dbeta, s.c, |b| loss(&x, &w, b).0);
    }
}

/// The whitening bias path: conv3x3 ∘ GELU(x + bias).
#[test]
fn conv_block_with_bias_prologue() {
    let s = Shape::new(2, 5, 5, 4);
    let cout = 6;
    let x = randn(s.len(), 11);
    let w = randn(cout * 9 * s.c, 12);
    let bias = randn(s.c, 13);
    let r = randn(s.count() * cout, 14);
    let loss = |x: &[f64], bias: &[f64]| {
        let mut y = vec![0.0; s.count() * cout];
        conv3x3(x, s, &Affine::bias(bias), &w, cout, false, &mut y, &mut [], 1);
        dot(&r, &y)
    };
    let aff = Affine::bias(&bias);
    let (mut dw, mut da) = (vec![0.0; w.len()], vec![0.0; s.len()]);
    conv3x3_bwd(&x, s, &aff, &w, cout, false, &[], &r, &mut dw, Some(&mut da), 1);
    let (mut db, mut dx) = (vec![0.0; s.c], vec![0.0; s.len()]);
    pre_bwd(&da, &x, s, &aff, None, &mut db, Some(&mut dx), 1);
    check("bias prologue dbias", &bias, &db, s.c, |b| loss(&x, b));
    check("bias prologue dx", &x, &dx, 30, |x| loss(x, &bias));
}

/// Head (GELU ∘ BN, global max, linear, scale) and the label-smoothed loss: gradients w.r.t.
/// the head weight, the head input and the BN shift; and `xent`'s dlogits w.r.t. the logits.
#[test]
fn head_and_loss() {
    let s = Shape::new(4, 3, 3, 8);
    let classes = 10;
    let scale = 1.0 / 8.0;
    let x = randn(s.len(), 21);
    let w = randn(classes * s.c, 22);
    let beta = randn(s.c, 23);
    let labels: Vec<u8> = vec![3, 9, 0, 3];
    let aug: Vec<u32> = (0..s.n).map(|index| pack(Aug { index, sy: 0, sx: 0, flip: false })).collect();
    let forward = |x: &[f64], w: &[f64], beta: &[f64]| {
        let aff = Affine::from_bn_buf(&batch_bn(x, s), beta);
        let (mut feat, mut am, mut logits) = (vec![0.0; s.n * s.c], vec![0u8; s.n * s.c], vec![0.0; s.n * classes]);
        head(x, s, &aff, w, classes, scale as f32, &mut feat, &mut am, &mut logits);
        let (mut dl, mut acc) = (vec![0.0; logits.len()], vec![0.0; 2]);
        xent(&logits, &labels, &aug, s.n, classes, 0.2, &mut dl, &mut acc);
        (acc[0], feat, am, logits, dl)
    };
    let (_, feat, am, logits, dl) = forward(&x, &w, &beta);
    let xent_loss = |l: &[f64]| {
        let (mut d, mut acc) = (vec![0.0; l.len()], vec![0.0; 2]);
        xent(l, &labels, &aug, s.n, classes, 0.2, &mut d, &mut acc);
        acc[0]
    };
    check("xent dlogits", &logits, &dl, logits.len(), xent_loss);
    let aff = Affine::from_bn_buf(&batch_bn(&x, s), &beta);
    let (mut dw, mut da) = (vec![f64::NAN; w.len()], vec![f64::NAN; s.len()]);
    head_bwd(&dl, &feat, &am, &w, s, classes, scale as f32, &mut dw, &mut da);
    let (mut dbeta, mut dx) = (vec![0.0; s.c], vec![0.0; s.len()]);
    pre_bwd(&da, &x, s, &aff, None, &mut dbeta, Some(&mut dx), 1);
    check("head dW", &w, &dw, 40, |w| forward(&x, w, &beta).0);
    check("head dx", &x, &dx, 60, |x| forward(x, &w, &beta).0);
    check("head dbeta", &beta, &dbeta, s.c, |b| forward(&x, &w, b).0);
}

#[test]
fn label_smoothed_loss_values() {
    // uniform logits: loss = ln 10 per example whatever the smoothing; dlogits = 0.1 − q
    let logits = vec![0.7f64; 20];
    let labels = vec![2u8, 5];
    let aug: Vec<u32> = (0..2).map(|index| pack(Aug { index, sy: 0, sx: 0, flip: false })).collect();
    let (mut dl, mut acc) = (vec![0.0; 20], vec![0.0; 2]);
    xent(&logits, &labels, &aug, 2, 10, 0.2, &mut dl, &mut acc);
    assert!((acc[0] - 2.0 * 10f64.ln()).abs() < 1e-12);
    // (the smoothing is an f32 hyperparameter: 1e-8)
    assert!((dl[2] - (0.1 - 0.82)).abs() < 1e-8 && (dl[3] - (0.1 - 0.02)).abs() < 1e-8);
    // argmax ties go to the first class, which is not the label: no correct predictions
    assert_eq!(acc[1], 0.0);
}
