/* tensor/cuda/attention_flash.cu -- ATTENTION for F16/BF16 on tensor cores: one fused kernel in the
 * manner of flash-attention 2 (mma.sync m16n8k16 through inline PTX, fp32 accumulators and an
 * online softmax), for heads of up to CUDA_FLASH_DMAX channels. attention.cu picks this path.
 * Owns: nothing (no scratch: the score matrix only ever exists one tile at a time, in registers).
 * Threads: the backend's worker; every launch goes on ctx->stream.
 * DESIGN. A CTA of W warps with RB m16 row blocks each owns BQ = 16 RB W consecutive queries of
 * one (image, head) (grid: query tiles x heads x images); warp w owns queries 16 RB w .. + 16 RB - 1
 * of the tile, row block r of them 16 r .. 16 r + 15 of those. 128 queries per CTA (halving the
 * key/value traffic per query) when the grid of them still gives every SM a CTA: up to DP = 64 as
 * 4 warps of RB = 2 (each K or V fragment loaded by ldmatrix feeds two mma's, halving the
 * shared-memory reads per FLOP; up to 255 registers, 2 CTAs per SM), up to DP = 128 as 8 warps of
 * RB = 1 (RB = 2 would spill there); else, and always above DP = 128, 64 queries as 4 warps of
 * RB = 1. Shared memory holds, as raw 16-bit patterns of T, rows of LD = DP + 8 elements:
 *   qs [BQ][LD]      the CTA's queries, staged once;
 *   ks [2][BK][LD]   two key tiles (keys x channels), double-buffered;
 *   vs [2][BK][LD]   two value tiles (keys x channels, not transposed: ldmatrix.trans reads them),
 * where DP is d rounded up to a multiple of 16 (one of the instantiated sizes) and the channels
 * d .. DP - 1, the queries past nq and the keys past nk are zeros, so the products need no tail
 * code. BK = 64 keys for DP <= 128, 32 above (registers). The +8 pads make every ldmatrix phase
 * (8 rows of 16 bytes) hit 32 different banks: a row is DP/2 + 4 words, and (8m + 4) g mod 32
 * for g = 0..7 are 8 distinct multiples of 4.
 * Pipeline: tiles move global -> shared by cp.async (16-byte chunks, zero-filled past nk and d;
 * element-wise stores when rows are not 16-byte aligned), K and V of a tile as two commit groups,
 * K first (Q joins K of tile 0). Iteration i: wait_group 1 (K tile i landed, V tile i may fly),
 * barrier A (K tile i visible; every warp done with K and V tile i - 1), issue K then V of tile
 * i + 1 into the other buffers, S = Q K^T and the softmax of tile i; wait_group 2 (V tile i
 * landed, tile i + 1 may fly; 0 on the last tile), barrier B (V tile i visible), O += P V. So S
 * starts while V is in flight, and tile i + 1 flies during both phases. A warp whose queries all
 * precede the tile (causal) skips the compute, never the waits and barriers.
 * Per key tile, each warp and row block: S = Q K^T (16 x BK, fp32 in mma accumulators; A
 * fragments of qs by ldmatrix.x4, kept in registers for DP RB <= 128; B fragments of ks rows by
 * ldmatrix.x4, two key n-tiles per load, shared by the row blocks); masking (key >= nk, or key >
 * query when causal, to -inf) only on the tiles that need it; the running row max m (raw score
 * units) and the rescale exp2((m_old - m_new) s) of the row sum l and the output accumulators O,
 * s = log2(e) / sqrt(d); P = exp2(S s - m s) (one FFMA and one exp2 per score) rounded to T
 * straight from the S accumulators into A fragments (the m16n8 accumulator layout of two
 * adjacent n-tiles is the m16k16 A layout), l summing the fp32 values as flash-attention 2 does;
 * O += P V with B fragments of vs by ldmatrix.x4.trans (two channel n-tiles per load, shared by
 * the row blocks). At the end O / l is rounded to T and stored (rows < nq, channels < d).
 * Thread (lane) layout of m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating
 * point type"), g = lane / 4, t = lane % 4: A regs {a0, a1, a2, a3} hold (row, col pairs)
 * (g, 2t), (g + 8, 2t), (g, 2t + 8), (g + 8, 2t + 8); B regs {b0, b1} hold (k pairs, col)
 * (2t, g), (2t + 8, g); C holds (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1). A pair is
 * two consecutive elements in one 32-bit register, the lower index in the low half.
 * ldmatrix.x4: lanes 8i .. 8i + 7 give the row addresses of 8 x 8 matrix i, and lane l receives
 * in register i the pair (row g, cols 2t, 2t + 1) of matrix i (.trans: (rows 2t, 2t + 1, col g)). */
