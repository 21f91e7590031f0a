/* tensor/cuda/attention_flash.cu -- ATTENTION for F16/BF16 on tensor cores: one fused kernel in the
 * manner of flash-attention 2 (mma.sync m16n8k16 through inline PTX, fp32 accumulators and an
 * online softmax), for heads of up to CUDA_FLASH_DMAX channels. attention.cu picks this path.
 * Owns: nothing (no scratch: the score matrix only ever exists one tile at a time, in registers).
 * Threads: the backend's worker; every launch goes on ctx->stream.
 * DESIGN. A CTA of FA_WARPS = 4 warps owns FA_BQ = 64 consecutive queries of one (image, head)
 * (grid: query tiles x heads x images); warp w owns queries 16w .. 16w + 15 of the tile, one
 * m16 row block of every product. Shared memory holds, as raw 16-bit patterns of T:
 *   qs [FA_BQ][DP + 8]  the CTA's queries, staged once;
 *   ks [BK][DP + 8]     the current key tile (row-major, keys x channels);
 *   vt [DP][BK + 8]     the current value tile transposed (channels x keys),
 * where DP is d rounded up to a multiple of 16 (one of the instantiated sizes) and the channels
 * d .. DP - 1, the queries past nq and the keys past nk are zeros, so the products need no tail
 * code. BK = 64 keys for DP <= 128, 32 above (registers). The +8 pads make every fragment load
 * (8 rows x 4 words) hit 32 different banks: a row is DP/2 + 4 words, and (8m + 4) g mod 32 for
 * g = 0..7 are 8 distinct multiples of 4.
 * Per key tile, each warp: S = Q K^T (16 x BK, fp32 in mma accumulators: A fragments from qs
 * rows, loaded once into registers when DP <= 128, B fragments from ks rows, both as 32-bit
 * pairs along the channel axis); scale by log2(e) / sqrt(d) and mask (key >= nk, or key > query when causal) to -inf; the running row
 * max m and the rescale exp2(m_old - m_new) of the row sum l and the output accumulators O;
 * P = exp2(S - m) rounded to T straight from the S accumulators into A fragments (the m16n8
 * accumulator layout of two adjacent n-tiles is the m16k16 A layout), with l summing the
 * rounded values, so that O / l is a convex combination of v rows; O += P V with B fragments
 * from vt rows. At the end O / l is rounded to T and stored (rows < nq, channels < d).
 * Thread (lane) layout of m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating
 * point type"), g = lane / 4, t = lane % 4: A regs {a0, a1, a2, a3} hold (row, col pairs)
 * (g, 2t), (g + 8, 2t), (g, 2t + 8), (g + 8, 2t + 8); B regs {b0, b1} hold (k pairs, col)
 * (2t, g), (2t + 8, g); C holds (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1). A pair is
 * two consecutive elements in one 32-bit register, the lower index in the low half. */
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
    /* x (lower column) and y rounded to fp16 in one register; adds the rounded values to *sum */
    static __device__ __forceinline__ uint32_t pack(float x, float y, float *sum) {
        __half2 h = __floats2half2_rn(x, y);
        *sum += __low2float(h) + __high2float(h);
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
    static __device__ __forceinline__ uint32_t pack(float x, float y, float *sum) {
        __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
        *sum += __low2float(h) + __high2float(h);
        uint32_t u;
        memcpy(&u, &h, sizeof u);
        return u;
    }
};

/* Two consecutive 16-bit elements of shared memory (p 4-byte aligned) as one register. */
static __device__ __forceinline__ uint32_t fa_ld32(const uint16_t *p) { return *(const uint32_t *)p; }

/* FA-EMU-BEGIN: the lines up to FA-EMU-END compile as host C++ under a shim (threads for lanes,
 * mma and shuffles emulated per the PTX layouts): how the index math was checked without a GPU. */

#define FA_WARPS 4                 /* warps per CTA */
#define FA_BQ (16 * FA_WARPS)      /* queries per CTA: 16 per warp */
#define FA_THREADS (32 * FA_WARPS) /* threads per CTA */

/* Tile sizes for a padded head size DP (a multiple of 16). Sizes in 16-bit elements. */
template <int DP> struct fa_cfg {
    static constexpr int BK = DP <= 128 ? 64 : 32;                          /* keys per tile */
    static constexpr int LDD = DP + 8;                                      /* row of qs and ks */
    static constexpr int LDK = BK + 8;                                      /* row of vt */
    static constexpr int SMEM = (FA_BQ * LDD + BK * LDD + DP * LDK) * 2;    /* in bytes */
};

