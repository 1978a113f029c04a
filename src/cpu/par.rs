//! Deterministic parallelism for the CPU reference. A batch of `n` images is cut into `LANES`
//! fixed contiguous blocks whatever the number of threads; reductions keep one f64 accumulator
//! per block and add the blocks in order. Results are therefore bit-identical for a given
//! seed on any machine and any thread count.
use std::ops::Range;

pub const LANES: usize = 16;

/// Threads to use: `$CIFAR_CPU_THREADS` if set, else the available parallelism.
pub fn default_threads() -> usize {
    std::env::var("CIFAR_CPU_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&t: &usize| t > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn lanes(n: usize) -> Vec<Range<usize>> {
    (0..LANES).map(|l| l * n / LANES..(l + 1) * n / LANES).filter(|r| !r.is_empty()).collect()
}

/// Run `jobs` on up to `threads` threads (job i on thread i mod threads).
fn run<J: Send>(jobs: Vec<J>, threads: usize, f: impl Fn(J) + Sync) {
    if threads <= 1 || jobs.len() <= 1 {
        jobs.into_iter().for_each(f);
        return;
    }
    let mut buckets: Vec<Vec<J>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, j) in jobs.into_iter().enumerate() {
        buckets[i % threads].push(j);
    }
    let f = &f;
    std::thread::scope(|s| {
        for b in buckets {
            s.spawn(move || b.into_iter().for_each(f));
        }
    });
}

/// Calls `f(images, out_block)` for each block of images, where `out_block` is the part of
/// `out` (laid out `per_image` elements per image) belonging to those images.
pub fn images_mut<T: Send>(out: &mut [T], per_image: usize, threads: usize, f: impl Fn(Range<usize>, &mut [T]) + Sync) {
    assert!(per_image > 0 && out.len() % per_image == 0);
    let n = out.len() / per_image;
    let mut jobs = Vec::new();
    let mut rest = out;
    for r in lanes(n) {
        let (head, tail) = rest.split_at_mut(r.len() * per_image);
        jobs.push((r, head));
        rest = tail;
    }
    run(jobs, threads, |(r, block)| f(r, block));
}

/// `images_mut` over two outputs at once (e.g. pooled values and their argmax).
pub fn images_mut2<T: Send, U: Send>(
    out: &mut [T],
    per_image: usize,
    out2: &mut [U],
    per_image2: usize,
    threads: usize,
    f: impl Fn(Range<usize>, &mut [T], &mut [U]) + Sync,
) {
    assert!(per_image > 0 && out.len() % per_image == 0);
    let n = out.len() / per_image;
    assert_eq!(out2.len(), n * per_image2);
    let mut jobs = Vec::new();
    let (mut rest, mut rest2) = (out, out2);
    for r in lanes(n) {
        let (head, tail) = rest.split_at_mut(r.len() * per_image);
        let (head2, tail2) = rest2.split_at_mut(r.len() * per_image2);
        jobs.push((r, head, head2));
        rest = tail;
        rest2 = tail2;
    }
    run(jobs, threads, |(r, a, b)| f(r, a, b));
}

/// Sums `f(images, acc)` over blocks of `0..n` into one f64 vector of length `len`; each block
/// starts from zeros and blocks are added in order.
pub fn reduce(n: usize, len: usize, threads: usize, f: impl Fn(Range<usize>, &mut [f64]) + Sync) -> Vec<f64> {
    let ranges = lanes(n);
    let mut accs: Vec<Vec<f64>> = ranges.iter().map(|_| vec![0.0; len]).collect();
    let jobs: Vec<(Range<usize>, &mut Vec<f64>)> = ranges.into_iter().zip(accs.iter_mut()).collect();
    run(jobs, threads, |(r, acc)| f(r, acc));
    let mut total = vec![0.0; len];
    for a in &accs {
        for (t, v) in total.iter_mut().zip(a) {
            *t += v;
        }
    }
    total
}

/// Like `images_mut` and `reduce` at once: per-image outputs and a reduction in one pass.
pub fn images_mut_reduce<T: Send>(
    out: &mut [T],
    per_image: usize,
    len: usize,
    threads: usize,
    f: impl Fn(Range<usize>, &mut [T], &mut [f64]) + Sync,
) -> Vec<f64> {
    assert!(per_image > 0 && out.len() % per_image == 0);
    let n = out.len() / per_image;
    let ranges = lanes(n);
    let mut accs: Vec<Vec<f64>> = ranges.iter().map(|_| vec![0.0; len]).collect();
    let mut jobs = Vec::new();
    let mut rest = out;
    for (r, acc) in ranges.into_iter().zip(accs.iter_mut()) {
        let (head, tail) = rest.split_at_mut(r.len() * per_image);
        jobs.push((r, head, acc));
        rest = tail;
    }
    run(jobs, threads, |(r, block, acc)| f(r, block, acc));
    let mut total = vec![0.0; len];
    for a in &accs {
        for (t, v) in total.iter_mut().zip(a) {
            *t += v;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_do_not_depend_on_thread_count() {
        // values whose float sum depends on the order of addition
        let xs: Vec<f64> = (0..1000).map(|i| 1.0 / (i as f64 + 0.37) * if i % 3 == 0 { 1e8 } else { 1.0 }).collect();
        let sum = |threads| reduce(xs.len(), 1, threads, |r, acc| r.for_each(|i| acc[0] += xs[i]))[0];
        let one = sum(1);
        for t in [2, 3, 7, 16, 40] {
            assert_eq!(sum(t).to_bits(), one.to_bits());
        }
    }

    #[test]
    fn images_mut_covers_every_image_once() {
        for n in [1, 5, 16, 17, 100] {
            let mut out = vec![0u32; n * 3];
            images_mut(&mut out, 3, 4, |r, block| {
                assert_eq!(block.len(), r.len() * 3);
                for (k, i) in r.enumerate() {
                    for j in 0..3 {
                        block[k * 3 + j] += (i * 3 + j) as u32 + 1;
                    }
                }
            });
            assert_eq!(out, (1..=(n * 3) as u32).collect::<Vec<_>>());
        }
    }
}