#include "tensor/cuda/attention_flash.cuh"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* ===== Tensor-core primitives ===== */

/* One warp-wide D = A B + D on tensor cores (m16n8k16, fp32 accumulators) and the packing of
 * two fp32 probabilities into one A register, per storage type. */
template <typename T> struct fa_ops;

template <> struct fa_ops<__half> {
    static __device__ __forceinline__ void mma(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
        __trap(); /* never launched: cuda__attention_flash_covers checks the binary's arch */
#endif
    }
    /* x (lower column) and y rounded to fp16 in one register */
    static __device__ __forceinline__ uint32_t pack(float x, float y) {
        __half2 h = __floats2half2_rn(x, y);
        uint32_t u;
        memcpy(&u, &h, sizeof u);
        return u;
    }
};

template <> struct fa_ops<__nv_bfloat16> {
    static __device__ __forceinline__ void mma(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
        __trap();
#endif
    }
    static __device__ __forceinline__ uint32_t pack(float x, float y) {
        __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
        uint32_t u;
        memcpy(&u, &h, sizeof u);
        return u;
    }
};

/* 2^x by the SFU, subnormal results flushed to 0 (no range fix-up around it, as exp2f has):
 * the kernel only takes 2^x of x <= 0 (probabilities, rescales), where 2^-126 is as good as 0. */
static __device__ __forceinline__ float fa_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/* ===== Shared-memory primitives ===== */

static __device__ __forceinline__ uint32_t fa_saddr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* 16 bytes from global src to shared dst, asynchronously (cp.async); ok false: 16 zero bytes,
 * src not read (but a valid address). Visible after fa_cp_commit, fa_cp_wait and a barrier. */
static __device__ __forceinline__ void fa_cp16(uint16_t *dst, const uint16_t *src, bool ok) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(fa_saddr(dst)), "l"(src), "r"(ok ? 16 : 0)
                 : "memory");
#else
    __trap();
#endif
}
/* Closes this thread's group of issued copies. */
static __device__ __forceinline__ void fa_cp_commit(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
/* Waits until all but the N most recent of this thread's committed groups of copies have landed. */
template <int N> static __device__ __forceinline__ void fa_cp_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
/* One 16-bit store to shared memory (the element-wise staging path). */
static __device__ __forceinline__ void fa_st16(uint16_t *p, uint16_t x) { *p = x; }

/* ldmatrix.x4 (TRANS: .trans) of four 8 x 8 matrices of 16-bit elements; p: this lane's row
 * address (16-byte aligned), see DESIGN. */
template <bool TRANS> static __device__ __forceinline__ void fa_ldsm4(uint32_t r[4], const uint16_t *p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(fa_saddr(p))
                     : "memory");
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(fa_saddr(p))
                     : "memory");
#else
    __trap();
#endif
}

/* FA-EMU-BEGIN: the lines up to FA-EMU-END compile as host C++ under a shim (threads for lanes;
 * mma, ldmatrix, cp.async and shuffles emulated per the PTX layouts, shared-memory races and
 * reads of unwritten or in-flight elements reported): how the index math was checked without a
 * GPU. */

/* Tile sizes for a padded head size DP (a multiple of 16), W warps per CTA and RB m16 row blocks
 * per warp. Sizes in 16-bit elements unless said otherwise. */