/* Stages rows r0 .. r0 + ROWS - 1 of a [n, c] matrix (src: its first row at the head's first
 * channel) into shared memory: s[row][ld] row-major, or with TRANS s[channel][ld] (transposed);
 * channels d .. DP - 1 and rows past n are zeros. vec: d and c are multiples of 8 and src is
 * 16-byte aligned, so rows move in 16-byte chunks. All FA_THREADS threads take part.
 * Transposed, a thread takes one chunk of two consecutive rows and stores 8 words (the two rows'
 * values of one channel); consecutive threads take consecutive row pairs of one chunk, so one
 * store instruction of a warp writes 32 consecutive words of a row of s (one wavefront). */
template <int DP, int ROWS, bool TRANS>
static __device__ __forceinline__ void fa_stage(uint16_t *s, int ld, const uint16_t *src, int64_t c, int64_t r0,
                                                int64_t n, int d, int vec) {
    constexpr int CH = DP / 8; /* 16-byte chunks per row */
    if (vec && TRANS) {
        constexpr int RP = ROWS / 2; /* row pairs */
        for (int i = threadIdx.x; i < RP * CH; i += FA_THREADS) {
            int ch = i / RP, r = (i - ch * RP) * 2, col = ch * 8;
            uint4 x = make_uint4(0u, 0u, 0u, 0u), y = x;
            if (col < d && r0 + r < n) x = *(const uint4 *)(src + (r0 + r) * c + col);
            if (col < d && r0 + r + 1 < n) y = *(const uint4 *)(src + (r0 + r + 1) * c + col);
            const uint32_t wx[4] = {x.x, x.y, x.z, x.w}, wy[4] = {y.x, y.y, y.z, y.w};
            for (int e = 0; e < 4; e++) { /* channels col + 2e (low halves) and col + 2e + 1 (high) */
                *(uint32_t *)(s + (col + 2 * e) * ld + r) = (wx[e] & 0xffffu) | (wy[e] << 16);
                *(uint32_t *)(s + (col + 2 * e + 1) * ld + r) = (wx[e] >> 16) | (wy[e] & 0xffff0000u);
            }
        }
    } else if (vec) {
        for (int i = threadIdx.x; i < ROWS * CH; i += FA_THREADS) {
            int r = i / CH, col = (i - r * CH) * 8;
            uint4 x = make_uint4(0u, 0u, 0u, 0u);
            if (r0 + r < n && col < d) x = *(const uint4 *)(src + (r0 + r) * c + col);
            *(uint4 *)(s + r * ld + col) = x;
        }
    } else {
        for (int i = threadIdx.x; i < ROWS * DP; i += FA_THREADS) {
            int r = i / DP, col = i - r * DP;
            uint16_t x = 0;
            if (r0 + r < n && col < d) x = src[(r0 + r) * c + col];
            if (TRANS)
                s[col * ld + r] = x;
            else
                s[r * ld + col] = x;
        }
    }
}

/* The kernel (DESIGN above). q, out [nb, nq, c], k, v [nb, nk, c]; grid (query tiles, heads,
 * images); scale_log2 = log2(e) / sqrt(d). */
