/* Eq. 1 of Head Fusion (softmax over keys, GAP over queries) fused per map, for serlib/models/head_fusion.py.

   Built on first use by serlib.models.head_fusion_native (gcc -O3 -march=native, no -ffast-math) and called through
   ctypes on float32 tensors; the torch implementation (_HeadFusionPoints) computes the same function and is the
   fallback. proj is contiguous (GH, CH, B, P), CH = 2d + dv: for map (g, b) channel t is the row
   proj[((g * CH + t) * B + b) * P + 0 .. P-1] (q: t < d, k: d <= t < 2d, v: 2d <= t < CH).

   Per map and query i (scores in log2 units, s_ij = qscale q_i . k_j + bias_j, qscale = log2(e) / sqrt(d)):
     m_i = max_j s_ij, E_ij = 2^(s_ij - m_i), r_i = sum_j E_ij, A_ij = E_ij / r_i,
   forward:  c_j = sum_i w_i A_ij (w_i = 1/P when w is NULL), points = sum_j c_j v_j (B, GH, dv), rowmax m, rowsum r,
     optionally u_i = sum_j A_ij v_j (B, GH, P, dv);
   backward: from dpoint (B, GH, dv), with z_j = v_j . dpoint, y_i = sum_j A_ij z_j, T_ij = w_i A_ij (z_j - y_i) /
     sqrt(d): dv_j = c_j dpoint, dq_i = sum_j T_ij k_j, dk_j = sum_i T_ij q_i, written into grad (the layout of proj);
     the maps are recomputed from the saved m and r, never stored.
   With dv = 1 two more kernels (issue 18): hf_eq1_fwdjac, training's forward, writes the points and their Jacobian
   (the backward is then one multiply by dpoint, done by the caller), and hf_eq1_fwdpts, inference's, the points
   alone; both hold V queries in the lanes of a vector (see fwdjac_core).
   Every row of a map stays in registers / L1; nothing of size P x P is written. Only the maps of heads g0 <= g < g1
   are computed (the caller may split the heads between threads; the outputs of different heads do not overlap). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
#define V 16 /* rows are copied into buffers padded to pp, a multiple of V: every row loop runs over whole vectors */
#define MAXD 64

static inline v16 vmax(v16 a, v16 b) {
#ifdef __AVX512F__
    return (v16)_mm512_max_ps((__m512)a, (__m512)b);
#else
    vi16 m = a > b;
    return (v16)(((vi16)a & m) | ((vi16)b & ~m));
#endif
}

/* 2^x for x <= 0 (and -inf -> 0), lane-wise: x = n + f with n = round(x), |f| <= 1/2, 2^f by a degree-5 polynomial
   fitted for relative error on [-1/2, 1/2] (at most 2e-7 in float32, a few ulp), 2^n from the exponent bits;
   x <= -127 gives 0. With AVX-512: the rounding is one vrndscaleps and 2^n one vscalefps, whose zero-masking
   clears the lanes at or below -127 (-inf included: its NaN polynomial never leaves the register), 9 instructions
   instead of 13. */
static inline v16 ex2(v16 x) {
#ifdef __AVX512F__
    __mmask16 live = _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(-127.0f), _CMP_GT_OQ);
    __m512 n = _mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v16 f = x - (v16)n;
    v16 p = 1.0f + f * (0.69314698f + f * (0.24022243f + f * (0.05550734f + f * (0.00967148f + f * 0.00132646f))));
    return (v16)_mm512_maskz_scalef_ps(live, (__m512)p, n);
#else
    x = vmax(x, (v16){0} - 127.0f);
    v16 n = (x + 12582912.0f) - 12582912.0f; /* round to nearest (1.5 * 2^23), exact without -ffast-math */
    v16 f = x - n;
    v16 p = 1.0f + f * (0.69314698f + f * (0.24022243f + f * (0.05550734f + f * (0.00967148f + f * 0.00132646f))));
    vi16 bits = (__builtin_convertvector(n, vi16) + 127) << 23; /* n = -127 -> 0.0 */
    return p * (v16)bits;
#endif
}