template <int DP, int W, int RB> struct fa_cfg {
    static constexpr int BQ = 16 * RB * W;              /* queries per CTA: 16 RB per warp */
    static constexpr int THREADS = 32 * W;              /* threads per CTA */
    static constexpr int BK = DP <= 128 ? 64 : 32;      /* keys per tile */
    static constexpr int LD = DP + 8;                   /* row of every shared tile */
    static constexpr int SMEM = (BQ + 4 * BK) * LD * 2; /* bytes: qs, ks[2], vs[2] */
};

/* Stages rows r0 .. r0 + ROWS - 1 of a [n, c] matrix (src: its first row at the head's first
 * channel) into s[row][DP + 8]; channels d .. DP - 1 and rows past n are zeros. vec: d and c are
 * multiples of 8 and src is 16-byte aligned, so rows move as 16-byte cp.async chunks (consecutive
 * threads, consecutive chunks of a row); else element by element. All THREADS threads take part;
 * the caller commits, waits and syncs. */
template <int DP, int ROWS, int THREADS>
static __device__ __forceinline__ void fa_stage(uint16_t *s, const uint16_t *src, int64_t c, int64_t r0, int64_t n,
                                                int d, int vec) {
    constexpr int LD = DP + 8, CH = DP / 8; /* 16-byte chunks per row */
    if (vec) {
        for (int i = threadIdx.x; i < ROWS * CH; i += THREADS) {
            int r = i / CH, col = (i - r * CH) * 8;
            bool ok = r0 + r < n && col < d;
            fa_cp16(s + r * LD + col, ok ? src + (r0 + r) * c + col : src, ok);
        }
    } else {
        for (int i = threadIdx.x; i < ROWS * DP; i += THREADS) {
            int r = i / DP, col = i - r * DP;
            uint16_t x = 0;
            if (r0 + r < n && col < d) x = src[(r0 + r) * c + col];
            fa_st16(s + r * LD + col, x);
        }
    }
}

/* The kernel (DESIGN above). q, out [nb, nq, c], k, v [nb, nk, c]; grid (query tiles, heads,
 * images); scale_log2 = log2(e) / sqrt(d). */