template <typename T, int DP>
__global__ void __launch_bounds__(FA_THREADS)
    attention_flash(T *out, const T *q, const T *k, const T *v, int64_t nq, int64_t nk, int64_t c, int d,
                    float scale_log2, int causal, int vec) {
    typedef fa_ops<T> F;
    constexpr int BK = fa_cfg<DP>::BK, LDD = fa_cfg<DP>::LDD, LDK = fa_cfg<DP>::LDK;
    extern __shared__ __align__(16) uint16_t fa_smem[];
    uint16_t *qs = fa_smem;          /* [FA_BQ][LDD] */
    uint16_t *ks = qs + FA_BQ * LDD; /* [BK][LDD] */
    uint16_t *vt = ks + BK * LDD;    /* [DP][LDK] */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3; /* the fragment's row group and thread in group */
    const int64_t b = blockIdx.z, h = blockIdx.y, q0 = (int64_t)blockIdx.x * FA_BQ;
    const uint16_t *qg = (const uint16_t *)q + b * nq * c + h * d; /* row i of the head: qg + i c */
    const uint16_t *kg = (const uint16_t *)k + b * nk * c + h * d;
    const uint16_t *vg = (const uint16_t *)v + b * nk * c + h * d;

    fa_stage<DP, FA_BQ, false>(qs, LDD, qg, c, q0, nq, d, vec);
    /* up to DP = 128 the warp's Q fragments stay in registers (above, they would spill) */
    constexpr bool QREG = DP <= 128;
    uint32_t qf[QREG ? DP / 16 : 1][4];
    if constexpr (QREG) {
        __syncthreads();
        for (int kk = 0; kk < DP / 16; kk++) {
            const uint16_t *qa = qs + (warp * 16 + g) * LDD + kk * 16 + 2 * t;
            qf[kk][0] = fa_ld32(qa);
            qf[kk][1] = fa_ld32(qa + 8 * LDD);
            qf[kk][2] = fa_ld32(qa + 8);
            qf[kk][3] = fa_ld32(qa + 8 * LDD + 8);
        }
    }

    const int64_t row0 = q0 + warp * 16 + g, row1 = row0 + 8; /* this thread's two query rows */
    const int64_t wlast = q0 + warp * 16 + 15;                 /* the warp's last query */
    float o[DP / 8][4];                                        /* O: 16 x DP, n-tiles of 8 channels */
    for (int j = 0; j < DP / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY; /* running max (log2 units) of rows row0, row1 */
    float l0 = 0.0f, l1 = 0.0f;           /* this thread's part of their running sums */

    int64_t kend = nk;
    if (causal && q0 + FA_BQ < kend) kend = q0 + FA_BQ; /* the CTA's last query sees keys < q0 + FA_BQ */
    for (int64_t k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads(); /* the previous tile is no longer read */
        fa_stage<DP, BK, false>(ks, LDD, kg, c, k0, nk, d, vec);
        fa_stage<DP, BK, true>(vt, LDK, vg, c, k0, nk, d, vec);
        __syncthreads();
        if (causal && k0 > wlast) continue; /* every key of the tile is past the warp's queries */

        /* S = Q K^T: 16 x BK, n-tile j holds keys k0 + 8j .. k0 + 8j + 7 */
        float s[BK / 8][4];
        for (int j = 0; j < BK / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
        for (int kk = 0; kk < DP / 16; kk++) {
            uint32_t a[4]; /* rows g, g + 8 x channels 16kk + 2t (+1), and + 8 */
            if constexpr (QREG) {
                a[0] = qf[kk][0], a[1] = qf[kk][1], a[2] = qf[kk][2], a[3] = qf[kk][3];
            } else {
                const uint16_t *qa = qs + (warp * 16 + g) * LDD + kk * 16 + 2 * t;
                a[0] = fa_ld32(qa), a[1] = fa_ld32(qa + 8 * LDD), a[2] = fa_ld32(qa + 8), a[3] = fa_ld32(qa + 8 * LDD + 8);
            }
            for (int j = 0; j < BK / 8; j++) {
                const uint16_t *kb = ks + (j * 8 + g) * LDD + kk * 16 + 2 * t;
                const uint32_t bb[2] = {fa_ld32(kb), fa_ld32(kb + 8)};
                F::mma(s[j], a, bb);
            }
        }

        /* scale, mask, the tile's row max (the 4 threads t = 0..3 of a group share a row) */
        float x0 = -INFINITY, x1 = -INFINITY;
        for (int j = 0; j < BK / 8; j++) {
            for (int e = 0; e < 4; e++) {
                int64_t key = k0 + j * 8 + 2 * t + (e & 1), row = e < 2 ? row0 : row1;
                bool ok = key < nk && (!causal || key <= row);
                float x = ok ? s[j][e] * scale_log2 : -INFINITY;
                s[j][e] = x;
                if (e < 2)
                    x0 = fmaxf(x0, x);
                else
                    x1 = fmaxf(x1, x);
            }
        }
        x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, 1));
        x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, 2));
        x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, 1));
        x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, 2));
        /* new max; u is the exponent's offset (0 while a row has seen nothing: exp2(-inf) = 0) */
        float n0 = fmaxf(m0, x0), n1 = fmaxf(m1, x1);
        float u0 = n0 == -INFINITY ? 0.0f : n0, u1 = n1 == -INFINITY ? 0.0f : n1;
        float c0 = exp2f(m0 - u0), c1 = exp2f(m1 - u1); /* rescale of the old sums and O */
        m0 = n0;
        m1 = n1;
        l0 *= c0;
        l1 *= c1;
        for (int j = 0; j < DP / 8; j++) {
            o[j][0] *= c0;
            o[j][1] *= c0;
            o[j][2] *= c1;
            o[j][3] *= c1;
        }

        /* O += P V, 16 keys at a time: n-tiles 2kk and 2kk + 1 of S are the A fragment */
        for (int kk = 0; kk < BK / 16; kk++) {
            const float *sa = s[2 * kk], *sb = s[2 * kk + 1];
            const uint32_t a[4] = {F::pack(exp2f(sa[0] - u0), exp2f(sa[1] - u0), &l0),
                                   F::pack(exp2f(sa[2] - u1), exp2f(sa[3] - u1), &l1),
                                   F::pack(exp2f(sb[0] - u0), exp2f(sb[1] - u0), &l0),
                                   F::pack(exp2f(sb[2] - u1), exp2f(sb[3] - u1), &l1)};
            for (int j = 0; j < DP / 8; j++) {
                const uint16_t *vb = vt + (j * 8 + g) * LDK + kk * 16 + 2 * t;
                const uint32_t bb[2] = {fa_ld32(vb), fa_ld32(vb + 8)};
                F::mma(o[j], a, bb);
            }
        }
    }

    /* the row sums over the group's 4 threads; O / l to T */
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float i0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, i1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    T *og = out + b * nq * c + h * d;
    for (int j = 0; j < DP / 8; j++) {
        int col = j * 8 + 2 * t;
        if (row0 < nq) {
            if (col < d) og[row0 * c + col] = cuda_from_f32<T>(o[j][0] * i0);
            if (col + 1 < d) og[row0 * c + col + 1] = cuda_from_f32<T>(o[j][1] * i0);
        }
        if (row1 < nq) {
            if (col < d) og[row1 * c + col] = cuda_from_f32<T>(o[j][2] * i1);
            if (col + 1 < d) og[row1 * c + col + 1] = cuda_from_f32<T>(o[j][3] * i1);
        }
    }
}

