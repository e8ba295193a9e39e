//! bf16 matrix products for the mixed precision of `finetune --precision bf16`, on Intel AMX
//! tiles (`TDPBF16PS`; Sapphire Rapids and later Xeons) or, without them, on AVX512-BF16
//! vectors (`VDPBF16PS`; Cooper Lake, AMD Zen 4 and later).
//!
//! In: two f32 matrices, each read through a row and a column stride (so a transposed operand
//! needs no copy). Out: their f32 product. The operands are rounded to bf16 (to nearest, ties
//! to even, as `half::bf16::from_f32`) while they are packed into 1 KiB tiles; products and sums
//! stay f32 in the tile accumulators. Both units read the same packed operands. Stable Rust
//! has no AMX intrinsics, so the five tile instructions are written with `asm!`; Linux must be
//! asked once per process for the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`). [`unit`] picks AMX, else AVX512-BF16; `DISTILL_NO_AMX` and
//! `DISTILL_NO_AVX512BF16` take a unit away (to compare them, or with the plain path), and
//! [`available`] is false on a CPU with neither.

use std::sync::OnceLock;

use rayon::prelude::*;

/// A matrix of f32 read as `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// Rows of a tile, bf16 values in a tile row, and bf16 values in a tile (1 KiB).
const TM: usize = 16;
const TK: usize = 32;
const TILE: usize = TM * TK;

/// The unit that multiplies: Intel's AMX tiles (`TDPBF16PS`, 16 × 16 × 32 per instruction) or
/// AVX512-BF16 vectors (`VDPBF16PS`, 16 lanes × a pair per instruction; Cooper Lake, Zen 4
/// and later). Both read the same packed operands and sum in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Amx,
    Avx512Bf16,
}

/// The unit [`matmul`] runs on here, the faster one when the CPU has both; `None` on a CPU
/// with neither (then [`available`] is false and callers multiply through candle).
pub fn unit() -> Option<Unit> {
    static UNIT: OnceLock<Option<Unit>> = OnceLock::new();
    *UNIT.get_or_init(|| {
        if detect_amx() {
            Some(Unit::Amx)
        } else if detect_avx512_bf16() {
            Some(Unit::Avx512Bf16)
        } else {
            None
        }
    })
}

/// Whether this process can run [`matmul`].
pub fn available() -> bool {
    unit().is_some()
}

#[cfg(target_arch = "x86_64")]
fn detect_avx512_bf16() -> bool {
    std::env::var_os("DISTILL_NO_AVX512BF16").is_none()
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_avx512_bf16() -> bool {
    false
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unused_unsafe)]
fn detect_amx() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    if std::env::var_os("DISTILL_NO_AMX").is_some() {
        return false;
    }
    // SAFETY: cpuid exists on every x86_64 CPU; leaf 7 is read only when the CPU has it.
    let leaf7 = unsafe {
        if __cpuid(0).eax < 7 {
            return false;
        }
        __cpuid_count(7, 0)
    };
    let (amx_bf16, amx_tile) = ((leaf7.edx >> 22) & 1 == 1, (leaf7.edx >> 24) & 1 == 1);
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a request for the tile state; the kernel answers 0 or an error, nothing else.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect_amx() -> bool {
    false
}

/// f32 → bf16 bits, to nearest with ties to even; NaN stays NaN (branch-free, so that the
/// packing loops vectorise).
#[inline(always)]
fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let quiet = (b >> 16) | 0x40;
    (if b & 0x7fff_ffff > 0x7f80_0000 { quiet } else { rounded }) as u16
}

/// The value a bf16 rounding gives back as f32 (for references in tests and fallbacks).
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((bf16(x) as u32) << 16)
}

/// A tile buffer's bf16 values (two per `u32`: buffers are `u32` so that VNNI pairs can be
/// written whole).
fn halves(v: &mut [u32]) -> &mut [u16] {
    // SAFETY: u16 has no invalid values and half the alignment of u32; same bytes.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u16>(), v.len() * 2) }
}

/// Rounds a contiguous run.
#[inline(always)]
fn convert(src: &[f32], dst: &mut [u16]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = bf16(v);
    }
}