template <typename T, int DP, int W, int RB>
__global__ void __launch_bounds__(32 * W, 1)
    attention_flash(T *out, const T *q, const T *k, const T *v, int64_t nq, int64_t nk, int64_t c, int d,
                    float scale_log2, int causal, int vec) {
    typedef fa_ops<T> F;
    typedef fa_cfg<DP, W, RB> C;
    constexpr int BQ = C::BQ, BK = C::BK, LD = C::LD, THREADS = C::THREADS;
    extern __shared__ __align__(16) uint16_t fa_smem[];
    uint16_t *qs = fa_smem;          /* [BQ][LD] */
    uint16_t *ks = qs + BQ * LD;     /* [2][BK][LD] */
    uint16_t *vs = ks + 2 * BK * LD; /* [2][BK][LD] */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3; /* the fragment's row group and thread in group */
    const int64_t b = blockIdx.z, h = blockIdx.y, q0 = (int64_t)blockIdx.x * BQ;
    const uint16_t *qg = (const uint16_t *)q + b * nq * c + h * d; /* row i of the head: qg + i c */
    const uint16_t *kg = (const uint16_t *)k + b * nk * c + h * d;
    const uint16_t *vg = (const uint16_t *)v + b * nk * c + h * d;
    /* this lane's ldmatrix row addresses (DESIGN): Q rows of the warp's A fragments (+ 16 r LD for
     * row block r, + 16 kk for channel step kk); K rows of key n-tiles 2jp, 2jp + 1 (+ 16 jp LD +
     * 16 kk); V rows of keys 16 kk .. + 15 for channel n-tiles 2np, 2np + 1 (+ 16 kk LD + 16 np) */
    const uint16_t *qa = qs + (warp * 16 * RB + (lane & 15)) * LD + (lane >> 4) * 8;
    const int koff = ((lane & 7) + ((lane >> 4) << 3)) * LD + ((lane >> 3) & 1) * 8;
    const int voff = ((lane & 7) + (((lane >> 3) & 1) << 3)) * LD + (lane >> 4) * 8;

    int64_t kend = nk;
    if (causal && q0 + BQ < kend) kend = q0 + BQ; /* the CTA's last query sees keys < q0 + BQ */

    /* the queries with the first key tile (one cp.async group), the first value tile (a second);
     * then Q fragments to registers while they fit (above, they would spill) */
    fa_stage<DP, BQ, THREADS>(qs, qg, c, q0, nq, d, vec);
    fa_stage<DP, BK, THREADS>(ks, kg, c, 0, nk, d, vec);
    fa_cp_commit();
    fa_stage<DP, BK, THREADS>(vs, vg, c, 0, nk, d, vec);
    fa_cp_commit();
    constexpr bool QREG = DP * RB <= 128;
    uint32_t qf[RB][QREG ? DP / 16 : 1][4];
    if constexpr (QREG) {
        fa_cp_wait<1>(); /* Q and K 0 (V 0 may still fly) */
        __syncthreads();
        for (int r = 0; r < RB; r++)
            for (int kk = 0; kk < DP / 16; kk++) fa_ldsm4<false>(qf[r][kk], qa + r * 16 * LD + kk * 16);
    }

    const int64_t wfirst = q0 + warp * 16 * RB, wlast = wfirst + 16 * RB - 1; /* the warp's first, last query */
    /* row block r: this thread's query rows wfirst + 16 r + g (0) and + 8 (1) */
    float o[RB][DP / 8][4]; /* O: 16 x DP per row block, n-tiles of 8 channels */
    float m0[RB], m1[RB];   /* running max (raw scores) of the two rows */
    float l0[RB], l1[RB];   /* this thread's part of their running sums */
    for (int r = 0; r < RB; r++) {
        for (int j = 0; j < DP / 8; j++) o[r][j][0] = o[r][j][1] = o[r][j][2] = o[r][j][3] = 0.0f;
        m0[r] = m1[r] = -INFINITY;
        l0[r] = l1[r] = 0.0f;
    }

    for (int64_t k0 = 0, it = 0; k0 < kend; k0 += BK, it++) {
        const bool more = k0 + BK < kend;
        fa_cp_wait<1>(); /* this thread's copies of K tile it have landed (V tile it may fly) */
        __syncthreads(); /* everyone's have; and no warp still reads K or V tile it - 1 */
        if (more) { /* tile it + 1 into the other buffers, K then V (two groups), in flight meanwhile */
            const int nbuf = (int)((it + 1) & 1);
            fa_stage<DP, BK, THREADS>(ks + nbuf * BK * LD, kg, c, k0 + BK, nk, d, vec);
            fa_cp_commit();
            fa_stage<DP, BK, THREADS>(vs + nbuf * BK * LD, vg, c, k0 + BK, nk, d, vec);
            fa_cp_commit();
        }
        const bool active = !causal || k0 <= wlast; /* else every key of the tile is past the warp's queries */
        const uint16_t *kt = ks + (it & 1) * BK * LD, *vt = vs + (it & 1) * BK * LD;

        /* S = Q K^T: 16 x BK per row block, n-tile j holds keys k0 + 8j .. k0 + 8j + 7; each K
         * fragment feeds RB mma's */
        float s[RB][BK / 8][4];
        float u0[RB], u1[RB]; /* the exponents' offsets of the two rows, log2 units */
        if (active) {
            for (int r = 0; r < RB; r++)
                for (int j = 0; j < BK / 8; j++) s[r][j][0] = s[r][j][1] = s[r][j][2] = s[r][j][3] = 0.0f;
            for (int kk = 0; kk < DP / 16; kk++) {
                uint32_t a[RB][4]; /* rows g, g + 8 x channels 16kk + 2t (+1), and + 8 */
                for (int r = 0; r < RB; r++) {
                    if constexpr (QREG)
                        a[r][0] = qf[r][kk][0], a[r][1] = qf[r][kk][1], a[r][2] = qf[r][kk][2], a[r][3] = qf[r][kk][3];
                    else
                        fa_ldsm4<false>(a[r], qa + r * 16 * LD + kk * 16);
                }
                for (int jp = 0; jp < BK / 16; jp++) {
                    uint32_t bb[4]; /* b of n-tile 2jp, then of 2jp + 1 */
                    fa_ldsm4<false>(bb, kt + jp * 16 * LD + kk * 16 + koff);
                    for (int r = 0; r < RB; r++) {
                        F::mma(s[r][2 * jp], a[r], bb);
                        F::mma(s[r][2 * jp + 1], a[r], bb + 2);
                    }
                }
            }

            /* mask where some key of the tile is past nk or (causal) past one of the warp's queries */
            if (k0 + BK > nk || (causal && k0 + BK - 1 > wfirst)) {
                for (int r = 0; r < RB; r++) {
                    const int64_t row0 = wfirst + 16 * r + g;
                    for (int j = 0; j < BK / 8; j++) {
                        for (int e = 0; e < 4; e++) {
                            int64_t key = k0 + j * 8 + 2 * t + (e & 1), row = e < 2 ? row0 : row0 + 8;
                            if (key >= nk || (causal && key > row)) s[r][j][e] = -INFINITY;
                        }
                    }
                }
            }
            for (int r = 0; r < RB; r++) {
                /* the new row max, over the old one and the tile (the 4 threads t = 0..3 share a row) */
                float x0 = m0[r], x1 = m1[r];
                for (int j = 0; j < BK / 8; j++) {
                    x0 = fmaxf(x0, fmaxf(s[r][j][0], s[r][j][1]));
                    x1 = fmaxf(x1, fmaxf(s[r][j][2], s[r][j][3]));
                }
                x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, 1));
                x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, 2));
                x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, 1));
                x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, 2));
                /* the offsets (0 while a row has seen nothing: exp2(-inf) = 0), the rescale of the
                 * old sums and O (the old offset is computed as it was then) */
                u0[r] = x0 == -INFINITY ? 0.0f : x0 * scale_log2;
                u1[r] = x1 == -INFINITY ? 0.0f : x1 * scale_log2;
                const float c0 = fa_exp2(m0[r] * scale_log2 - u0[r]), c1 = fa_exp2(m1[r] * scale_log2 - u1[r]);
                m0[r] = x0;
                m1[r] = x1;
                l0[r] *= c0;
                l1[r] *= c1;
                for (int j = 0; j < DP / 8; j++) {
                    o[r][j][0] *= c0;
                    o[r][j][1] *= c0;
                    o[r][j][2] *= c1;
                    o[r][j][3] *= c1;
                }
            }
        }

        if (more)
            fa_cp_wait<2>(); /* V tile it has landed (tile it + 1 may fly) */
        else
            fa_cp_wait<0>();
        __syncthreads(); /* everyone's V tile it has */
        if (!active) continue;

        /* O += P V, 16 keys at a time: n-tiles 2kk and 2kk + 1 of S are the A fragment; each V
         * fragment feeds RB mma's */
        for (int kk = 0; kk < BK / 16; kk++) {
            uint32_t a[RB][4];
            for (int r = 0; r < RB; r++) {
                const float *sa = s[r][2 * kk], *sb = s[r][2 * kk + 1];
                const float v0 = u0[r], v1 = u1[r];
                const float p0 = fa_exp2(fmaf(sa[0], scale_log2, -v0)), p1 = fa_exp2(fmaf(sa[1], scale_log2, -v0));
                const float p2 = fa_exp2(fmaf(sa[2], scale_log2, -v1)), p3 = fa_exp2(fmaf(sa[3], scale_log2, -v1));
                const float p4 = fa_exp2(fmaf(sb[0], scale_log2, -v0)), p5 = fa_exp2(fmaf(sb[1], scale_log2, -v0));
                const float p6 = fa_exp2(fmaf(sb[2], scale_log2, -v1)), p7 = fa_exp2(fmaf(sb[3], scale_log2, -v1));
                l0[r] += (p0 + p1) + (p4 + p5);
                l1[r] += (p2 + p3) + (p6 + p7);
                a[r][0] = F::pack(p0, p1);
                a[r][1] = F::pack(p2, p3);
                a[r][2] = F::pack(p4, p5);
                a[r][3] = F::pack(p6, p7);
            }
            for (int np = 0; np < DP / 16; np++) {
                uint32_t bb[4]; /* b of channel n-tile 2np, then of 2np + 1 */
                fa_ldsm4<true>(bb, vt + kk * 16 * LD + np * 16 + voff);
                for (int r = 0; r < RB; r++) {
                    F::mma(o[r][2 * np], a[r], bb);
                    F::mma(o[r][2 * np + 1], a[r], bb + 2);
                }
            }
        }
    }
    fa_cp_wait<0>(); /* nothing in flight at exit (the last tile waited for everything; cheap) */

    /* the row sums over the group's 4 threads; O / l to T */
    T *og = out + b * nq * c + h * d;
    for (int r = 0; r < RB; r++) {
        float s0 = l0[r], s1 = l1[r];
        s0 += __shfl_xor_sync(0xffffffffu, s0, 1);
        s0 += __shfl_xor_sync(0xffffffffu, s0, 2);
        s1 += __shfl_xor_sync(0xffffffffu, s1, 1);
        s1 += __shfl_xor_sync(0xffffffffu, s1, 2);
        const float i0 = s0 > 0.0f ? 1.0f / s0 : 0.0f, i1 = s1 > 0.0f ? 1.0f / s1 : 0.0f;
        const int64_t row0 = wfirst + 16 * r + g, row1 = row0 + 8;
        for (int j = 0; j < DP / 8; j++) {
            int col = j * 8 + 2 * t;
            if (row0 < nq) {
                if (col < d) og[row0 * c + col] = cuda_from_f32<T>(o[r][j][0] * i0);
                if (col + 1 < d) og[row0 * c + col + 1] = cuda_from_f32<T>(o[r][j][1] * i0);
            }
            if (row1 < nq) {
                if (col < d) og[row1 * c + col] = cuda_from_f32<T>(o[r][j][2] * i1);
                if (col + 1 < d) og[row1 * c + col + 1] = cuda_from_f32<T>(o[r][j][3] * i1);
            }
        }
    }
}

