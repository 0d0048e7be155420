//! Direct stride-1 convolutions on NHWC tensors, register-blocked for AVX-512, for the
//! channel counts of ResNet-32 and the WINN nets (multiples of 16).
//!
//! im2col + GEMM copies each input value k*k times into a patch matrix: for a 3x3 layer
//! with 16 channels at 32x32 that is 75 MB per batch of 128, far outside the caches, and
//! the GEMM that follows has 16 columns, too narrow for its kernels (pipe bench: 93 GFLOP/s
//! forward, a fifth of the sgemm peak). Here each output tile of P pixels x 16 NV channels
//! is a block of P*NV vector registers; for every (ki, kj, c) the kernel loads one row of
//! weights and multiplies it by P broadcast input values, reading the input in place from
//! a zero-padded copy. The input gradient of a stride-1 convolution is the same kernel on
//! the output gradient with the weights rotated by 180 degrees and transposed; the weight
//! gradient accumulates x_shift^T g one (ki, kj) and 16 output channels at a time.
//!
//! Everything here returns None when it does not apply (no AVX-512, other channel counts);
//! callers then use im2col + GEMM.

use rayon::prelude::*;
use std::mem::MaybeUninit;

/// N x H x W x C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dims {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

/// Widest input or output the kernels take. Past it a layer's weights (9 x C x O floats)
/// no longer stay in the first cache levels while a tile walks them, and im2col + GEMM,
/// whose patch rows are then long, wins (pipe bench, winn64_train: 128 to 512 channels).
const MAX_CHANNELS: usize = 64;

/// Whether [`conv`] and [`wgrad`] take a layer of input `d`, O outputs, a k x k kernel and
/// padding p: the kernels are here, O is whole vectors of 16, neither side is wider than
/// [`MAX_CHANNELS`], and the padded image holds at least one kernel.
fn takes(d: Dims, o: usize, k: usize, p: usize) -> bool {
    available() && o.is_multiple_of(16) && o <= MAX_CHANNELS && d.c <= MAX_CHANNELS && p < k && d.h + 2 * p >= k && d.w + 2 * p >= k && d.n > 0
}

/// Whether the kernels run on this machine (checked once).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static YES: OnceLock<bool> = OnceLock::new();
        *YES.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// x zero-padded by `p` on every side: N x (H + 2p) x (W + 2p) x C. Only the border is
/// zeroed: a zero-filled buffer would be one more write pass over the whole of it.
fn padded(x: &[f32], d: Dims, p: usize) -> Vec<f32> {
    let (hp, wp) = (d.h + 2 * p, d.w + 2 * p);
    let (band, line) = (p * wp * d.c, d.w * d.c);
    let mut out = uninit(d.n * hp * wp * d.c);
    out.par_chunks_mut(hp * wp * d.c).zip(x.par_chunks(d.h * d.w * d.c)).for_each(|(o, img)| {
        o[..band + p * d.c].fill(MaybeUninit::new(0.0));
        for (r, row) in img.chunks(line).enumerate() {
            let at = ((r + p) * wp + p) * d.c;
            // SAFETY: MaybeUninit<f32> has the layout of f32.
            o[at..at + line].copy_from_slice(unsafe { &*(row as *const [f32] as *const [MaybeUninit<f32>]) });
            // right border of this row and left border of the next
            o[at + line..at + line + 2 * p * d.c].fill(MaybeUninit::new(0.0));
        }
        let tail = o.len() - band;
        o[tail..].fill(MaybeUninit::new(0.0));
    });
    // SAFETY: every element was written above: top band and the first row's left border,
    // each row, the borders between rows (the last row's right border runs into the bottom
    // band, which is written too).
    unsafe { assume_init(out) }
}

/// A buffer of `len` floats for a kernel that writes each of them once.
fn uninit(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialization.
    unsafe { v.set_len(len) };
    v
}

