//! The CPU reference: every op of the recipe in plain Rust, generic over the float type (f32 to
//! train, f64 for gradient checks). It is the oracle the GPU kernels are checked against, so
//! it favours obvious loops over cleverness; the only speed tricks are a register-blocked conv
//! core and deterministic threading (`par`).
pub mod conv;
#[cfg(test)]
mod gradcheck;
pub mod layers;
pub mod optim;
pub mod par;
pub mod real;

use crate::backend::{Backend, MuonParam, Norm, Pre, SgdParam, Shape};
use crate::error::Result;
use layers::Affine;
use real::Real;
use std::marker::PhantomData;

/// The CPU backend. `Buf` is a `Vec<T>`, so tests may read and perturb tensors directly.
pub struct Cpu<T: Real> {
    pub threads: usize,
    _t: PhantomData<T>,
}

impl<T: Real> Cpu<T> {
    pub fn new() -> Self {
        Self::with_threads(par::default_threads())
    }
    pub fn with_threads(threads: usize) -> Self {
        Cpu { threads: threads.max(1), _t: PhantomData }
    }
}

impl<T: Real> Default for Cpu<T> {
    fn default() -> Self {
        Self::new()
    }
}

fn affine<T: Real>(pre: Pre<'_, Cpu<T>>) -> Affine<T> {
    match pre {
        Pre::Bias(b) => Affine::bias(b),
        Pre::Bn { bn, beta } => Affine::from_bn_buf(bn, beta),
    }
}

impl<T: Real> Backend for Cpu<T> {
    type Buf = Vec<T>;
    type Bytes = Vec<u8>;
    type Words = Vec<u32>;

    fn describe(&self) -> String {
        format!("CPU reference ({}, {} threads)", std::any::type_name::<T>(), self.threads)
    }

    fn zeros(&mut self, n: usize) -> Result<Vec<T>> {
        Ok(vec![T::ZERO; n])
    }
    fn upload(&mut self, host: &[f32]) -> Result<Vec<T>> {
        Ok(host.iter().map(|&v| T::of(v as f64)).collect())
    }
    fn download(&mut self, buf: &Vec<T>) -> Result<Vec<f32>> {
        Ok(buf.iter().map(|v| v.f64() as f32).collect())
    }
    fn upload_bytes(&mut self, host: &[u8]) -> Result<Vec<u8>> {
        Ok(host.to_vec())
    }
    fn byte_zeros(&mut self, n: usize) -> Result<Vec<u8>> {
        Ok(vec![0; n])
    }
    fn upload_words(&mut self, host: &[u32]) -> Result<Vec<u32>> {
        Ok(host.to_vec())
    }
    fn write_words(&mut self, dst: &mut Vec<u32>, host: &[u32]) -> Result<()> {
        assert_eq!(dst.len(), host.len(), "write_words: length mismatch");
        dst.copy_from_slice(host);
        Ok(())
    }
    fn sync(&mut self) -> Result<()> {
        Ok(())
    }

    fn patch_cov(&mut self, images: &Vec<u8>, n: usize, norm: Norm) -> Result<Vec<f64>> {
        Ok(layers::patch_cov::<T>(images, n, norm, self.threads))
    }

    fn stem(
        &mut self,
        images: &Vec<u8>,
        total: usize,
        aug: &Vec<u32>,
        offset: usize,
        n: usize,
        norm: Norm,
        w: &Vec<T>,
        cw: usize,
        res: usize,
        out: &mut Vec<T>,
    ) -> Result<()> {
        layers::stem(images, total, &aug[offset..offset + n], n, norm, w, cw, res, out, self.threads);
        Ok(())
    }

    fn conv3x3(
        &mut self,
        x: &Vec<T>,
        xs: Shape,
        pre: Pre<'_, Self>,
        w: &Vec<T>,
        cout: usize,
        pool: bool,
        y: &mut Vec<T>,
        argmax: &mut Vec<u8>,
    ) -> Result<()> {
        conv::conv3x3(x, xs, &affine(pre), w, cout, pool, y, argmax, self.threads);
        Ok(())
    }