/* FA-EMU-END */

/* ===== Launchers ===== */

template <typename T, int DP, int W, int RB>
static int attention_flash_launch(struct cuda_ctx *ctx, T *out, const T *q, const T *k, const T *v, int64_t nb,
                                  int64_t nq, int64_t nk, int64_t c, int heads, int d, bool causal, struct err *err) {
    typedef fa_cfg<DP, W, RB> C;
    const int smem = C::SMEM;
    if (smem > 48 * 1024)
        CUDA_TRY(
            cudaFuncSetAttribute(attention_flash<T, DP, W, RB>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    bool vec = d % 8 == 0 && c % 8 == 0 && ((uintptr_t)q | (uintptr_t)k | (uintptr_t)v) % 16 == 0;
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)d); /* log2(e) / sqrt(d) */
    dim3 grid((unsigned)((nq + C::BQ - 1) / C::BQ), (unsigned)heads, (unsigned)nb);
    attention_flash<T, DP, W, RB><<<grid, C::THREADS, smem, ctx->stream>>>(out, q, k, v, nq, nk, c, d, scale_log2,
                                                                           causal ? 1 : 0, vec ? 1 : 0);
    CUDA_TRY_LAUNCH();
    return 0;
}

/* The instantiated padded head sizes; d takes the smallest that holds it. 128 queries per CTA
 * (4 warps of two row blocks up to 64, 8 warps of one up to 128) when the grid of them still
 * gives every SM a CTA, else 64 (4 warps of one); always 64 above 128 (registers). */
