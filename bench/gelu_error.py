#!/usr/bin/env python3
"""The GPU's GELU and GELU' (kernels/common.cuh, normal_cdf_pdf: Abramowitz-Stegun 7.1.26 for
erfc) against the exact functions: every operation rounded to f32 as the kernels do it (numpy
float32; the GPU's ex2/rcp.approx add up to 2 ulp more), the reference in f64 from math.erfc.
Prints the largest absolute errors over u in [-12, 12] in steps of 1e-4 (every 50th point
against the reference) and the largest relative error of GELU for |u| < 6.

  python3 bench/gelu_error.py        (needs numpy)"""
import math

import numpy as np

f = np.float32
u = np.linspace(-12, 12, 240001).astype(f)
x = np.abs(u) * f(0.70710678118654752)
e = np.exp(-(x * x)).astype(f)
t = (f(1) / (f(1) + f(0.3275911) * x)).astype(f)
q = t * (f(0.254829592) + t * (f(-0.284496736) + t * (f(1.421413741) + t * (f(-1.453152027) + t * f(1.061405429)))))
half_tail = (f(0.5) * q * e).astype(f)
cdf = np.where(u >= 0, f(1) - half_tail, half_tail).astype(f)
gelu = (u * cdf).astype(f)
dgelu = (cdf + u * (f(0.3989422804014327) * e)).astype(f)
ud = u.astype(np.float64)
cdf_x = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in ud])
gelu_x = ud * cdf_x
dgelu_x = cdf_x + ud * np.exp(-ud * ud / 2) / math.sqrt(2 * math.pi)
print(f"points: {len(u)} in [{u[0]}, {u[-1]}]")
print(f"max |error| of Phi:   {np.max(np.abs(cdf - cdf_x)):.3e}")
print(f"max |error| of GELU:  {np.max(np.abs(gelu - gelu_x)):.3e}")
print(f"max |error| of GELU': {np.max(np.abs(dgelu - dgelu_x)):.3e}")
inner = (np.abs(ud) < 6) & (gelu_x != 0)
print(f"max relative error of GELU, |u| < 6: {np.max(np.abs(gelu - gelu_x)[inner] / np.abs(gelu_x[inner])):.3e}")