    fn bn_stats(
        &mut self,
        y: &Vec<T>,
        ys: Shape,
        eps: f32,
        momentum: f32,
        running_mean: &mut Vec<T>,
        running_var: &mut Vec<T>,
        bn: &mut Vec<T>,
    ) -> Result<()> {
        layers::bn_stats(y, ys, eps, momentum, running_mean, running_var, bn, self.threads);
        Ok(())
    }

    fn bn_eval(&mut self, running_mean: &Vec<T>, running_var: &Vec<T>, eps: f32, bn: &mut Vec<T>) -> Result<()> {
        layers::bn_eval(running_mean, running_var, eps, bn);
        Ok(())
    }

    fn head(
        &mut self,
        x: &Vec<T>,
        xs: Shape,
        pre: Pre<'_, Self>,
        w: &Vec<T>,
        classes: usize,
        scale: f32,
        feat: &mut Vec<T>,
        argmax: &mut Vec<u8>,
        logits: &mut Vec<T>,
    ) -> Result<()> {
        layers::head(x, xs, &affine(pre), w, classes, scale, feat, argmax, logits);
        Ok(())
    }

    fn xent(
        &mut self,
        logits: &Vec<T>,
        labels: &Vec<u8>,
        aug: &Vec<u32>,
        offset: usize,
        n: usize,
        classes: usize,
        smoothing: f32,
        dlogits: &mut Vec<T>,
        acc: &mut Vec<T>,
    ) -> Result<()> {
        layers::xent(logits, labels, &aug[offset..offset + n], n, classes, smoothing, dlogits, acc);
        Ok(())
    }

    fn axpy(&mut self, acc: &mut Vec<T>, x: &Vec<T>, weight: f32) -> Result<()> {
        assert_eq!(acc.len(), x.len(), "axpy: length mismatch");
        let wt = T::of(weight as f64);
        acc.iter_mut().zip(x).for_each(|(a, &v)| *a += wt * v);
        Ok(())
    }

    fn head_bwd(
        &mut self,
        dlogits: &Vec<T>,
        feat: &Vec<T>,
        argmax: &Vec<u8>,
        w: &Vec<T>,
        xs: Shape,
        classes: usize,
        scale: f32,
        dw: &mut Vec<T>,
        da: &mut Vec<T>,
    ) -> Result<()> {
        layers::head_bwd(dlogits, feat, argmax, w, xs, classes, scale, dw, da);
        Ok(())
    }

    fn pre_bwd(
        &mut self,
        da: &Vec<T>,
        x: &Vec<T>,
        xs: Shape,
        pre: Pre<'_, Self>,
        dshift: &mut Vec<T>,
        dx: Option<&mut Vec<T>>,
    ) -> Result<()> {
        layers::pre_bwd(da, x, xs, &affine(pre), dshift, dx.map(|v| v.as_mut_slice()), self.threads);
        Ok(())
    }

    fn conv3x3_bwd(
        &mut self,
        x: &Vec<T>,
        xs: Shape,
        pre: Pre<'_, Self>,
        w: &Vec<T>,
        cout: usize,
        pool: bool,
        argmax: &Vec<u8>,
        dy: &Vec<T>,
        dw: &mut Vec<T>,
        da: Option<&mut Vec<T>>,
    ) -> Result<()> {
        let da = da.map(|v| v.as_mut_slice());
        conv::conv3x3_bwd(x, xs, &affine(pre), w, cout, pool, argmax, dy, dw, da, self.threads);
        Ok(())
    }

    fn sgd(&mut self, params: &mut [SgdParam<'_, Self>], momentum: f32) -> Result<()> {
        for p in params.iter_mut() {
            optim::sgd(p.p, p.g, p.m, p.lr, p.wd, momentum);
        }
        Ok(())
    }

    fn muon(&mut self, params: &mut [MuonParam<'_, Self>], lr: f32, momentum: f32, ns_steps: usize) -> Result<()> {
        for p in params.iter_mut() {
            optim::muon(p.w, p.g, p.m, p.rows, p.cols, lr, momentum, ns_steps);
        }
        Ok(())
    }
}