/* Horizontal sum and max by a shuffle tree (4 shuffles instead of 15 scalar steps). */
#define SH(a, ...) __builtin_shuffle(a, (vi16){__VA_ARGS__})
static inline float hsum(v16 a) {
    a += SH(a, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    a += SH(a, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
    a += SH(a, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    a += SH(a, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
    return a[0];
}

static inline float hmax(v16 a) {
    a = vmax(a, SH(a, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
    a = vmax(a, SH(a, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
    a = vmax(a, SH(a, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
    a = vmax(a, SH(a, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
    return a[0];
}

/* The lane sums of a[0..7] at once: out[t] = sum_l a[t][l] (a transposing add tree: 14 two-vector shuffles). */
static inline void hsum8(const v16 *a, float *out) {
    v16 b[4], c[2];
    for (int k = 0; k < 4; k++)
        b[k] = __builtin_shuffle(a[2 * k], a[2 * k + 1], (vi16){0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23})
               + __builtin_shuffle(a[2 * k], a[2 * k + 1],
                                   (vi16){8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31});
    for (int k = 0; k < 2; k++)
        c[k] = __builtin_shuffle(b[2 * k], b[2 * k + 1], (vi16){0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27})
               + __builtin_shuffle(b[2 * k], b[2 * k + 1],
                                   (vi16){4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31});
    v16 e = __builtin_shuffle(c[0], c[1], (vi16){0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29})
            + __builtin_shuffle(c[0], c[1], (vi16){2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31});
    e += SH(e, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
    for (int t = 0; t < 8; t++) out[t] = e[2 * t];
}

/* s = bias + sum_t qs[t] k_t over the nv vectors of a padded row (padding keys have bias -inf); returns max_j s_j. */
static inline __attribute__((always_inline)) float score_row(v16 *restrict s, const v16 *restrict kl,
                                                             const v16 *restrict bl, const float *restrict qs,
                                                             int d, int nv) {
    v16 m = (v16){0} - __builtin_inff();
    for (int j = 0; j < nv; j++) {
        v16 acc = bl[j];
        for (int t = 0; t < d; t++) acc += qs[t] * kl[t * nv + j];
        s[j] = acc;
        m = vmax(m, acc);
    }
    return hmax(m);
}

/* The keys of map (g, b) into kl (d rows of pp floats, zero padding) and the key bias into bl (0 or the given bias for
   real keys, -inf for the padding). */
static inline void load_keys(float *restrict kl, float *restrict bl, const float *restrict kb, long bp,
                             const float *restrict bias, int d, int p, int pp) {
    for (int t = 0; t < d; t++) {
        memcpy(kl + (long)t * pp, kb + t * bp, sizeof(float) * (size_t)p);
        for (int j = p; j < pp; j++) kl[(long)t * pp + j] = 0.0f;
    }
    for (int j = 0; j < p; j++) bl[j] = bias ? bias[j] : 0.0f;
    for (int j = p; j < pp; j++) bl[j] = -__builtin_inff();
}

static float *scratch(int rows, int pp) { return (float *)aligned_alloc(64, sizeof(float) * (size_t)rows * pp); }

static inline __attribute__((always_inline)) int forward_core(const float *restrict proj, const float *restrict bias,
                                                              const float *restrict w, int gh, int ch, int b, int p,
                                                              int g0, int g1, int d, int nvc, float qscale,
                                                              float *restrict c, float *restrict rowmax,
                                                              float *restrict rowsum, float *restrict u,
                                                              float *restrict points) {
    if (d > MAXD || d < 1) return 1;
    int nv = nvc > 0 ? nvc : (p + V - 1) / V, pp = nv * V, dv = ch - 2 * d;
    long bp = (long)b * p;
    float *buf = scratch(3 + d + dv, pp);
    if (!buf) return 2;
    v16 *s = (v16 *)buf, *bl = s + nv, *cl = s + 2 * nv, *kl = s + 3 * nv, *vl = s + (3 + d) * nv;
    float qs[MAXD];
    for (int g = g0; g < g1; g++) {
        for (int bi = 0; bi < b; bi++) {
            const float *base = proj + ((long)g * ch * b + bi) * p;
            const float *wb = w ? w + (long)bi * p : NULL;
            long map = ((long)g * b + bi) * p;
            load_keys((float *)kl, (float *)bl, base + (long)d * bp, bp, bias ? bias + (long)bi * p : NULL, d, p, pp);
            if (u) {
                for (int e = 0; e < dv; e++) {
                    float *ve = (float *)(vl + e * nv);
                    memcpy(ve, base + (long)(2 * d + e) * bp, sizeof(float) * (size_t)p);
                    for (int j = p; j < pp; j++) ve[j] = 0.0f;
                }
            }
            for (int j = 0; j < nv; j++) cl[j] = (v16){0};
            for (int i = 0; i < p; i++) {
                for (int t = 0; t < d; t++) qs[t] = base[t * bp + i] * qscale;
                float m = score_row(s, kl, bl, qs, d, nv);
                v16 rv = {0};
                for (int j = 0; j < nv; j++) {
                    v16 e = ex2(s[j] - m);
                    s[j] = e;
                    rv += e;
                }
                float r = hsum(rv);
                float coef = (wb ? wb[i] : 1.0f / (float)p) / r;
                for (int j = 0; j < nv; j++) cl[j] += coef * s[j];
                rowmax[map + i] = m;
                rowsum[map + i] = r;
                if (u) {
                    for (int e = 0; e < dv; e++) {
                        v16 acc = {0};
                        for (int j = 0; j < nv; j++) acc += s[j] * vl[e * nv + j];
                        u[(((long)bi * gh + g) * p + i) * dv + e] = hsum(acc) / r; /* u (B, GH, P, dv) */
                    }
                }
            }
            memcpy(c + map, cl, sizeof(float) * (size_t)p);
            for (int e = 0; e < dv; e++) { /* points = sum_j c_j v_j */
                const float *v = base + (long)(2 * d + e) * bp;
                float acc = 0.0f;
                for (int j = 0; j < p; j++) acc += c[map + j] * v[j];
                points[((long)bi * gh + g) * dv + e] = acc;
            }
        }
    }
    free(buf);
    return 0;
}

static inline __attribute__((always_inline)) int backward_core(const float *restrict proj, const float *restrict bias,
                                                               const float *restrict w, int gh, int ch, int b, int p,
                                                               int g0, int g1, int d, int nvc, float qscale, float gscale,
                                                               const float *restrict rowmax,
                                                               const float *restrict rowsum, const float *restrict c,
                                                               const float *restrict dpoints, float *restrict grad) {
    if (d > MAXD || d < 1) return 1;
    int nv = nvc > 0 ? nvc : (p + V - 1) / V, pp = nv * V, dv = ch - 2 * d;
    long bp = (long)b * p;
    float *buf = scratch(4 + 2 * d, pp);
    if (!buf) return 2;
    v16 *s = (v16 *)buf, *sb = s + nv, *bl = s + 2 * nv, *zl = s + 3 * nv, *kl = s + 4 * nv, *dkl = s + (4 + d) * nv;
    float qa[MAXD], qb[MAXD], qsa[MAXD], qsb[MAXD];
    v16 acc[MAXD], accb[MAXD];
    for (int g = g0; g < g1; g++) {
        for (int bi = 0; bi < b; bi++) {
            long off = ((long)g * ch * b + bi) * p;
            const float *base = proj + off;
            float *dqb = grad + off;
            float *dkb = grad + off + (long)d * bp;
            const float *wb = w ? w + (long)bi * p : NULL;
            long map = ((long)g * b + bi) * p;
            load_keys((float *)kl, (float *)bl, base + (long)d * bp, bp, bias ? bias + (long)bi * p : NULL, d, p, pp);
            float *z = (float *)zl; /* z_j = v_j . dpoint, and the value gradient dv_j = c_j dpoint */
            for (int j = 0; j < pp; j++) z[j] = 0.0f;
            for (int e = 0; e < dv; e++) {
                float dp = dpoints[((long)bi * gh + g) * dv + e];
                const float *v = base + (long)(2 * d + e) * bp;
                float *gv = grad + off + (long)(2 * d + e) * bp;
                for (int j = 0; j < p; j++) {
                    z[j] += v[j] * dp;
                    gv[j] = c[map + j] * dp;
                }
            }
            for (int j = 0; j < d * nv; j++) dkl[j] = (v16){0};
            for (int i = 0; i < p; i += 2) { /* two queries at a time: they share the loads of k and dk */
                int two = i + 1 < p;           /* the second row is a zero-weight dummy when p is odd */
                for (int t = 0; t < d; t++) {
                    qa[t] = base[t * bp + i];
                    qb[t] = two ? base[t * bp + i + 1] : 0.0f;
                    qsa[t] = qa[t] * qscale;
                    qsb[t] = qb[t] * qscale;
                }
                float ma = rowmax[map + i], ra = rowsum[map + i];
                float mb = two ? rowmax[map + i + 1] : 0.0f, rb = two ? rowsum[map + i + 1] : 1.0f;
                v16 ya = {0}, yb = {0};
                for (int j = 0; j < nv; j++) {
                    v16 a = bl[j], b2 = bl[j];
                    for (int t = 0; t < d; t++) {
                        v16 k = kl[t * nv + j];
                        a += qsa[t] * k;
                        b2 += qsb[t] * k;
                    }
                    a = ex2(a - ma);
                    b2 = ex2(b2 - mb);
                    s[j] = a;
                    sb[j] = b2;
                    ya += a * zl[j];
                    yb += b2 * zl[j];
                }
                float yra = hsum(ya) / ra, yrb = hsum(yb) / rb;
                float ca = gscale * (wb ? wb[i] : 1.0f / (float)p) / ra;
                float cb = two ? gscale * (wb ? wb[i + 1] : 1.0f / (float)p) / rb : 0.0f;
                for (int t = 0; t < d; t++) acc[t] = accb[t] = (v16){0};
                for (int j = 0; j < nv; j++) {
                    v16 ta = ca * s[j] * (zl[j] - yra), tb = cb * sb[j] * (zl[j] - yrb); /* T_ij */
                    for (int t = 0; t < d; t++) {
                        v16 k = kl[t * nv + j];
                        acc[t] += ta * k;
                        accb[t] += tb * k;
                        dkl[t * nv + j] += ta * qa[t] + tb * qb[t];
                    }
                }
                float dqa[MAXD], dqb2[MAXD];
                if (d == 8) {
                    hsum8(acc, dqa);
                    hsum8(accb, dqb2);
                } else {
                    for (int t = 0; t < d; t++) {
                        dqa[t] = hsum(acc[t]);
                        dqb2[t] = hsum(accb[t]);
                    }
                }
                for (int t = 0; t < d; t++) {
                    dqb[t * bp + i] = dqa[t];
                    if (two) dqb[t * bp + i + 1] = dqb2[t];
                }
            }
            for (int t = 0; t < d; t++) memcpy(dkb + t * bp, dkl + t * nv, sizeof(float) * (size_t)p);
        }
    }
    free(buf);
    return 0;
}

/* The Q/K/V projection of one map inside the kernels below (issue 18): out (CH rows of nq vectors) = W_g (CH, C)
   X_b (C, nq vectors) + bias_g, X_b zero-padded to nq * V positions, in tiles of PR rows x PVB vectors held in
   registers (one tile: PR broadcasts and PVB loads per input channel for PR * PVB multiply-adds). */
#define PR 4
#define PVB 6
static inline __attribute__((always_inline)) void proj_tile(const float *restrict w, const float *restrict bias,
                                                            const v16 *restrict x, int c_in, int nq, int rows, int nvb,
                                                            v16 *restrict out) {
    v16 acc[PR][PVB];
    for (int r = 0; r < PR; r++)
        for (int v = 0; v < PVB; v++) acc[r][v] = (r < rows ? bias[r] : 0.0f) - (v16){0};
    for (int c = 0; c < c_in; c++) {
        const v16 *xc = x + (long)c * nq;
        for (int r = 0; r < rows; r++) {
            float wr = w[(long)r * c_in + c];
            for (int v = 0; v < nvb; v++) acc[r][v] += wr * xc[v];
        }
    }
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < nvb; v++) out[(long)r * nq + v] = acc[r][v];
}

static inline __attribute__((always_inline)) void project_map(const float *restrict wg, const float *restrict bg,
                                                              const v16 *restrict xb, int c_in, int ch, int nq,
                                                              v16 *restrict out) {
    for (int t0 = 0; t0 < ch; t0 += PR) {
        int rows = ch - t0 < PR ? ch - t0 : PR;
        for (int v0 = 0; v0 < nq; v0 += PVB) {
            int nvb = nq - v0 < PVB ? nq - v0 : PVB;
            if (rows == PR && nvb == PVB) /* the full tile, with constant sizes */
                proj_tile(wg + (long)t0 * c_in, bg + t0, xb + v0, c_in, nq, PR, PVB, out + (long)t0 * nq + v0);
            else
                proj_tile(wg + (long)t0 * c_in, bg + t0, xb + v0, c_in, nq, rows, nvb, out + (long)t0 * nq + v0);
        }
    }
}

/* One map (g, b) of the lane-wise kernels below, into their buffers: q rows qv (d x nq vectors, zero-padded), keys
   transposed kt[j * d + t], values vj and key bias bj (p floats), query weights wl (nq vectors, 0 for the padding
   queries). The rows come from proj, or with xp from the projection computed here into pv (CH x nq vectors). */
static inline __attribute__((always_inline)) void load_map(const float *restrict proj, const float *restrict xp,
                                                           const float *restrict wt, const float *restrict bt,
                                                           int c_in, const float *restrict bias,
                                                           const float *restrict w, int ch, int b, int p, int g,
                                                           int bi, int d, int nq, v16 *restrict pv, v16 *restrict qv,
                                                           float *restrict kt, float *restrict vj, float *restrict bj,
                                                           v16 *restrict wl) {
    int pq = nq * V;
    const float *base; /* the map's q, k, v rows, rs floats apart */
    long rs;
    if (xp) {
        project_map(wt + (long)g * ch * c_in, bt + (long)g * ch, (const v16 *)xp + (long)bi * c_in * nq, c_in, ch, nq,
                    pv);
        base = (const float *)pv;
        rs = pq;
    } else {
        base = proj + ((long)g * ch * b + bi) * p;
        rs = (long)b * p;
    }
    const float *wb = w ? w + (long)bi * p : NULL;
    const float *bb = bias ? bias + (long)bi * p : NULL;
    for (int t = 0; t < d; t++) {
        float *qt = (float *)(qv + t * nq);
        memcpy(qt, base + t * rs, sizeof(float) * (size_t)p);
        for (int i = p; i < pq; i++) qt[i] = 0.0f;
    }
    for (int t = 0; t < d; t++) {
        const float *kr = base + (long)(d + t) * rs;
        for (int j = 0; j < p; j++) kt[j * d + t] = kr[j];
    }
    memcpy(vj, base + (long)(2 * d) * rs, sizeof(float) * (size_t)p);
    for (int j = 0; j < p; j++) bj[j] = bb ? bb[j] : 0.0f;
    float *wf = (float *)wl;
    for (int i = 0; i < pq; i++) wf[i] = i < p ? (wb ? wb[i] : 1.0f / (float)p) : 0.0f;
}

/* Training's forward when dv = 1: the points and, in the same pass over each row, their Jacobian. With dv = 1 a map's
   output is one scalar and dpoint one scalar per map, so the backward's T_ij = w_i A_ij (z_j - y_i) / sqrt(d) is
   dpoint times T1_ij = w_i A_ij (v_j - o_i) / sqrt(d), o_i = sum_j A_ij v_j (z = v dpoint, y = o dpoint): the
   gradient of proj is dpoint times jac, jac (the layout of proj) holding dq_i = sum_j T1_ij k_j, dk_j = sum_i T1_ij q_i
   and, in the value channel, c_j. Each row's scores and exponentials are computed once instead of again in the
   backward (which becomes one multiply, done by the caller); rowmax and rowsum are not needed. */
static inline __attribute__((always_inline)) int fwdjac_core(const float *restrict proj, const float *restrict xp,
    const float *restrict wt, const float *restrict bt, int c_in, const float *restrict bias,
                                                             const float *restrict w, int gh, int ch, int b, int p,
                                                             int g0, int g1, int d, int nqc, float qscale,
                                                             float gscale, float *restrict points,
                                                             float *restrict jac) {
    if (d > MAXD || d < 1) return 1;
    if (ch != 2 * d + 1) return 3;
    /* queries in lanes: nq vectors of V queries (the padding queries have weight 0); keys one at a time */
    int nq = nqc > 0 ? nqc : (p + V - 1) / V;
    long bp = (long)b * p;
    /* per map: qv (d x nq vectors), tb (nq x p vectors: T1 rows of each query block), sv (p vectors), cv (p vectors),
       wl (nq vectors), dql (d x nq vectors); kt (p x d floats), vj, bj (p floats) */
    size_t nvec = (size_t)d * nq + (size_t)nq * p + 2 * (size_t)p + nq + (size_t)d * nq;
    v16 *buf = (v16 *)aligned_alloc(64, sizeof(v16) * nvec + sizeof(float) * ((size_t)p * d + 2 * (size_t)p + 16));
    v16 *pv = xp ? (v16 *)aligned_alloc(64, sizeof(v16) * (size_t)ch * nq) : NULL;
    if (!buf || (xp && !pv)) {
        free(buf);
        free(pv);
        return 2;
    }
    v16 *qv = buf, *tb = qv + (size_t)d * nq, *sv = tb + (size_t)nq * p, *cv = sv + p, *wl = cv + p, *dql = wl + nq;
    float *kt = (float *)(dql + (size_t)d * nq), *vj = kt + (size_t)p * d, *bj = vj + p;
    long nmaps = (long)(g1 - g0) * b;
    for (long mi = 0; mi < nmaps; mi++) { /* projecting: sample-major, so X_b stays in cache across the heads */
        int g = xp ? g0 + (int)(mi % (g1 - g0)) : g0 + (int)(mi / b);
        int bi = xp ? (int)(mi / (g1 - g0)) : (int)(mi % b);
        {
            long off = ((long)g * ch * b + bi) * p;
            load_map(proj, xp, wt, bt, c_in, bias, w, ch, b, p, g, bi, d, nq, pv, qv, kt, vj, bj, wl);
            float *dqb = jac + off, *dkb = jac + off + (long)d * bp, *cb = jac + off + (long)(2 * d) * bp;
            for (int j = 0; j < p; j++) cv[j] = (v16){0};
            for (int ib = 0; ib < nq; ib++) {
                v16 q[MAXD], acc[MAXD];
                for (int t = 0; t < d; t++) {
                    q[t] = qv[t * nq + ib] * qscale;
                    acc[t] = (v16){0};
                }
                v16 m = (v16){0} - __builtin_inff();
                for (int j = 0; j < p; j++) { /* scores of V queries against key j */
                    v16 a = bj[j] - (v16){0};
                    const float *kj = kt + j * d;
                    for (int t = 0; t < d; t++) a += q[t] * kj[t];
                    sv[j] = a;
                    m = vmax(m, a);
                }
                v16 r = {0}, o = {0};
                for (int j = 0; j < p; j++) {
                    v16 e = ex2(sv[j] - m);
                    sv[j] = e;
                    r += e;
                    o += e * vj[j];
                }
                v16 inv = 1.0f / r;
                o *= inv;
                v16 u = wl[ib] * inv, ca = gscale * u;
                v16 *t1 = tb + (size_t)ib * p;
                for (int j = 0; j < p; j++) {
                    v16 e = sv[j];
                    cv[j] += u * e;
                    v16 tv = ca * e * (vj[j] - o); /* T1_ij for the V queries */
                    t1[j] = tv;
                    const float *kj = kt + j * d;
                    for (int t = 0; t < d; t++) acc[t] += tv * kj[t];
                }
                for (int t = 0; t < d; t++) dql[t * nq + ib] = acc[t];
            }
            for (int t = 0; t < d; t++) memcpy(dqb + t * bp, dql + t * nq, sizeof(float) * (size_t)p);
            float pt = 0.0f;
            for (int j = 0; j < p; j++) { /* c_j = sum over query lanes; dk_j = sum_i T1_ij q_i */
                float cj = hsum(cv[j]);
                cb[j] = cj;
                pt += cj * vj[j];
                v16 dk[MAXD];
                for (int t = 0; t < d; t++) dk[t] = (v16){0};
                for (int ib = 0; ib < nq; ib++) {
                    v16 tv = tb[(size_t)ib * p + j];
                    for (int t = 0; t < d; t++) dk[t] += tv * qv[t * nq + ib];
                }
                float dks[MAXD];
                if (d == 8) {
                    hsum8(dk, dks);
                } else {
                    for (int t = 0; t < d; t++) dks[t] = hsum(dk[t]);
                }
                for (int t = 0; t < d; t++) dkb[t * bp + j] = dks[t];
            }
            points[(long)bi * gh + g] = pt;
        }
    }
    free(buf);
    free(pv);
    return 0;
}

/* Inference's forward when dv = 1 (no gradient, no per-query output): point = sum_i w_i o_i with o_i = sum_j A_ij v_j,
   the same sum as sum_j c_j v_j regrouped, so each row needs only its scores, max, exponentials, r_i and o_i: queries
   in lanes, nothing written but the points. */
static inline __attribute__((always_inline)) int fwdpts_core(const float *restrict proj, const float *restrict xp,
    const float *restrict wt, const float *restrict bt, int c_in, const float *restrict bias,
                                                             const float *restrict w, int gh, int ch, int b, int p,
                                                             int g0, int g1, int d, int nqc, float qscale,
                                                             float *restrict points) {
    if (d > MAXD || d < 1) return 1;
    if (ch != 2 * d + 1) return 3;
    int nq = nqc > 0 ? nqc : (p + V - 1) / V;
    size_t nvec = (size_t)d * nq + (size_t)p + nq;
    v16 *buf = (v16 *)aligned_alloc(64, sizeof(v16) * nvec + sizeof(float) * ((size_t)p * d + 2 * (size_t)p + 16));
    v16 *pv = xp ? (v16 *)aligned_alloc(64, sizeof(v16) * (size_t)ch * nq) : NULL;
    if (!buf || (xp && !pv)) {
        free(buf);
        free(pv);
        return 2;
    }
    v16 *qv = buf, *sv = qv + (size_t)d * nq, *wl = sv + p;
    float *kt = (float *)(wl + nq), *vj = kt + (size_t)p * d, *bj = vj + p;
    long nmaps = (long)(g1 - g0) * b;
    for (long mi = 0; mi < nmaps; mi++) { /* projecting: sample-major, so X_b stays in cache across the heads */
        int g = xp ? g0 + (int)(mi % (g1 - g0)) : g0 + (int)(mi / b);
        int bi = xp ? (int)(mi / (g1 - g0)) : (int)(mi % b);
        {
            load_map(proj, xp, wt, bt, c_in, bias, w, ch, b, p, g, bi, d, nq, pv, qv, kt, vj, bj, wl);
            v16 acc = {0};
            for (int ib = 0; ib < nq; ib++) {
                v16 q[MAXD];
                for (int t = 0; t < d; t++) q[t] = qv[t * nq + ib] * qscale;
                v16 m = (v16){0} - __builtin_inff();
                for (int j = 0; j < p; j++) {
                    v16 a = bj[j] - (v16){0};
                    const float *kj = kt + j * d;
                    for (int t = 0; t < d; t++) a += q[t] * kj[t];
                    sv[j] = a;
                    m = vmax(m, a);
                }
                v16 r = {0}, o = {0};
                for (int j = 0; j < p; j++) {
                    v16 e = ex2(sv[j] - m);
                    r += e;
                    o += e * vj[j];
                }
                acc += wl[ib] * o / r;
            }
            points[(long)bi * gh + g] = hsum(acc);
        }
    }
    free(buf);
    free(pv);
    return 0;
}

int hf_eq1_fwdpts(const float *proj, const float *xp, const float *wt, const float *bt, int c_in, const float *bias,
                  const float *w, int gh, int ch, int b, int p, int g0, int g1, int d, float qscale, float *points) {
    if (d == 8 && (p + V - 1) / V == 6)
        return fwdpts_core(proj, xp, wt, bt, c_in, bias, w, gh, ch, b, p, g0, g1, 8, 6, qscale, points);
    if (d == 8) return fwdpts_core(proj, xp, wt, bt, c_in, bias, w, gh, ch, b, p, g0, g1, 8, 0, qscale, points);
    return fwdpts_core(proj, xp, wt, bt, c_in, bias, w, gh, ch, b, p, g0, g1, d, 0, qscale, points);
}

int hf_eq1_fwdjac(const float *proj, const float *xp, const float *wt, const float *bt, int c_in, const float *bias,
                  const float *w, int gh, int ch, int b, int p, int g0, int g1, int d, float qscale, float gscale,
                  float *points, float *jac) {
    if (d == 8 && (p + V - 1) / V == 6)
        return fwdjac_core(proj, xp, wt, bt, c_in, bias, w, gh, ch, b, p, g0, g1, 8, 6, qscale, gscale, points, jac);
    if (d == 8)
        return fwdjac_core(proj, xp, wt, bt, c_in, bias, w, gh, ch, b, p, g0, g1, 8, 0, qscale, gscale, points, jac);
    return fwdjac_core(proj, xp, wt, bt, c_in, bias, w, gh, ch, b, p, g0, g1, d, 0, qscale, gscale, points, jac);
}

/* The Jacobian path's backward in one pass: jac (GH, CH, B, P) row (g, t, b) times dpoints[b, g] (B, GH), in place,
   and dbias[g * CH + t] = the sum of the scaled rows over (b, i) (the projection bias's gradient). Heads
   g0 <= g < g1. */
int hf_eq1_scale_jac(float *restrict jac, const float *restrict dpoints, int gh, int ch, int b, int p, int g0, int g1,
                     float *restrict dbias) {
    for (int g = g0; g < g1; g++)
        for (int t = 0; t < ch; t++) {
            double acc = 0.0;
            for (int bi = 0; bi < b; bi++) {
                float sc = dpoints[(long)bi * gh + g], sum = 0.0f;
                float *row = jac + (((long)g * ch + t) * b + bi) * p;
                v16 vs = {0};
                int i = 0;
                for (; i + V <= p; i += V) { /* whole vectors (unaligned), then the tail */
                    v16 r;
                    memcpy(&r, row + i, sizeof r);
                    r *= sc;
                    memcpy(row + i, &r, sizeof r);
                    vs += r;
                }
                for (; i < p; i++) {
                    row[i] *= sc;
                    sum += row[i];
                }
                acc += (double)(hsum(vs) + sum);
            }
            dbias[(long)g * ch + t] = (float)acc;
        }
    return 0;
}

/* Exported entry points; head_dim 8 (the model's default) gets a copy of the code with d a constant. */
int hf_eq1_forward(const float *proj, const float *bias, const float *w, int gh, int ch, int b, int p, int g0, int g1,
                   int d, float qscale, float *c, float *rowmax, float *rowsum, float *u, float *points) {
    if (d == 8 && (p + V - 1) / V == 6) /* P = 90: 2-s segments at the paper's settings */
        return forward_core(proj, bias, w, gh, ch, b, p, g0, g1, 8, 6, qscale, c, rowmax, rowsum, u, points);
    if (d == 8) return forward_core(proj, bias, w, gh, ch, b, p, g0, g1, 8, 0, qscale, c, rowmax, rowsum, u, points);
    return forward_core(proj, bias, w, gh, ch, b, p, g0, g1, d, 0, qscale, c, rowmax, rowsum, u, points);
}

int hf_eq1_backward(const float *proj, const float *bias, const float *w, int gh, int ch, int b, int p, int g0,
                    int g1, int d, float qscale, float gscale, const float *rowmax, const float *rowsum, const float *c,
                    const float *dpoints, float *grad) {
    if (d == 8 && (p + V - 1) / V == 6)
        return backward_core(proj, bias, w, gh, ch, b, p, g0, g1, 8, 6, qscale, gscale, rowmax, rowsum, c, dpoints,
                             grad);
    if (d == 8)
        return backward_core(proj, bias, w, gh, ch, b, p, g0, g1, 8, 0, qscale, gscale, rowmax, rowsum, c, dpoints,
                             grad);
    return backward_core(proj, bias, w, gh, ch, b, p, g0, g1, d, 0, qscale, gscale, rowmax, rowsum, c, dpoints, grad);
}

/* ---------------------------------------------------------------------------------------------------------------------
   The authors' variant (HeadFusionACNN(attention="head_fusion_code"), serlib/models/head_fusion.py's
   _CodeAttentionPoints computes the same function in torch ops and is the fallback), fused per (segment, point, head).

   y is the Q/K/V projection without its bias, row-major (B * P, ld), row b * P + i, columns [q | k | v], each
   n_head * ns wide (head h's ns channels at h * ns); bias (ld) is added to every row as it is read (a separate
   bias add would be one more pass over y). For every head, over the ns channels c,
     w_c = softmax_c(q_c k_c),  r_c = relu(w_c v_c),  points[b, c] += g_i r_c,  g_i = gap[b, i] / n_head, or
   1 / (P n_head) when gap is NULL (the code's ReLU and GAP over heads and positions). Optionally wts (B, P, n_head, ns)
   receives w. Backward, from dpoints (B, ns): do_c = g_i dpoints[b, c] where r_c > 0 (else 0), dv = do w,
   dw = do v, ds = w (dw - sum_c dw w), dq = ds k, dk = ds q, written into grad (the layout of y), and the bias
   gradient per segment, dbias[b] = sum_i grad[b * P + i] (B, ld); w is recomputed. Segments b0 <= b < b1 only (the
   caller splits segments between threads). */
#define MAXNS 1024

static inline __attribute__((always_inline)) void load_row(v16 *restrict dst, const float *restrict src,
                                                           const v16 *restrict bias, int ns, int nvs) {
    dst[nvs - 1] = (v16){0};
    memcpy(dst, src, sizeof(float) * (size_t)ns);
    for (int j = 0; j < nvs; j++) dst[j] += bias[j];
}

/* The bias of every head's q, k and v, as padded vectors: bl[(t * nh + h) * nvs + j], t = 0, 1, 2 for q, k, v. */
static v16 *load_bias(const float *restrict bias, int nh, int ns, int nvs) {
    v16 *bl = (v16 *)aligned_alloc(64, sizeof(v16) * (size_t)(3 * nh * nvs));
    if (!bl) return NULL;
    for (int t = 0; t < 3 * nh; t++) {
        bl[(long)t * nvs + nvs - 1] = (v16){0};
        memcpy(bl + (long)t * nvs, bias + (long)t * ns, sizeof(float) * (size_t)ns);
    }
    return bl;
}

/* w = softmax over the ns real lanes of q * k (padding lanes 0); returns nothing, fills w. */
static inline __attribute__((always_inline)) void code_softmax(v16 *restrict w, const v16 *restrict q,
                                                               const v16 *restrict k, const v16 *restrict pad,
                                                               int nvs) {
    v16 m = (v16){0} - __builtin_inff();
    for (int j = 0; j < nvs; j++) {
        w[j] = q[j] * k[j] + pad[j];
        m = vmax(m, w[j]);
    }
    float mx = hmax(m);
    v16 sum = (v16){0};
    for (int j = 0; j < nvs; j++) {
        w[j] = ex2((w[j] - mx) * 1.4426950408889634f);
        sum += w[j];
    }
    float inv = 1.0f / hsum(sum);
    for (int j = 0; j < nvs; j++) w[j] *= inv;
}

/* Head h of one point: q, k and v (bias added) from row, and w = their channel softmax. Shared by forward and backward
   (which recomputes w rather than storing it). */
static inline __attribute__((always_inline)) void code_head(v16 *restrict q, v16 *restrict k, v16 *restrict v,
                                                            v16 *restrict w, const float *restrict row,
                                                            const v16 *restrict bl, const v16 *restrict pad, long hs,
                                                            int h, int nh, int ns, int nvs) {
    load_row(q, row + (long)h * ns, bl + (long)h * nvs, ns, nvs);
    load_row(k, row + hs + (long)h * ns, bl + (long)(nh + h) * nvs, ns, nvs);
    load_row(v, row + 2 * hs + (long)h * ns, bl + (long)(2 * nh + h) * nvs, ns, nvs);
    code_softmax(w, q, k, pad, nvs);
}

/* The padding mask: 0 on the ns real lanes, -inf on the rest of the last vector. */
static inline void pad_mask(v16 *restrict pad, int ns, int nvs) {
    for (int j = 0; j < nvs; j++)
        for (int l = 0; l < V; l++) pad[j][l] = j * V + l < ns ? 0.0f : -__builtin_inff();
}

static inline __attribute__((always_inline)) int code_forward_core(const float *restrict y, const float *restrict bias,
                                                                   const float *restrict gap, int p, int nh, int ns,
                                                                   int nvs, long ld, int b0, int b1,
                                                                   float *restrict points, float *restrict wts) {
    v16 q[MAXNS / V], k[MAXNS / V], v[MAXNS / V], w[MAXNS / V], acc[MAXNS / V], pad[MAXNS / V];
    const long hs = (long)nh * ns;
    v16 *bl = load_bias(bias, nh, ns, nvs);
    if (!bl) return 2;
    pad_mask(pad, ns, nvs);
    for (int b = b0; b < b1; b++) {
        for (int j = 0; j < nvs; j++) acc[j] = (v16){0};
        for (int i = 0; i < p; i++) {
            const float *row = y + ((long)b * p + i) * ld;
            float g = gap ? gap[(long)b * p + i] / (float)nh : 1.0f / ((float)p * (float)nh);
            for (int h = 0; h < nh; h++) {
                code_head(q, k, v, w, row, bl, pad, hs, h, nh, ns, nvs);
                if (wts) memcpy(wts + (((long)b * p + i) * nh + h) * ns, w, sizeof(float) * (size_t)ns);
                for (int j = 0; j < nvs; j++) acc[j] += g * vmax(w[j] * v[j], (v16){0});
            }
        }
        memcpy(points + (long)b * ns, acc, sizeof(float) * (size_t)ns);
    }
    free(bl);
    return 0;
}

static inline __attribute__((always_inline)) int code_backward_core(const float *restrict y,
                                                                    const float *restrict bias,
                                                                    const float *restrict gap, int p, int nh, int ns,
                                                                    int nvs, long ld, int b0, int b1,
                                                                    const float *restrict dpoints,
                                                                    float *restrict grad, float *restrict dbias) {
    v16 q[MAXNS / V], k[MAXNS / V], v[MAXNS / V], w[MAXNS / V], dp[MAXNS / V], pad[MAXNS / V];
    v16 dq[MAXNS / V], dk[MAXNS / V], dvv[MAXNS / V];
    const long hs = (long)nh * ns;
    v16 *bl = load_bias(bias, nh, ns, nvs);
    if (!bl) return 2;
    v16 *db = (v16 *)aligned_alloc(64, sizeof(v16) * (size_t)(3 * nh * nvs)); /* this segment's bias gradient */
    if (!db) {
        free(bl);
        return 2;
    }
    pad_mask(pad, ns, nvs);
    for (int b = b0; b < b1; b++) {
        dp[nvs - 1] = (v16){0};
        memcpy(dp, dpoints + (long)b * ns, sizeof(float) * (size_t)ns);
        memset(db, 0, sizeof(v16) * (size_t)(3 * nh * nvs));
        for (int i = 0; i < p; i++) {
            const float *row = y + ((long)b * p + i) * ld;
            float *grow = grad + ((long)b * p + i) * ld;
            float g = gap ? gap[(long)b * p + i] / (float)nh : 1.0f / ((float)p * (float)nh);
            for (int h = 0; h < nh; h++) {
                code_head(q, k, v, w, row, bl, pad, hs, h, nh, ns, nvs);
                v16 t = (v16){0};
                for (int j = 0; j < nvs; j++) {
                    vi16 on = (w[j] * v[j]) > 0.0f;           /* the ReLU passed this channel */
                    v16 d_o = (v16)((vi16)(g * dp[j]) & on);  /* do */
                    dvv[j] = d_o * w[j];
                    dq[j] = d_o * v[j];                        /* dw, for now */
                    t += dq[j] * w[j];
                }
                float tt = hsum(t);
                v16 *dbq = db + (long)h * nvs, *dbk = db + (long)(nh + h) * nvs, *dbv = db + (long)(2 * nh + h) * nvs;
                for (int j = 0; j < nvs; j++) {
                    v16 ds = w[j] * (dq[j] - tt);
                    dq[j] = ds * k[j];
                    dk[j] = ds * q[j];
                    dbq[j] += dq[j];
                    dbk[j] += dk[j];
                    dbv[j] += dvv[j];
                }
                memcpy(grow + (long)h * ns, dq, sizeof(float) * (size_t)ns);
                memcpy(grow + hs + (long)h * ns, dk, sizeof(float) * (size_t)ns);
                memcpy(grow + 2 * hs + (long)h * ns, dvv, sizeof(float) * (size_t)ns);
            }
        }
        for (int t = 0; t < 3 * nh; t++)
            memcpy(dbias + (long)b * ld + (long)t * ns, db + (long)t * nvs, sizeof(float) * (size_t)ns);
    }
    free(db);
    free(bl);
    return 0;
}

/* Exported entry points; ns = 64 (the paper's n_size) gets a copy of the code with the width a constant. Return 1 for
   ns outside [1, MAXNS] or ld != 3 n_head ns, 2 when out of memory. */
int hf_code_forward(const float *y, const float *bias, const float *gap, int p, int nh, int ns, long ld, int b0,
                    int b1, float *points, float *wts) {
    if (ns < 1 || ns > MAXNS || ld != 3L * nh * ns) return 1;
    if (ns == 64) return code_forward_core(y, bias, gap, p, nh, 64, 4, ld, b0, b1, points, wts);
    return code_forward_core(y, bias, gap, p, nh, ns, (ns + V - 1) / V, ld, b0, b1, points, wts);
}

int hf_code_backward(const float *y, const float *bias, const float *gap, int p, int nh, int ns, long ld, int b0,
                     int b1, const float *dpoints, float *grad, float *dbias) {
    if (ns < 1 || ns > MAXNS || ld != 3L * nh * ns) return 1;
    if (ns == 64) return code_backward_core(y, bias, gap, p, nh, 64, 4, ld, b0, b1, dpoints, grad, dbias);
    return code_backward_core(y, bias, gap, p, nh, ns, (ns + V - 1) / V, ld, b0, b1, dpoints, grad, dbias);
}

/* ---------------------------------------------------------------------------------------------------------------------
   BatchNorm in training mode, an optional 2x2 max-pool (floor) and ReLU on a channels-last map x (N, H, W, C) float32,
   the conv stack of both Head Fusion variants (serlib/models/head_fusion.py's _conv_bn_relu; torch's batch_norm,
   max_pool2d and relu_ are the fallback and the reference). Samples n0 <= n < n1 only; per-channel sums go to per-
   sample rows of part (N, 2, C) float64, summed by the caller:
     hf_bn_stats:    part[n] = (sum x, sum x^2) over sample n's H W positions;
     hf_bn_fwd:      out = relu(pool((x - mean) * scale + shift)) (N, H', W', C), scale = gamma invstd,
                     shift = beta; the pool keeps the first maximum in (h, w) order, as torch's;
     hf_bn_bwd_sums: part[n] = (sum dy, sum dy xhat), dy = dout at the pooled position's maximum where the output is
                     > 0 (the ReLU), else 0; xhat = (x - mean) invstd;
     hf_bn_bwd_dx:   dx = k (dy - a - xhat b), k = gamma invstd, a = mean dy, b = mean dy xhat (also at positions no
                     pool window covers, where dy = 0). */
#define BN_MAXC 4096

int hf_bn_stats(const float *restrict x, int hw, int c, int n0, int n1, double *restrict part) {
    if (c < 1 || c > BN_MAXC) return 1;
    for (int n = n0; n < n1; n++) {
        double *restrict s = part + (long)n * 2 * c, *restrict s2 = s + c;
        for (int j = 0; j < c; j++) s[j] = s2[j] = 0.0;
        const float *restrict xn = x + (long)n * hw * c;
        for (long i = 0; i < hw; i++) {
            const float *restrict r = xn + i * c;
            for (int j = 0; j < c; j++) {
                double v = r[j];
                s[j] += v;
                s2[j] += v * v;
            }
        }
    }
    return 0;
}

/* y, the BatchNorm output, of channel j at p */
#define BN_Y(p, j) (((p)[j] - mean[j]) * scale[j] + shift[j])

int hf_bn_fwd(const float *restrict x, int h, int w, int c, int pool, const float *restrict scale,
              const float *restrict shift, const float *restrict mean, int n0, int n1, float *restrict out) {
    if (c < 1 || c > BN_MAXC) return 1;
    const long wc = (long)w * c;
    for (int n = n0; n < n1; n++) {
        const float *restrict xn = x + (long)n * h * wc;
        if (!pool) {
            float *restrict on = out + (long)n * h * wc;
            for (long i = 0; i < (long)h * w; i++)
                for (int j = 0; j < c; j++) {
                    float y = BN_Y(xn + i * c, j);
                    on[i * c + j] = y > 0.0f ? y : 0.0f;
                }
            continue;
        }
        const int oh = h / 2, ow = w / 2;
        float *restrict on = out + (long)n * oh * ow * c;
        for (int a = 0; a < oh; a++)
            for (int b = 0; b < ow; b++) {
                const float *p00 = xn + (2L * a) * wc + 2L * b * c, *p01 = p00 + c, *p10 = p00 + wc, *p11 = p10 + c;
                float *restrict o = on + ((long)a * ow + b) * c;
                for (int j = 0; j < c; j++) {
                    float m = BN_Y(p00, j), y;
                    y = BN_Y(p01, j);
                    m = y > m ? y : m;
                    y = BN_Y(p10, j);
                    m = y > m ? y : m;
                    y = BN_Y(p11, j);
                    m = y > m ? y : m;
                    o[j] = m > 0.0f ? m : 0.0f;
                }
            }
    }
    return 0;
}

/* The window's first maximum: returns its offset (0, c, wc or wc + c from p00) for channel j, and its value in *m. */
static inline __attribute__((always_inline)) long bn_argmax(const float *p00, long c, long wc, int j,
                                                            const float *restrict scale, const float *restrict shift,
                                                            const float *restrict mean, float *m) {
    long off = 0;
    float best = BN_Y(p00, j), y;
    y = BN_Y(p00 + c, j);
    if (y > best) best = y, off = c;
    y = BN_Y(p00 + wc, j);
    if (y > best) best = y, off = wc;
    y = BN_Y(p00 + wc + c, j);
    if (y > best) best = y, off = wc + c;
    *m = best;
    return off;
}

int hf_bn_bwd_sums(const float *restrict x, const float *restrict dout, int h, int w, int c, int pool,
                   const float *restrict scale, const float *restrict shift, const float *restrict mean,
                   const float *restrict invstd, int n0, int n1, double *restrict part) {
    if (c < 1 || c > BN_MAXC) return 1;
    const long wc = (long)w * c;
    for (int n = n0; n < n1; n++) {
        double *restrict s = part + (long)n * 2 * c, *restrict s2 = s + c;
        for (int j = 0; j < c; j++) s[j] = s2[j] = 0.0;
        const float *restrict xn = x + (long)n * h * wc;
        if (!pool) {
            const float *restrict dn = dout + (long)n * h * wc;
            for (long i = 0; i < (long)h * w; i++)
                for (int j = 0; j < c; j++) {
                    float v = xn[i * c + j];
                    float g = BN_Y(xn + i * c, j) > 0.0f ? dn[i * c + j] : 0.0f;
                    s[j] += g;
                    s2[j] += (double)g * ((v - mean[j]) * invstd[j]);
                }
            continue;
        }
        const int oh = h / 2, ow = w / 2;
        const float *restrict dn = dout + (long)n * oh * ow * c;
        for (int a = 0; a < oh; a++)
            for (int b = 0; b < ow; b++) {
                const float *p00 = xn + (2L * a) * wc + 2L * b * c;
                const float *restrict d = dn + ((long)a * ow + b) * c;
                for (int j = 0; j < c; j++) {
                    float m;
                    long off = bn_argmax(p00, c, wc, j, scale, shift, mean, &m);
                    float g = m > 0.0f ? d[j] : 0.0f;
                    s[j] += g;
                    s2[j] += (double)g * ((p00[off + j] - mean[j]) * invstd[j]);
                }
            }
    }
    return 0;
}

int hf_bn_bwd_dx(const float *restrict x, const float *restrict dout, int h, int w, int c, int pool,
                 const float *restrict scale, const float *restrict shift, const float *restrict mean,
                 const float *restrict invstd, const float *restrict k, const float *restrict am,
                 const float *restrict bm, int n0, int n1, float *restrict dx) {
    if (c < 1 || c > BN_MAXC) return 1;
    const long wc = (long)w * c;
    for (int n = n0; n < n1; n++) {
        const float *restrict xn = x + (long)n * h * wc;
        float *restrict dxn = dx + (long)n * h * wc;
        if (!pool) {
            const float *restrict dn = dout + (long)n * h * wc;
            for (long i = 0; i < (long)h * w; i++)
                for (int j = 0; j < c; j++) {
                    float v = xn[i * c + j];
                    float g = BN_Y(xn + i * c, j) > 0.0f ? dn[i * c + j] : 0.0f;
                    dxn[i * c + j] = k[j] * (g - am[j] - (v - mean[j]) * invstd[j] * bm[j]);
                }
            continue;
        }
        /* each 2x2 window at once: dy = dout at its first maximum (if the output passed the ReLU), 0 elsewhere */
        const int oh = h / 2, ow = w / 2;
        const float *restrict dn = dout + (long)n * oh * ow * c;
        for (int a = 0; a < oh; a++)
            for (int b = 0; b < ow; b++) {
                const long base = (2L * a) * wc + 2L * b * c;
                const float *restrict d = dn + ((long)a * ow + b) * c;
                const float *restrict p0 = xn + base, *restrict p1 = p0 + c, *restrict p2 = p0 + wc,
                                      *restrict p3 = p2 + c;
                float *restrict q0 = dxn + base, *restrict q1 = q0 + c, *restrict q2 = q0 + wc, *restrict q3 = q2 + c;
                for (int j = 0; j < c; j++) {
                    float y0 = BN_Y(p0, j), y1 = BN_Y(p1, j), y2 = BN_Y(p2, j), y3 = BN_Y(p3, j), m = y0;
                    int idx = 0;
                    idx = y1 > m ? 1 : idx;
                    m = y1 > m ? y1 : m;
                    idx = y2 > m ? 2 : idx;
                    m = y2 > m ? y2 : m;
                    idx = y3 > m ? 3 : idx;
                    m = y3 > m ? y3 : m;
                    float g = m > 0.0f ? d[j] : 0.0f, kj = k[j], aj = am[j], mj = mean[j], ib = invstd[j] * bm[j];
                    q0[j] = kj * ((idx == 0 ? g : 0.0f) - aj - (p0[j] - mj) * ib);
                    q1[j] = kj * ((idx == 1 ? g : 0.0f) - aj - (p1[j] - mj) * ib);
                    q2[j] = kj * ((idx == 2 ? g : 0.0f) - aj - (p2[j] - mj) * ib);
                    q3[j] = kj * ((idx == 3 ? g : 0.0f) - aj - (p3[j] - mj) * ib);
                }
            }
        /* positions no window covers (the last row or column of an odd H or W): dy = 0 */
        for (int r = 0; r < h; r++)
            for (int col = (r < 2 * oh ? 2 * ow : 0); col < w; col++)
                for (int j = 0; j < c; j++) {
                    long at = (long)r * wc + (long)col * c + j;
                    dxn[at] = k[j] * (-am[j] - (xn[at] - mean[j]) * invstd[j] * bm[j]);
                }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------------------
   Parallel entry points of the authors' variant and BatchNorm kernels: [0, n) samples in nt contiguous ranges, one per
   OpenMP thread. Built with -fopenmp and loaded after torch, this library shares torch's libgomp (same soname), so
   these loops run on torch's own worker threads instead of threads that would compete with them for the cores.
   Results do not depend on nt (every sample's sums are written apart and summed by the caller). */
#define HF_PAR(call)                                                                                                  \
    int err = 0;                                                                                                      \
    _Pragma("omp parallel for num_threads(nt) schedule(static) reduction(| : err)") for (int t = 0; t < nt; t++) {    \
        int lo = (int)((long)n * t / nt), hi = (int)((long)n * (t + 1) / nt);                                         \
        err |= call;                                                                                                  \
    }                                                                                                                 \
    return err;

int hf_code_forward_par(const float *y, const float *bias, const float *gap, int p, int nh, int ns, long ld, int n,
                        int nt, float *points, float *wts) {
    HF_PAR(hf_code_forward(y, bias, gap, p, nh, ns, ld, lo, hi, points, wts))
}

int hf_code_backward_par(const float *y, const float *bias, const float *gap, int p, int nh, int ns, long ld, int n,
                         int nt, const float *dpoints, float *grad, float *dbias) {
    HF_PAR(hf_code_backward(y, bias, gap, p, nh, ns, ld, lo, hi, dpoints, grad, dbias))
}

int hf_bn_stats_par(const float *x, int hw, int c, int n, int nt, double *part) {
    HF_PAR(hf_bn_stats(x, hw, c, lo, hi, part))
}

int hf_bn_fwd_par(const float *x, int h, int w, int c, int pool, const float *scale, const float *shift,
                  const float *mean, int n, int nt, float *out) {
    HF_PAR(hf_bn_fwd(x, h, w, c, pool, scale, shift, mean, lo, hi, out))
}

int hf_bn_bwd_sums_par(const float *x, const float *dout, int h, int w, int c, int pool, const float *scale,
                       const float *shift, const float *mean, const float *invstd, int n, int nt, double *part) {
    HF_PAR(hf_bn_bwd_sums(x, dout, h, w, c, pool, scale, shift, mean, invstd, lo, hi, part))
}

int hf_bn_bwd_dx_par(const float *x, const float *dout, int h, int w, int c, int pool, const float *scale,
                     const float *shift, const float *mean, const float *invstd, const float *k, const float *am,
                     const float *bm, int n, int nt, float *dx) {
    HF_PAR(hf_bn_bwd_dx(x, dout, h, w, c, pool, scale, shift, mean, invstd, k, am, bm, lo, hi, dx))
}

/* Eq. 1's kernels the same way, over the heads [0, gh). */
int hf_eq1_forward_par(const float *proj, const float *bias, const float *w, int gh, int ch, int b, int p, int nt,
                       int d, float qscale, float *c, float *rowmax, float *rowsum, float *u, float *points) {
    const int n = gh;
    HF_PAR(hf_eq1_forward(proj, bias, w, gh, ch, b, p, lo, hi, d, qscale, c, rowmax, rowsum, u, points))
}

int hf_eq1_backward_par(const float *proj, const float *bias, const float *w, int gh, int ch, int b, int p, int nt,
                        int d, float qscale, float gscale, const float *rowmax, const float *rowsum, const float *c,
                        const float *dpoints, float *grad) {
    const int n = gh;
    HF_PAR(hf_eq1_backward(proj, bias, w, gh, ch, b, p, lo, hi, d, qscale, gscale, rowmax, rowsum, c, dpoints, grad))
}

int hf_eq1_fwdjac_par(const float *proj, const float *xp, const float *wt, const float *bt, int c_in, const float *bias,
                      const float *w, int gh, int ch, int b, int p, int nt, int d, float qscale, float gscale,
                      float *points, float *jac) {
    const int n = gh;
    HF_PAR(hf_eq1_fwdjac(proj, xp, wt, bt, c_in, bias, w, gh, ch, b, p, lo, hi, d, qscale, gscale, points, jac))
}

int hf_eq1_fwdpts_par(const float *proj, const float *xp, const float *wt, const float *bt, int c_in, const float *bias,
                      const float *w, int gh, int ch, int b, int p, int nt, int d, float qscale, float *points) {
    const int n = gh;
    HF_PAR(hf_eq1_fwdpts(proj, xp, wt, bt, c_in, bias, w, gh, ch, b, p, lo, hi, d, qscale, points))
}

int hf_eq1_scale_jac_par(float *jac, const float *dpoints, int gh, int ch, int b, int p, int nt, float *dbias) {
    const int n = gh;
    HF_PAR(hf_eq1_scale_jac(jac, dpoints, gh, ch, b, p, lo, hi, dbias))
}