/// `m × k` rows of `a` as tiles of 16 rows × 32 values into `out` (`mt × kb` tiles): tile
/// `(it, kt)` at `(it * kb + kt) * TILE`, row `r` of it at `r * 32`; rows past `m` and
/// values past `k` are zero.
fn pack_a(a: View, m: usize, k: usize, mt: usize, kb: usize, out: &mut [u32]) {
    let out = halves(out);
    if m != mt * TM || k != kb * TK {
        out.fill(0);
    }
    out.par_chunks_mut(kb * TILE).enumerate().for_each(|(it, dst)| {
        let rows = TM.min(m.saturating_sub(it * TM));
        if rows == 0 {
            return; // a padding tile: zeros
        }
        if a.cs == 1 {
            for r in 0..rows {
                let i = it * TM + r;
                let row = &a.data[i * a.rs..i * a.rs + k];
                for (kt, chunk) in row.chunks(TK).enumerate() {
                    convert(chunk, &mut dst[kt * TILE + r * TK..kt * TILE + r * TK + chunk.len()]);
                }
            }
        } else if a.rs == 1 {
            // columns of a are contiguous: 16 rows of one column at a time
            for p in 0..k {
                let col = &a.data[p * a.cs + it * TM..p * a.cs + it * TM + rows];
                let base = (p / TK) * TILE + p % TK;
                for (r, &v) in col.iter().enumerate() {
                    dst[base + r * TK] = bf16(v);
                }
            }
        } else {
            for r in 0..rows {
                for p in 0..k {
                    dst[(p / TK) * TILE + r * TK + p % TK] = bf16(a.data[(it * TM + r) * a.rs + p * a.cs]);
                }
            }
        }
    });
}

/// `k × n` columns of `b` as VNNI tiles into `out` (`nt × kb` tiles): tile `(jt, kt)` at
/// `(jt * kb + kt) * TILE / 2` (in u32) holds, as its row `q` and column `j`, the pair
/// `b[kt*32 + 2q][jt*16 + j]` (low half) and `b[kt*32 + 2q + 1][jt*16 + j]` (high half), as
/// `TDPBF16PS` reads them; columns past `n` and rows past `k` are zero.
fn pack_b(b: View, k: usize, n: usize, nt: usize, kb: usize, out: &mut [u32]) {
    const PAIRS: usize = TILE / 2; // u32 per tile
    if n != nt * TM || k != kb * TK {
        out.fill(0);
    }
    out.par_chunks_mut(kb * PAIRS).enumerate().for_each(|(jt, dst)| {
        let cols = TM.min(n.saturating_sub(jt * TM));
        if cols == 0 {
            return; // a padding tile: zeros
        }
        let j0 = jt * TM;
        if b.cs == 1 {
            // rows of b are contiguous: a pair of rows gives a tile row of 16 pairs
            let mut lo = [0u16; TM];
            let mut hi = [0u16; TM];
            for pp in 0..k.div_ceil(2) {
                let (p0, p1) = (2 * pp, 2 * pp + 1);
                convert(&b.data[p0 * b.rs + j0..p0 * b.rs + j0 + cols], &mut lo[..cols]);
                if p1 < k {
                    convert(&b.data[p1 * b.rs + j0..p1 * b.rs + j0 + cols], &mut hi[..cols]);
                } else {
                    hi = [0; TM];
                }
                let row = &mut dst[(p0 / TK) * PAIRS + (pp % (TK / 2)) * TM..][..cols];
                for (j, o) in row.iter_mut().enumerate() {
                    *o = lo[j] as u32 | (hi[j] as u32) << 16;
                }
            }
        } else if b.rs == 1 {
            // columns of b are contiguous (b is a row-major matrix read transposed): 32
            // values of one column round into 16 pairs, which go down column j of the tile
            let mut run;
            for j in 0..cols {
                let col = &b.data[(j0 + j) * b.cs..(j0 + j) * b.cs + k];
                for (kt, chunk) in col.chunks(TK).enumerate() {
                    run = [0; TK];
                    convert(chunk, &mut run[..chunk.len()]);
                    let tile = &mut dst[kt * PAIRS..(kt + 1) * PAIRS];
                    for q in 0..TK / 2 {
                        tile[q * TM + j] = run[2 * q] as u32 | (run[2 * q + 1] as u32) << 16;
                    }
                }
            }
        } else {
            let dst = halves(dst);
            for j in 0..cols {
                for p in 0..k {
                    let v = b.data[p * b.rs + (j0 + j) * b.cs];
                    dst[(p / TK) * TILE + ((p % TK) / 2) * TK + 2 * j + (p & 1)] = bf16(v);
                }
            }
        }
    });
}