/// # Safety
/// Every element of `v` must have been written.
unsafe fn assume_init(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    Vec::from_raw_parts(v.as_mut_ptr() as *mut f32, v.len(), v.capacity())
}

/// conv(x, w) with a k x k kernel, stride 1 and zero padding `p` (< k): w is (k*k*C) x O,
/// rows ordered (ki, kj, c); the result is N x H' x W' x O. None unless O % 16 == 0 and
/// the kernels are available.
pub(crate) fn conv(x: &[f32], d: Dims, w: &[f32], o: usize, k: usize, p: usize) -> Option<Vec<f32>> {
    if !takes(d, o, k, p) {
        return None;
    }
    let (hp, wp) = (d.h + 2 * p, d.w + 2 * p);
    let (ho, wo) = (hp - k + 1, wp - k + 1);
    let xp = padded(x, d, p);
    let mut out = uninit(d.n * ho * wo * o);
    let geo = Geo { wp, c: d.c, k, o };
    out.par_chunks_mut(wo * o).enumerate().for_each(|(r, orow)| {
        let (img, oh) = (r / ho, r % ho);
        let x0 = (img * hp + oh) * wp * d.c;
        // SAFETY: the kernels were detected above; every index they form stays inside xp
        // (rows oh..oh+k of the padded image), w and orow (checked by `row` below).
        unsafe { row(&xp, x0, w, orow, wo, geo) };
    });
    // SAFETY: `row` stores every pixel and channel of its output row.
    Some(unsafe { assume_init(out) })
}

/// The input gradient of [`conv`]: conv_t(g, w) for stride 1, as a convolution of g (N x
/// H' x W' x O) with the rotated, transposed weights and padding k - 1 - p. None unless
/// C % 16 == 0.
pub(crate) fn conv_t(g: &[f32], d: Dims, w: &[f32], o: usize, k: usize, p: usize) -> Option<Vec<f32>> {
    if !available() || !d.c.is_multiple_of(16) || p >= k || d.c > MAX_CHANNELS || o > MAX_CHANNELS {
        return None;
    }
    let (ho, wo) = (d.h + 2 * p + 1 - k, d.w + 2 * p + 1 - k);
    // w_rot[(ki, kj, o), c] = w[(k-1-ki, k-1-kj, c), o]
    let c = d.c;
    let mut wr = vec![0f32; k * k * o * c];
    for ki in 0..k {
        for kj in 0..k {
            for oc in 0..o {
                for ci in 0..c {
                    wr[((ki * k + kj) * o + oc) * c + ci] = w[(((k - 1 - ki) * k + (k - 1 - kj)) * c + ci) * o + oc];
                }
            }
        }
    }
    conv(g, Dims { n: d.n, h: ho, w: wo, c: o }, &wr, c, k, k - 1 - p)
}

/// The weight gradient of [`conv`]: sum over images and pixels of x_shift^T g, (k*k*C) x O.
/// Images are split into fixed groups, each summed on its own and the groups added in
/// order, so the result does not depend on the thread count. None unless O % 16 == 0.
pub(crate) fn wgrad(x: &[f32], d: Dims, g: &[f32], o: usize, k: usize, p: usize) -> Option<Vec<f32>> {
    if !takes(d, o, k, p) {
        return None;
    }
    let (ho, wo) = (d.h + 2 * p + 1 - k, d.w + 2 * p + 1 - k);
    const GROUP: usize = 4;
    let kk = k * k * d.c;
    let parts: Vec<Vec<f32>> = (0..d.n.div_ceil(GROUP))
        .into_par_iter()
        .map(|grp| {
            let mut dw = vec![0f32; kk * o];
            for img in grp * GROUP..((grp + 1) * GROUP).min(d.n) {
                let xi = &x[img * d.h * d.w * d.c..(img + 1) * d.h * d.w * d.c];
                let gi = &g[img * ho * wo * o..(img + 1) * ho * wo * o];
                // SAFETY: as in `conv`; indices stay in xi, gi and dw.
                unsafe { wgrad_image(xi, gi, &mut dw, WGeo { h: d.h, w: d.w, p, ho, wo, c: d.c, k, o }) };
            }
            dw
        })
        .collect();
    let mut total = parts[0].clone();
    for part in &parts[1..] {
        for (t, v) in total.iter_mut().zip(part) {
            *t += v;
        }
    }
    Some(total)
}