#define FA_SIZES_RB2(XX) XX(16) XX(32) XX(48) XX(64)
#define FA_SIZES_8(XX) XX(80) XX(96) XX(128)
#define FA_SIZES_4(XX) XX(160) XX(192) XX(256)

template <typename T>
static int attention_flash_cuda(struct cuda_ctx *ctx, T *out, const T *q, const T *k, const T *v, int64_t nb,
                                int64_t nq, int64_t nk, int64_t c, int heads, bool causal, struct err *err) {
    int d = (int)(c / heads);
    if (nb > 65535 || heads > 65535 || (nq + 63) / 64 > 0x7fffffff)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda flash attention: %lld images x %d heads exceed the grid",
                       (long long)nb, heads);
    /* 128 queries per CTA halve the key/value traffic per query, when the grid of them still gives
     * every SM a CTA; else 64 */
    int sms = 0;
    CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, ctx->device));
    const bool big = (nq + 127) / 128 * heads * nb >= sms;
#define FA_PICK_RB2(DP)                                                                                              \
    if (d <= DP)                                                                                                     \
        return big ? attention_flash_launch<T, DP, 4, 2>(ctx, out, q, k, v, nb, nq, nk, c, heads, d, causal, err)   \
                   : attention_flash_launch<T, DP, 4, 1>(ctx, out, q, k, v, nb, nq, nk, c, heads, d, causal, err);