thread_local! {
    /// Packed operands reused call after call on a thread (no fresh pages each time); a
    /// nested call on the same thread (rayon work-stealing) packs into its own.
    static PACKED: std::cell::RefCell<(Vec<u32>, Vec<u32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The raw output pointer shared by the tasks, each writing its own 32 × 32 blocks.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint blocks of the output (see `matmul`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `c = a · b` (`a`: `m × k`, `b`: `k × n`, `c`: `m × n` row-major with row stride `ldc`;
/// `c` is overwritten) on [`unit`]. Call only when [`available`]. Work runs on the rayon pool.
pub fn matmul(m: usize, n: usize, k: usize, a: View, b: View, c: &mut [f32], ldc: usize) {
    let unit = unit().expect("bf16 matmul called on a CPU without AMX or AVX512-BF16");
    matmul_on(unit, m, n, k, a, b, c, ldc)
}

/// [`matmul`] on a named unit, which the CPU must have (tests run each one the CPU has).
#[allow(clippy::too_many_arguments)]
fn matmul_on(unit: Unit, m: usize, n: usize, k: usize, a: View, b: View, c: &mut [f32], ldc: usize) {
    assert!(m == 0 || n == 0 || c.len() >= (m - 1) * ldc + n, "output too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            c[i * ldc..i * ldc + n].fill(0.0);
        }
        return;
    }
    PACKED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (ap, bp) = &mut *bufs;
            packed_matmul(unit, m, n, k, a, b, c, ldc, ap, bp);
        }
        Err(_) => packed_matmul(unit, m, n, k, a, b, c, ldc, &mut Vec::new(), &mut Vec::new()),
    });
}

#[allow(clippy::too_many_arguments)]
fn packed_matmul(
    unit: Unit,
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    c: &mut [f32],
    ldc: usize,
    ap: &mut Vec<u32>,
    bp: &mut Vec<u32>,
) {
    let kb = k.div_ceil(TK);
    let mt = m.div_ceil(2 * TM) * 2;
    let nt = n.div_ceil(2 * TM) * 2;
    ap.resize(mt * kb * TILE / 2, 0);
    bp.resize(nt * kb * TILE / 2, 0);
    pack_a(a, m, k, mt, kb, ap);
    pack_b(b, k, n, nt, kb, bp);
    let (ap, bp): (&[u32], &[u32]) = (ap, bp);
    // Rows of `a` in blocks whose packed tiles stay in L2 (~768 KiB), swept by every column
    // pair of `b` in turn; a column pair's tiles stay in L1 while its blocks are computed.
    let rows_per_block = ((768 * 1024) / (kb * TILE * 2 * 2)).max(1) * 2 * TM;
    let threads = rayon::current_num_threads().max(1);
    let out = Out(c.as_mut_ptr());
    let (i2s, j2s) = (mt / 2, nt / 2);
    let mut lo = 0;
    while lo < i2s {
        let hi = (lo + rows_per_block / (2 * TM)).min(i2s);
        // split the rows too when there are few column pairs, so every thread has work
        let parts = (2 * threads).div_ceil(j2s).clamp(1, hi - lo);
        let tasks: Vec<(usize, usize, usize)> = (0..j2s)
            .flat_map(|j2| (0..parts).map(move |p| (j2, lo + (hi - lo) * p / parts, lo + (hi - lo) * (p + 1) / parts)))
            .collect();
        tasks.par_iter().for_each(|&(j2, i_lo, i_hi)| {
            // SAFETY: the CPU has the unit (and, for AMX, the process has the tile state; see
            // `unit`); the tiles read lie inside `ap` and `bp`, and the blocks written (rows of
            // i_lo..i_hi, columns of j2, clipped to m × n) belong to this task alone.
            unsafe {
                match unit {
                    Unit::Amx => blocks(ap, bp, kb, j2, i_lo, i_hi, m, n, out, ldc),
                    Unit::Avx512Bf16 => vector_blocks(ap, bp, kb, j2, i_lo, i_hi, m, n, out, ldc),
                }
            };
        });
        lo = hi;
    }
}

/// The 64-byte tile configuration: palette 1, eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    const fn new() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64; // bytes per row (u16 little-endian)
            c[48 + t] = TM as u8; // rows
            t += 1;
        }
        TileConfig(c)
    }
}

static CONFIG: TileConfig = TileConfig::new();