#[derive(Clone, Copy)]
struct Geo {
    wp: usize,
    c: usize,
    k: usize,
    o: usize,
}

#[derive(Clone, Copy)]
struct WGeo {
    h: usize,
    w: usize,
    p: usize,
    ho: usize,
    wo: usize,
    c: usize,
    k: usize,
    o: usize,
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// One output row: tiles of P pixels (the largest of P_MAIN, 4, 2, 1 that fits) times NV
/// vectors of 16 output channels.
///
/// # Safety
/// AVX-512F and FMA must be available; x0 + the row's input span must lie in xp.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn row(xp: &[f32], x0: usize, w: &[f32], out: &mut [MaybeUninit<f32>], wo: usize, geo: Geo) {
    assert!(out.len() == wo * geo.o && w.len() == geo.k * geo.k * geo.c * geo.o);
    let mut ob = 0;
    while ob < geo.o {
        let nv = if (geo.o - ob).is_multiple_of(64) { 4 } else if (geo.o - ob).is_multiple_of(32) { 2 } else { 1 };
        let mut px = 0;
        while px < wo {
            let left = wo - px;
            let t = TileAt { x0: x0 + px * geo.c, out0: px * geo.o, ob };
            px += match nv {
                4 if left >= 6 => tile::<4, 6>(xp, w, out, t, geo),
                4 if left >= 2 => tile::<4, 2>(xp, w, out, t, geo),
                4 => tile::<4, 1>(xp, w, out, t, geo),
                2 if left >= 12 => tile::<2, 12>(xp, w, out, t, geo),
                2 if left >= 4 => tile::<2, 4>(xp, w, out, t, geo),
                2 => tile::<2, 1>(xp, w, out, t, geo),
                _ if left >= 14 => tile::<1, 14>(xp, w, out, t, geo),
                _ if left >= 4 => tile::<1, 4>(xp, w, out, t, geo),
                _ => tile::<1, 1>(xp, w, out, t, geo),
            };
        }
        ob += 16 * nv;
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn row(_: &[f32], _: usize, _: &[f32], _: &mut [MaybeUninit<f32>], _: usize, _: Geo) {
    unreachable!("available() is false off x86-64")
}

#[derive(Clone, Copy)]
struct TileAt {
    /// Input index of the tile's first pixel at (ki, kj, c) = (0, 0, 0).
    x0: usize,
    /// Output index of the tile's first pixel, channel 0.
    out0: usize,
    /// First output channel.
    ob: usize,
}

/// P pixels x 16 NV output channels, accumulated in registers over (ki, kj, c). Returns P.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn tile<const NV: usize, const P: usize>(xp: &[f32], w: &[f32], out: &mut [MaybeUninit<f32>], t: TileAt, geo: Geo) -> usize {
    let Geo { wp, c, k, o } = geo;
    // bounds of everything read and written below
    assert!(t.x0 + ((k - 1) * wp + (k - 1) + P - 1) * c + c <= xp.len());
    assert!(t.out0 + (P - 1) * o + t.ob + 16 * NV <= out.len());
    let mut acc = [[_mm512_setzero_ps(); NV]; P];
    let xptr = xp.as_ptr();
    let wptr = w.as_ptr();
    for ki in 0..k {
        for kj in 0..k {
            let xo = t.x0 + (ki * wp + kj) * c;
            let wr = (ki * k + kj) * c;
            for ci in 0..c {
                let wrow = wptr.add((wr + ci) * o + t.ob);
                let mut wv = [_mm512_setzero_ps(); NV];
                for (v, slot) in wv.iter_mut().enumerate() {
                    *slot = _mm512_loadu_ps(wrow.add(16 * v));
                }
                for (p, a) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*xptr.add(xo + p * c + ci));
                    for v in 0..NV {
                        a[v] = _mm512_fmadd_ps(xv, wv[v], a[v]);
                    }
                }
            }
        }
    }
    let optr = out.as_mut_ptr() as *mut f32;
    for (p, a) in acc.iter().enumerate() {
        for (v, reg) in a.iter().enumerate() {
            _mm512_storeu_ps(optr.add(t.out0 + p * o + t.ob + 16 * v), *reg);
        }
    }
    P
}