#define FA_PICK8(DP)                                                                                                 \
    if (d <= DP)                                                                                                     \
        return big ? attention_flash_launch<T, DP, 8, 1>(ctx, out, q, k, v, nb, nq, nk, c, heads, d, causal, err)   \
                   : attention_flash_launch<T, DP, 4, 1>(ctx, out, q, k, v, nb, nq, nk, c, heads, d, causal, err);
#define FA_PICK4(DP)                                                                                                 \
    if (d <= DP)                                                                                                     \
        return attention_flash_launch<T, DP, 4, 1>(ctx, out, q, k, v, nb, nq, nk, c, heads, d, causal, err);
    FA_SIZES_RB2(FA_PICK_RB2)
    FA_SIZES_8(FA_PICK8)
    FA_SIZES_4(FA_PICK4)
#undef FA_PICK_RB2
#undef FA_PICK8
#undef FA_PICK4
    return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda flash attention: head size %d above %d", d, CUDA_FLASH_DMAX);
}

/* ===== Entry points (attention_flash.cuh) ===== */

bool cuda__attention_flash_covers(struct cuda_ctx *ctx, enum dtype dt, int d) {
    if ((dt != DTYPE_F16 && dt != DTYPE_BF16) || d < 1 || d > CUDA_FLASH_DMAX) return false;
    /* mma.sync m16n8k16 (bf16 above all) needs sm_80: the code the device runs must be built for it */
    cudaFuncAttributes fa;
    cudaError_t e = dt == DTYPE_F16 ? cudaFuncGetAttributes(&fa, attention_flash<__half, 64, 4, 1>)
                                    : cudaFuncGetAttributes(&fa, attention_flash<__nv_bfloat16, 64, 4, 1>);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); /* clear it: the caller takes another path */
        return false;
    }
    return fa.binaryVersion >= 80;
}

int cuda__attention_flash(struct cuda_ctx *ctx, enum dtype dt, void *out, const void *q, const void *k, const void *v,
                          int64_t nb, int64_t nq, int64_t nk, int64_t c, int heads, bool causal, struct err *err) {
    if (dt == DTYPE_F16)
        return attention_flash_cuda<__half>(ctx, (__half *)out, (const __half *)q, (const __half *)k,
                                            (const __half *)v, nb, nq, nk, c, heads, causal, err);
    if (dt == DTYPE_BF16)
        return attention_flash_cuda<__nv_bfloat16>(ctx, (__nv_bfloat16 *)out, (const __nv_bfloat16 *)q,
                                                   (const __nv_bfloat16 *)k, (const __nv_bfloat16 *)v, nb, nq, nk,
                                                   c, heads, causal, err);
    return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda flash attention: dtype %s", dtype_name(dt));
}
