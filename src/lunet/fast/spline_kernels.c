/* The monotone rational-quadratic spline's no-autograd passes as compiled loops, for
 * lunet.fast.native (built on first use, called through ctypes on contiguous CPU tensors).
 *
 * The formulas and conventions are lunet.fast.spline's (spline_forward_fast, spline_inverse_fast,
 * spline_sample_fast); entries outside [-bound, bound] pass unchanged with log-derivative 0.
 * Rows are (rows, n), contiguous.
 *
 * The tables come bin-major and padded: table[k * P + f] is bin k of feature f, P (a multiple of
 * eight, at least n) apart, so that bin k's knots of consecutive features are consecutive. The
 * tables of several splines may follow each other, K * P apart: row r then reads spline
 * splines[r] (splines NULL: spline 0 for every row). A row goes eight (float) or four (double)
 * features at a time, as one vector of the compiler's vector extension (GCC and Clang lower it to
 * the machine's vector instructions, or to pairs of narrower ones): each entry's bin is found by
 * counting the inner knots below it, and its bin's quantities are picked by one bitwise select
 * per inner knot, with no branch and no indexed read.
 *
 * Each row's log-determinant is a sum of logs of products of slopes taken in double, one product
 * per lane of four factors (float32, whose slopes cannot under- or overflow such a product) or of
 * one factor (float64).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* 32-byte vectors: eight floats or four doubles (tables are padded to a multiple of eight) */
#define LANES_float 8
#define LANES_double 4

typedef float vfloat __attribute__((vector_size(32)));
typedef int32_t vmask_float __attribute__((vector_size(32)));
typedef double vdouble __attribute__((vector_size(32)));
typedef int64_t vmask_double __attribute__((vector_size(32)));

#define FACTORS_float 4
#define FACTORS_double 1
#define sqrt_float sqrtf
#define sqrt_double sqrt

/* where mask (-1 or 0 per lane), a, else b */
#define SELECT(T, mask, a, b) ((v##T)((((vmask_##T)(a)) & (mask)) | (((vmask_##T)(b)) & ~(mask))))