/* FA-EMU-END */

/* ===== Launchers ===== */

template <typename T, int DP>
static int attention_flash_launch(struct cuda_ctx *ctx, T *out, const T *q, const T *k, const T *v, int64_t nb,
                                  int64_t nq, int64_t nk, int64_t c, int heads, int d, bool causal, struct err *err) {
    const int smem = fa_cfg<DP>::SMEM;
    if (smem > 48 * 1024)
        CUDA_TRY(cudaFuncSetAttribute(attention_flash<T, DP>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    bool vec = d % 8 == 0 && c % 8 == 0 && ((uintptr_t)q | (uintptr_t)k | (uintptr_t)v) % 16 == 0;
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)d); /* log2(e) / sqrt(d) */
    dim3 grid((unsigned)((nq + FA_BQ - 1) / FA_BQ), (unsigned)heads, (unsigned)nb);
    attention_flash<T, DP><<<grid, FA_THREADS, smem, ctx->stream>>>(out, q, k, v, nq, nk, c, d, scale_log2,
                                                                    causal ? 1 : 0, vec ? 1 : 0);
    CUDA_TRY_LAUNCH();
    return 0;
}

/* The instantiated padded head sizes; d takes the smallest that holds it. */
#define FA_SIZES(XX) XX(16) XX(32) XX(48) XX(64) XX(80) XX(96) XX(128) XX(160) XX(192) XX(256)

template <typename T>
static int attention_flash_cuda(struct cuda_ctx *ctx, T *out, const T *q, const T *k, const T *v, int64_t nb,
                                int64_t nq, int64_t nk, int64_t c, int heads, bool causal, struct err *err) {
    int d = (int)(c / heads);
    if (nb > 65535 || heads > 65535 || (nq + FA_BQ - 1) / FA_BQ > 0x7fffffff)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda flash attention: %lld images x %d heads exceed the grid",
                       (long long)nb, heads);
#define FA_PICK(DP) \
    if (d <= DP) return attention_flash_launch<T, DP>(ctx, out, q, k, v, nb, nq, nk, c, heads, d, causal, err);
    FA_SIZES(FA_PICK)
#undef FA_PICK
    return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda flash attention: head size %d above %d", d, CUDA_FLASH_DMAX);
}

/* ===== Entry points (attention_flash.cuh) ===== */

bool cuda__attention_flash_covers(struct cuda_ctx *ctx, enum dtype dt, int d) {
    if ((dt != DTYPE_F16 && dt != DTYPE_BF16) || d < 1 || d > CUDA_FLASH_DMAX) return false;
    /* mma.sync m16n8k16 (bf16 above all) needs sm_80: the code the device runs must be built for it */
    cudaFuncAttributes fa;
    cudaError_t e = dt == DTYPE_F16 ? cudaFuncGetAttributes(&fa, attention_flash<__half, 64>)
                                    : cudaFuncGetAttributes(&fa, attention_flash<__nv_bfloat16, 64>);
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