/// dw += x_shift^T g for one image: for each (ki, kj) and 16 output channels, CB input
/// channels at a time in registers, over every output pixel.
///
/// # Safety
/// AVX-512F and FMA must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn wgrad_image(xi: &[f32], gi: &[f32], dw: &mut [f32], geo: WGeo) {
    let WGeo { c, .. } = geo;
    let mut c0 = 0;
    while c0 < c {
        let left = c - c0;
        c0 += if left >= 16 {
            wgrad_block::<16>(xi, gi, dw, c0, geo)
        } else if left >= 8 {
            wgrad_block::<8>(xi, gi, dw, c0, geo)
        } else if left >= 4 {
            wgrad_block::<4>(xi, gi, dw, c0, geo)
        } else if left == 3 {
            wgrad_block::<3>(xi, gi, dw, c0, geo)
        } else {
            wgrad_block::<1>(xi, gi, dw, c0, geo)
        };
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn wgrad_image(_: &[f32], _: &[f32], _: &mut [f32], _: WGeo) {
    unreachable!("available() is false off x86-64")
}

/// Input channels c0..c0+CB of every (ki, kj) row of dw, all output channels. Returns CB.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn wgrad_block<const CB: usize>(xi: &[f32], gi: &[f32], dw: &mut [f32], c0: usize, geo: WGeo) -> usize {
    let WGeo { h, w, p, ho, wo, c, k, o } = geo;
    assert!(xi.len() >= h * w * c && gi.len() >= ho * wo * o && dw.len() >= k * k * c * o && c0 + CB <= c);
    let (xptr, gptr, dptr) = (xi.as_ptr(), gi.as_ptr(), dw.as_mut_ptr());
    for ki in 0..k {
        // Output rows and columns whose shifted input lies inside x; the rest read the
        // zero padding and add nothing, so x is read in place, never padded.
        let (oh0, oh1) = (p.saturating_sub(ki), (h + p).saturating_sub(ki).min(ho));
        for kj in 0..k {
            let (ow0, ow1) = (p.saturating_sub(kj), (w + p).saturating_sub(kj).min(wo));
            for ob in (0..o).step_by(16) {
                let mut acc = [_mm512_setzero_ps(); CB];
                for oh in oh0..oh1 {
                    // x at (oh + ki - p, ow0 + kj - p): the row's first pixel read
                    let xrow = ((oh + ki - p) * w + (ow0 + kj - p)) * c + c0;
                    let grow = oh * wo * o + ob;
                    for ow in ow0..ow1 {
                        let gv = _mm512_loadu_ps(gptr.add(grow + ow * o));
                        let xs = xptr.add(xrow + (ow - ow0) * c);
                        for (cb, a) in acc.iter_mut().enumerate() {
                            *a = _mm512_fmadd_ps(_mm512_set1_ps(*xs.add(cb)), gv, *a);
                        }
                    }
                }
                for (cb, a) in acc.iter().enumerate() {
                    let at = dptr.add(((ki * k + kj) * c + c0 + cb) * o + ob);
                    _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), *a));
                }
            }
        }
    }
    CB
}