#define LUNET_VECTORS(T)                                                                    \
    static inline v##T load_##T(const T *p) { v##T v; memcpy(&v, p, sizeof v); return v; } \
    /* m < LANES_##T entries, the rest zero */                                                  \
    static inline v##T load_part_##T(const T *p, int64_t m) {                               \
        v##T v = {0};                                                                       \
        for (int64_t l = 0; l < m; ++l) v[l] = p[l];                                        \
        return v;                                                                           \
    }                                                                                       \
    static inline void store_##T(T *p, v##T v, int64_t m) {                                 \
        if (m == LANES_##T) memcpy(p, &v, sizeof v);                                            \
        else for (int64_t l = 0; l < m; ++l) p[l] = v[l];                                   \
    }                                                                                       \
    static inline v##T splat_##T(T x) {                                                     \
        v##T v;                                                                             \
        for (int64_t l = 0; l < LANES_##T; ++l) v[l] = x;                                       \
        return v;                                                                           \
    }                                                                                       \
    static inline v##T clamp_##T(v##T v, v##T lo, v##T hi) {                               \
        v = SELECT(T, v < lo, lo, v);                                                       \
        return SELECT(T, v > hi, hi, v);                                                    \
    }                                                                                       \
    static inline v##T sqrt_v##T(v##T v) {                                                  \
        for (int64_t l = 0; l < LANES_##T; ++l) v[l] = sqrt_##T(v[l]);                          \
        return v;                                                                           \
    }                                                                                       \
    /* the slopes of the first m lanes into the row's running products; their logs into     \
     * *acc every FACTORS_T chunks */                                                       \
    static inline void gather_logs_##T(double *prod, int *count, double *acc, v##T slope,   \
                                       int64_t m) {                                         \
        for (int64_t l = 0; l < m; ++l) prod[l] *= (double)slope[l];                        \
        if (++*count == FACTORS_##T) flush_logs(prod, LANES_##T, count, acc);                          \
    }

static inline void flush_logs(double *prod, int64_t lanes, int *count, double *acc) {
    for (int64_t l = 0; l < lanes; ++l) {
        *acc += log(prod[l]);
        prod[l] = 1.0;
    }
    *count = 0;
}

LUNET_VECTORS(float)
LUNET_VECTORS(double)

/* the chunk at f0 of the y side's bins: x0, w, y0 and four more quantities (a1 .. a4 of the
 * tables t1 .. t4) at each entry's bin, found among the knots y0 below yc (declares them) */
#define PICK_Y_BIN(T, yc, f0, a1, t1, a2, t2, a3, t3, a4, t4)                              \
    v##T ax0 = load_##T(x0 + f0), aw = load_##T(w + f0), ay0 = load_##T(y0 + f0);           \
    v##T a1 = load_##T(t1 + f0), a2 = load_##T(t2 + f0), a3 = load_##T(t3 + f0);             \
    v##T a4 = load_##T(t4 + f0);                                                            \
    for (int64_t k = 1; k < K; ++k) {                                                       \
        const int64_t o = k * P + f0;                                                       \
        v##T knot = load_##T(y0 + o);                                                       \
        vmask_##T below = knot < yc;                                                        \
        ay0 = SELECT(T, below, knot, ay0);                                                  \
        ax0 = SELECT(T, below, load_##T(x0 + o), ax0);                                      \
        aw = SELECT(T, below, load_##T(w + o), aw);                                         \
        a1 = SELECT(T, below, load_##T(t1 + o), a1);                                        \
        a2 = SELECT(T, below, load_##T(t2 + o), a2);                                        \
        a3 = SELECT(T, below, load_##T(t3 + o), a3);                                        \
        a4 = SELECT(T, below, load_##T(t4 + o), a4);                                        \
    }

#define LUNET_KERNELS(T, SUFFIX)                                                            \
/* y = spline(x) and log|dy/dx| summed per row. Tables (K, P): left knots x0, widths w, y0,   \
 * heights h, slope ratios q0, q1. keep_j, keep_t (both or neither NULL): each entry's         \
 * feature-major flat bin first + f * K + bin, and its position t in the bin */              \
void lunet_spline_forward_##SUFFIX(                                                         \
    int64_t rows, int64_t n, int64_t K, int64_t P, int64_t first, const int64_t *splines,   \
    T bound, const T *restrict x0_, const T *restrict w_, const T *restrict y0_,            \
    const T *restrict h_, const T *restrict q0_, const T *restrict q1_,                     \
    const T *restrict x, T *restrict y,                                                     \
    T *restrict logdet, int64_t *restrict keep_j, T *restrict keep_t) {                     \
    const v##T lo = splat_##T(-bound), hi = splat_##T(bound), one = splat_##T(1);           \
    const v##T two = splat_##T(2);                                                          \
    for (int64_t r = 0; r < rows; ++r) {                                                    \
        const T *xr = x + r * n;                                                            \
        const int64_t sp = splines ? splines[r] : 0, at = sp * K * P;                       \
        const T *x0 = x0_ + at, *w = w_ + at, *y0 = y0_ + at, *h = h_ + at;                 \
        const T *q0 = q0_ + at, *q1 = q1_ + at;                                             \
        double acc = 0.0, prod[LANES_##T];                                                      \
        int count = 0;                                                                      \
        for (int64_t l = 0; l < LANES_##T; ++l) prod[l] = 1.0;                                  \
        for (int64_t f0 = 0; f0 < n; f0 += LANES_##T) {                                         \
            int64_t m = n - f0 < LANES_##T ? n - f0 : LANES_##T;                                    \
            v##T vx = m == LANES_##T ? load_##T(xr + f0) : load_part_##T(xr + f0, m);           \
            v##T xc = clamp_##T(vx, lo, hi);                                                \
            v##T ax0 = load_##T(x0 + f0), aw = load_##T(w + f0), ay0 = load_##T(y0 + f0);   \
            v##T ah = load_##T(h + f0), a = load_##T(q0 + f0), b = load_##T(q1 + f0);       \
            vmask_##T bin = {0};                                                            \
            for (int64_t k = 1; k < K; ++k) {                                               \
                const int64_t o = k * P + f0;                                               \
                v##T knot = load_##T(x0 + o);                                               \
                vmask_##T below = knot < xc;                                                \
                ax0 = SELECT(T, below, knot, ax0);                                          \
                aw = SELECT(T, below, load_##T(w + o), aw);                                 \
                ay0 = SELECT(T, below, load_##T(y0 + o), ay0);                              \
                ah = SELECT(T, below, load_##T(h + o), ah);                                 \
                a = SELECT(T, below, load_##T(q0 + o), a);                                  \
                b = SELECT(T, below, load_##T(q1 + o), b);                                  \
                bin -= below;                                                               \
            }                                                                               \
            v##T t = (xc - ax0) / aw;                                                       \
            v##T u = one - t;                                                               \
            v##T den = (a + b - two) * (t * u) + one;                                       \
            v##T num = t + a * u;                                                           \
            v##T s = (b * t + u) * t + u * num;                                             \
            store_##T(y + r * n + f0, ay0 + ah * (num * t / den) + (vx - xc), m);           \
            gather_logs_##T(prod, &count, &acc, s / (den * den * (aw / ah)), m);            \
            if (keep_j) {                                                                   \
                for (int64_t l = 0; l < m; ++l)                                             \
                    keep_j[r * n + f0 + l] = first + (sp * n + f0 + l) * K + bin[l];        \
                store_##T(keep_t + r * n + f0, t, m);                                       \
            }                                                                               \
        }                                                                                   \
        flush_logs(prod, LANES_##T, &count, &acc);                                                     \
        logdet[r] = (T)acc;                                                                 \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* x = spline^-1(y), and log|dx/dy| summed per row where logdet is not NULL. Tables (K, P):   \
 * x0, w, y0, h, slopes s, knot slopes d0, d1. limit: the largest number of the dtype below   \
 * bound */                                                                                 \
void lunet_spline_inverse_##SUFFIX(                                                         \
    int64_t rows, int64_t n, int64_t K, int64_t P, const int64_t *splines, T limit,         \
    const T *restrict x0_, const T *restrict w_, const T *restrict y0_,                     \
    const T *restrict h_, const T *restrict s_, const T *restrict d0_,                      \
    const T *restrict d1_, const T *restrict y, T *restrict x, T *restrict logdet) {        \
    const v##T lo = splat_##T(-limit), hi = splat_##T(limit), one = splat_##T(1);           \
    const v##T two = splat_##T(2), four = splat_##T(4), zero = splat_##T(0);                \
    for (int64_t r = 0; r < rows; ++r) {                                                    \
        const T *yr = y + r * n;                                                            \
        const int64_t at = (splines ? splines[r] : 0) * K * P;                              \
        const T *x0 = x0_ + at, *w = w_ + at, *y0 = y0_ + at, *h = h_ + at;                 \
        const T *s = s_ + at, *d0 = d0_ + at, *d1 = d1_ + at;                               \
        double acc = 0.0, prod[LANES_##T];                                                      \
        int count = 0;                                                                      \
        for (int64_t l = 0; l < LANES_##T; ++l) prod[l] = 1.0;                                  \
        for (int64_t f0 = 0; f0 < n; f0 += LANES_##T) {                                         \
            int64_t m = n - f0 < LANES_##T ? n - f0 : LANES_##T;                                    \
            v##T vy = m == LANES_##T ? load_##T(yr + f0) : load_part_##T(yr + f0, m);           \
            v##T yc = clamp_##T(vy, lo, hi);                                                \
            PICK_Y_BIN(T, yc, f0, ah, h, sj, s, a, d0, b, d1)                               \
            v##T dy = yc - ay0;                                                             \
            v##T dyc = (a + b - two * sj) * dy;                                             \
            v##T qa = (sj - a) * ah + dyc;                                                  \
            v##T qb = ah * a - dyc;                                                         \
            v##T sdy = dy * sj;                                                             \
            v##T disc = qa * sdy * four + qb * qb;                                          \
            disc = SELECT(T, disc > zero, disc, zero);                                      \
            v##T t = two * sdy / (sqrt_v##T(disc) + qb);                                    \
            v##T excess = vy - yc;                                                          \
            store_##T(x + r * n + f0, ax0 + t * aw + excess, m);                            \
            if (!logdet) continue;                                                          \
            v##T u = one - t, tt = t * t, uu = u * u, tu = t * u;                           \
            v##T den = (tt + uu) * sj + (a + b) * tu;                                       \
            v##T q = b * tt + two * sj * tu + a * uu;                                       \
            /* outside the interval the identity: slope 1 */                                \
            v##T slope = SELECT(T, excess == zero, sj * sj * q / (den * den), one);         \
            gather_logs_##T(prod, &count, &acc, slope, m);                                  \
        }                                                                                   \
        if (!logdet) continue;                                                              \
        flush_logs(prod, LANES_##T, &count, &acc);                                                     \
        logdet[r] = (T)(-acc);                                                              \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* x = spline^-1(y) without the log-det, from the quadratic's per-bin coefficients, tables   \
 * (K, P): x0, w, y0, a2 = 2 h (s - d0), b2 = 2 (d0 + d1 - 2 s), c = h d0, s2 = 2 s */        \
void lunet_spline_sample_##SUFFIX(                                                          \
    int64_t rows, int64_t n, int64_t K, int64_t P, const int64_t *splines, T limit,         \
    const T *restrict x0_, const T *restrict w_, const T *restrict y0_,                     \
    const T *restrict a2_, const T *restrict b2_, const T *restrict c_,                     \
    const T *restrict s2_, const T *restrict y, T *restrict x) {                            \
    const v##T lo = splat_##T(-limit), hi = splat_##T(limit), half = splat_##T(0.5);        \
    const v##T zero = splat_##T(0);                                                         \
    for (int64_t r = 0; r < rows; ++r) {                                                    \
        const T *yr = y + r * n;                                                            \
        const int64_t at = (splines ? splines[r] : 0) * K * P;                              \
        const T *x0 = x0_ + at, *w = w_ + at, *y0 = y0_ + at, *a2 = a2_ + at;               \
        const T *b2 = b2_ + at, *c = c_ + at, *s2 = s2_ + at;                               \
        for (int64_t f0 = 0; f0 < n; f0 += LANES_##T) {                                         \
            int64_t m = n - f0 < LANES_##T ? n - f0 : LANES_##T;                                    \
            v##T vy = m == LANES_##T ? load_##T(yr + f0) : load_part_##T(yr + f0, m);           \
            v##T yc = clamp_##T(vy, lo, hi);                                                \
            PICK_Y_BIN(T, yc, f0, aa2, a2, ab2, b2, ac, c, as2, s2)                         \
            v##T dy = yc - ay0;                                                             \
            v##T qa2 = aa2 + dy * ab2;                                                      \
            v##T qb = ac - half * dy * ab2;                                                 \
            v##T sdy2 = dy * as2;                                                           \
            v##T disc = qa2 * sdy2 + qb * qb;                                               \
            disc = SELECT(T, disc > zero, disc, zero);                                      \
            v##T t = sdy2 / (sqrt_v##T(disc) + qb);                                         \
            store_##T(x + r * n + f0, ax0 + t * aw + (vy - yc), m);                         \
        }                                                                                   \
    }                                                                                       \
}

/* The training pass's backward (lunet.fast.spline_training.SplineForward), one entry at a time:
 * from each entry's flat bin j and position t the forward pass kept, feature-major tables q0, q1,
 * w, h (nk bins, those of every spline of a stack), the rows x and the incoming g_value (rows, n)
 * and g_logdet (rows): adds each bin's sums of g_t, g_t t, g_y, g_y R, g_q0, g_q1, g_L into sums
 * (7, nk) and writes g_x (rows, n),
 * by the formulas of spline_training._backward_block. Entries outside [-limit, limit] give the
 * tables nothing and x the incoming gradient. */
#define LUNET_BACKWARD(T, SUFFIX)                                                           \
void lunet_spline_backward_##SUFFIX(                                                        \
    int64_t rows, int64_t n, int64_t nk, T limit,                                           \
    const T *restrict q0, const T *restrict q1, const T *restrict w, const T *restrict h,   \
    const T *restrict x, const T *restrict g_value, const T *restrict g_logdet,             \
    const int64_t *restrict j, const T *restrict t, T *restrict sums, T *restrict g_x) {    \
    T *s_t = sums, *s_tt = sums + nk, *s_y = sums + 2 * nk, *s_yr = sums + 3 * nk;          \
    T *s_q0 = sums + 4 * nk, *s_q1 = sums + 5 * nk, *s_l = sums + 6 * nk;                   \
    for (int64_t r = 0; r < rows; ++r) {                                                    \
        const T gld = g_logdet[r];                                                          \
        for (int64_t f = 0; f < n; ++f) {                                                   \
            const int64_t e = r * n + f, jj = j[e];                                         \
            const T xv = x[e], gv = g_value[e], tt = t[e];                                  \
            const T a = q0[jj], b = q1[jj];                                                 \
            const T inside = (xv >= -limit && xv <= limit) ? 1 : 0;                         \
            const T u = 1 - tt, tu = tt * u, g = a + b - 2;                                 \
            const T den = g * tu + 1, num = tt + a * u;                                     \
            const T p = (b * tt + u) * tt + u * num;                                        \
            const T ratio = tt * num / den;                                                 \
            const T gy = gv * inside, gl = inside * gld;                                    \
            const T ev = gy * h[jj] / den, bp = gl / p, fv = ev * ratio + 2 * gl / den;     \
            const T gq0 = (ev - fv) * tu + bp * (u * u);                                    \
            const T gq1 = (tt * tt) * bp - fv * tu;                                         \
            const T gt = (num + tt - a * tt) * ev + 2 * bp * ((b * tt + u) - tt - a * u)    \
                         - fv * ((u - tt) * g);                                             \
            s_t[jj] += gt; s_tt[jj] += gt * tt; s_y[jj] += gy; s_yr[jj] += ratio * gy;      \
            s_q0[jj] += gq0; s_q1[jj] += gq1; s_l[jj] += gl;                                \
            g_x[e] = gt / w[jj] + (1 - inside) * gv;                                        \
        }                                                                                   \
    }                                                                                       \
}

LUNET_KERNELS(float, f32)
LUNET_KERNELS(double, f64)
LUNET_BACKWARD(float, f32)
LUNET_BACKWARD(double, f64)