/// Computes the 32 × 32 output blocks of column pair `j2` and row pairs `i_lo..i_hi`.
///
/// # Safety
/// AMX must be available to this process; `ap`/`bp` packed by `pack_a`/`pack_b` with `kb`
/// k-tiles; `out` valid for `m × n` with row stride `ldc`, these blocks written by no one else.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
unsafe fn blocks(
    ap: &[u32],
    bp: &[u32],
    kb: usize,
    j2: usize,
    i_lo: usize,
    i_hi: usize,
    m: usize,
    n: usize,
    out: Out,
    ldc: usize,
) {
    use std::arch::asm;
    const STRIDE: usize = TK * 2; // bytes per tile row
    let mut acc = [0f32; 4 * TM * TM];
    let (ap, bp) = (ap.as_ptr().cast::<u16>(), bp.as_ptr().cast::<u16>());
    // SAFETY (every asm block): tile instructions on this thread's configured tiles, reading
    // whole tiles inside `ap`/`bp` and writing `acc` or this task's blocks of `out`.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
        let b0 = bp.add(2 * j2 * kb * TILE);
        let b1 = b0.add(kb * TILE);
        for i2 in i_lo..i_hi {
            let a0 = ap.add(2 * i2 * kb * TILE);
            let a1 = a0.add(kb * TILE);
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            for kt in 0..kb {
                asm!(
                    "tileloadd tmm4, [{a0} + {s}*1]",
                    "tileloadd tmm6, [{b0} + {s}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b1} + {s}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {s}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0.add(kt * TILE),
                    a1 = in(reg) a1.add(kt * TILE),
                    b0 = in(reg) b0.add(kt * TILE),
                    b1 = in(reg) b1.add(kt * TILE),
                    s = in(reg) STRIDE,
                    options(nostack, readonly),
                );
            }
            let (i0, j0) = (2 * i2 * TM, 2 * j2 * TM);
            // a whole 32 × 32 block inside the output goes straight there; an edge block
            // through `acc`, clipped
            let whole = i0 + 2 * TM <= m && j0 + 2 * TM <= n;
            let (p, ld) = if whole { (out.0.add(i0 * ldc + j0), ldc) } else { (acc.as_mut_ptr(), 2 * TM) };
            asm!(
                "tilestored [{c0} + {s}*1], tmm0",
                "tilestored [{c1} + {s}*1], tmm1",
                "tilestored [{c2} + {s}*1], tmm2",
                "tilestored [{c3} + {s}*1], tmm3",
                c0 = in(reg) p,
                c1 = in(reg) p.add(TM),
                c2 = in(reg) p.add(TM * ld),
                c3 = in(reg) p.add(TM * ld + TM),
                s = in(reg) ld * 4,
                options(nostack),
            );
            if !whole {
                for r in 0..(2 * TM).min(m.saturating_sub(i0)) {
                    for c in 0..(2 * TM).min(n.saturating_sub(j0)) {
                        *out.0.add((i0 + r) * ldc + j0 + c) = acc[r * 2 * TM + c];
                    }
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// [`blocks`] on AVX512-BF16 vectors: each 32-row block as four groups of 8 rows × the column
/// pair's 32 columns, 16 accumulators of 16 f32 lanes held in registers over the whole `k`. A
/// B tile's row `q` (16 columns × one k pair) is one vector load; row `r`'s pair `q` of an A
/// tile is broadcast to every lane; `VDPBF16PS` adds both products of the pair to each lane.
///
/// # Safety
/// The CPU must have AVX512F and AVX512-BF16; otherwise as [`blocks`].
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn vector_blocks(
    ap: &[u32],
    bp: &[u32],
    kb: usize,
    j2: usize,
    i_lo: usize,
    i_hi: usize,
    m: usize,
    n: usize,
    out: Out,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    const R: usize = 8; // rows of a group
    const PAIRS: usize = TILE / 2; // u32 per tile
    const ROW: usize = TK / 2; // u32 per tile row
    let j0 = 2 * j2 * TM;
    let cols = (2 * TM).min(n - j0);
    let mask = |c: usize| if c >= TM { u16::MAX } else { ((1u32 << c) - 1) as u16 };
    let (mask0, mask1) = (mask(cols), mask(cols.saturating_sub(TM)));
    // SAFETY (whole body): every pointer below stays inside `ap` (tiles of rows 2*i2.. of
    // kb k-tiles), `bp` (column pair j2's kb k-tiles) or this task's blocks of `out`.
    unsafe {
        let b0 = bp.as_ptr().add(2 * j2 * kb * PAIRS);
        let b1 = b0.add(kb * PAIRS);
        for i2 in i_lo..i_hi {
            for g in 0..2 * TM / R {
                let (it, r0) = (2 * i2 + g * R / TM, (g * R) % TM);
                let row0 = it * TM + r0;
                if row0 >= m {
                    break;
                }
                let a = ap.as_ptr().add(it * kb * PAIRS + r0 * ROW);
                let mut acc = [[_mm512_setzero_ps(); 2]; R];
                for kt in 0..kb {
                    let (at, bt0, bt1) = (a.add(kt * PAIRS), b0.add(kt * PAIRS), b1.add(kt * PAIRS));
                    for q in 0..ROW {
                        let bv0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bt0.add(q * TM).cast()));
                        let bv1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bt1.add(q * TM).cast()));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*at.add(r * ROW + q) as i32));
                            acc[0] = _mm512_dpbf16_ps(acc[0], av, bv0);
                            acc[1] = _mm512_dpbf16_ps(acc[1], av, bv1);
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate().take(R.min(m - row0)) {
                    let dst = out.0.add((row0 + r) * ldc + j0);
                    if cols == 2 * TM {
                        _mm512_storeu_ps(dst, acc[0]);
                        _mm512_storeu_ps(dst.add(TM), acc[1]);
                    } else {
                        _mm512_mask_storeu_ps(dst, mask0, acc[0]);
                        _mm512_mask_storeu_ps(dst.add(TM), mask1, acc[1]);
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn vector_blocks(
    _: &[u32],
    _: &[u32],
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: Out,
    _: usize,
) {
    unreachable!("AVX512-BF16 exists only on x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn blocks(_: &[u32], _: &[u32], _: usize, _: usize, _: usize, _: usize, _: usize, _: usize, _: Out, _: usize) {
    unreachable!("AMX exists only on x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `a · b` of the bf16-rounded operands, summed in f64.
    fn reference(m: usize, n: usize, k: usize, a: View, b: View) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    let x = round_bf16(a.data[i * a.rs + p * a.cs]) as f64;
                    let y = round_bf16(b.data[p * b.rs + j * b.cs]) as f64;
                    s += x * y;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn rounding_matches_half() {
        for x in [
            0.0f32,
            -0.0,
            1.0,
            1.003_906_2,
            1.011_718_8,
            std::f32::consts::PI,
            -2.5e-3,
            1e38,
            f32::INFINITY,
            f32::MIN_POSITIVE,
        ] {
            assert_eq!(bf16(x), half::bf16::from_f32(x).to_bits(), "{x}");
        }
        for x in values(10_000, 3) {
            assert_eq!(bf16(x * 1e3), half::bf16::from_f32(x * 1e3).to_bits());
        }
        assert!(round_bf16(f32::NAN).is_nan());
    }

    /// Every layout the linear layer uses (row-major, transposed either side), ragged sizes
    /// past tile edges and an output wider than the product, on each unit this CPU has; on a
    /// CPU with neither the test only checks that nothing claims one.
    #[test]
    fn products_equal_the_rounded_reference() {
        let units: Vec<Unit> = [(Unit::Amx, detect_amx()), (Unit::Avx512Bf16, detect_avx512_bf16())]
            .into_iter()
            .filter_map(|(u, has)| has.then_some(u))
            .collect();
        assert_eq!(available(), !units.is_empty());
        if units.is_empty() {
            eprintln!("no AMX or AVX512-BF16 on this CPU (or disabled by DISTILL_NO_*): bf16 matmul not exercised");
            return;
        }
        let shapes = [(1, 1, 1), (16, 16, 32), (33, 17, 65), (70, 40, 100), (64, 96, 31), (5, 130, 300), (96, 64, 900)];
        for unit in units {
            for &(m, n, k) in &shapes {
                let a = values(m * k, 1 + m as u64);
                let b = values(k * n, 2 + n as u64);
                let layouts: [(View, View); 3] = [
                    (View { data: &a, rs: k, cs: 1 }, View { data: &b, rs: n, cs: 1 }),
                    (View { data: &a, rs: 1, cs: m }, View { data: &b, rs: 1, cs: k }),
                    (View { data: &a, rs: k, cs: 1 }, View { data: &b, rs: 1, cs: k }),
                ];
                for (li, (va, vb)) in layouts.into_iter().enumerate() {
                    let want = reference(m, n, k, va, vb);
                    let ldc = n + 3; // three columns of the output past the product stay as they were
                    let mut got = vec![f32::NAN; m * ldc];
                    matmul_on(unit, m, n, k, va, vb, &mut got, ldc);
                    for i in 0..m {
                        for j in 0..ldc {
                            let g = got[i * ldc + j];
                            if j >= n {
                                assert!(g.is_nan(), "{unit:?} {m}x{n}x{k}: wrote past the product at ({i}, {j})");
                                continue;
                            }
                            let w = want[i * n + j];
                            assert!(
                                (g - w).abs() <= 1e-5 * (1.0 + w.abs()) * (k as f32).sqrt(),
                                "{unit:?} {m}x{n}x{k} layout {li} ({i}, {j}): {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}
