// The kernel of flows/fused.py in C++, one point at a time: the same formulas (that module's docstring), the
// same order of operations up to the matrix products' summation order, forward and reverse pass.
//
// Built on first use by flows/native.py (a C++ compiler, -O3 -march=native) and called through ctypes with
// the tensors' data pointers; where no compiler works, flows/fused.py's numpy kernel runs instead. Why: on a
// batch of 200 points an evaluation is about 100 small array operations forward and 150 backward, each a few
// microseconds of dispatch, while the arithmetic is ~1.3 million multiply-adds; here it is one call
// (tests/test_fused.py checks the kernels against each other, against the generic autograd path and with
// torch.autograd.gradcheck).
//
// Layout (row-major, contiguous): v (B, n), p (B, d), E (B, n, d) with d = n + 1; g (B, n), div (B); the
// network's L layers W_l (out_l, in_l) and b_l (out_l), in_0 = d + 1 (time is the first layer's last input
// column), out_{L-1} = d. Geometry in G (the state's dtype), the network in N (its parameters'), as the numpy
// kernel casts them. A forward pass given room for it (save_n, save_g: training) keeps each point's workspace
// (the network's rows per layer, the chart and frame quantities); the reverse pass (Gg non-null) reads it and
// writes the gradients of v, p, E (each optional: null), of every weight and bias (sums over the points) and
// of t.

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace {

template <typename N>
struct Layer {
    int64_t in, out;
    const N* W;   // (out, in_full) as given
    int64_t ld;   // in_full: in + 1 for the first layer (time column)
    N* WT;        // (in, out) transposed copy, for products as axpy loops
    N* bias;      // effective bias (first layer: b + t W[:, in])
    N* gW;        // (out, ld) gradient, or null in a forward pass
    N* gb;        // (out)
    // in a point's workspace (set per point): offsets, then pointers
    int64_t a_off, z_off, ds_off;
    N* A;   // (R, in) the layer's inputs: the value row, then the n derivative rows
    N* Z;   // (R, out) outputs before the activation
    N* DS;  // (out) tanh'(z) of the value row
};

// A point's workspace: the network's rows per layer (N) and the geometry (G), kept between the forward and
// the reverse pass when the caller gives room for it (training), else reused from point to point.
inline int64_t network_workspace(int64_t n, int64_t L, const int64_t* sizes) {
    int64_t total = 0;
    for (int64_t l = 0; l < L; ++l) total += (n + 1) * (sizes[l] + sizes[l + 1]) + sizes[l + 1];
    return total;
}
constexpr int64_t SCALARS = 13;  // r2, C, S, q, dC, dS, dq, w, sgn, yh, ysh, wr, vg
inline int64_t geometry_workspace(int64_t n) { return 7 * (n + 1) + 2 * n * (n + 1) + n + SCALARS; }

template <typename G>
struct Radial {
    G C, S, q, dC, dS, dq;
};

template <typename G>
Radial<G> radial(G r2, int curvature, const double* series, double threshold) {
    Radial<G> o;
    if (r2 < G(threshold)) {  // Taylor rows in r2: (C, S, q, dC, dS, dq)
        G out[6];
        for (int i = 0; i < 6; ++i)
            out[i] = G(series[i]) + r2 * (G(series[6 + i]) + r2 * (G(series[12 + i]) + r2 * G(series[18 + i])));
        o = {out[0], out[1], out[2], out[3], out[4], out[5]};
        return o;
    }
    G r = std::sqrt(r2);
    if (curvature > 0) {
        o.C = std::cos(r);
        o.S = std::sin(r) / r;
    } else {
        o.C = std::cosh(r);
        o.S = std::sinh(r) / r;
    }
    o.q = (1 - o.C / o.S) / r2;
    o.dS = (o.C - o.S) / (2 * r2);
    G half = curvature > 0 ? G(-0.5) : G(0.5);
    o.dq = (o.C * o.dS / (o.S * o.S) - half - o.q) / r2;
    o.dC = half * o.S;
    return o;
}

// tanh of a row of the network: a = tanh(z), ds = 1 - a^2. For float a branch-free form the compiler
// vectorizes (libm's tanhf is a call per element, about half of a float evaluation's time): the odd Taylor
// polynomial to x^11 below |x| = 0.3 (relative error < 1e-9), (1 - e) / (1 + e) with e = exp(-2|x|) above
// (exp: 2^k times a degree-7 polynomial on |r| <= ln(2) / 2); within 3 ulp of tanh, as numpy's own.
inline float exp_neg(float y) {  // exp(y) for -18 <= y <= 0
    const float k = std::floor(y * 1.44269504088896341f + 0.5f);
    const float r = (y - k * 0.693145751953125f) - k * 1.42860682030941723e-6f;
    float pr = 1.0f / 5040;
    pr = pr * r + 1.0f / 720;
    pr = pr * r + 1.0f / 120;
    pr = pr * r + 1.0f / 24;
    pr = pr * r + 1.0f / 6;
    pr = pr * r + 0.5f;
    pr = pr * r + 1.0f;
    pr = pr * r + 1.0f;
    const uint32_t bits = uint32_t(int32_t(k) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return pr * scale;
}

inline float tanh_(float x) {
    const float ax0 = std::fabs(x);
    const float ax = ax0 > 9.0f ? 9.0f : ax0;  // (NaN stays NaN)
    const float x2 = ax * ax;
    float series = 21844.0f / 6081075;
    series = series * x2 - 1382.0f / 155925;
    series = series * x2 + 62.0f / 2835;
    series = series * x2 - 17.0f / 315;
    series = series * x2 + 2.0f / 15;
    series = series * x2 - 1.0f / 3;
    series = ax + ax * x2 * series;
    const float e = exp_neg(-2 * ax);
    const float t = ax < 0.3f ? series : (1 - e) / (1 + e);
    return std::copysign(t, x);
}

inline double tanh_(double x) { return std::tanh(x); }

// One layer on the R rows of a point (the value row, then the n derivative rows): z = W a (+ b on the value
// row), and for a hidden layer the next layer's inputs tanh(z), tanh'(z) dz. RR, IN, OUT > 0: the row count
// and widths as compile-time constants (the default network): a row's outputs then stay in registers, summed
// in two accumulators (even and odd inputs: half the chain of dependent additions). (All rows advancing
// together, R x OUT accumulators, measured slower: 0.189 against 0.128 ms a forward call.)
template <typename N, int RR, int IN, int OUT>
void layer_forward(Layer<N>& Ly, int64_t R, Layer<N>* next) {
    const int64_t in = IN ? IN : Ly.in, out = OUT ? OUT : Ly.out;
    N* Z = Ly.Z;
    if constexpr (RR > 0 && OUT > 0) {
        for (int r = 0; r < RR; ++r) {
            // two accumulators (even and odd inputs): half the chain of dependent additions
            N acc[2][OUT];
            for (int j = 0; j < OUT; ++j) acc[0][j] = r == 0 ? Ly.bias[j] : N(0), acc[1][j] = 0;
            const N* a = Ly.A + r * in;
            int64_t i = 0;
            for (; i + 1 < in; i += 2) {
                const N* wt = Ly.WT + i * OUT;
                for (int j = 0; j < OUT; ++j) {
                    acc[0][j] += wt[j] * a[i];
                    acc[1][j] += wt[OUT + j] * a[i + 1];
                }
            }
            if (i < in)
                for (int j = 0; j < OUT; ++j) acc[0][j] += Ly.WT[i * OUT + j] * a[i];
            for (int j = 0; j < OUT; ++j) Z[r * OUT + j] = acc[0][j] + acc[1][j];
        }
    } else {
        for (int64_t r = 0; r < R; ++r) {
            const N* a = Ly.A + r * in;
            N* z = Z + r * out;
            for (int64_t j = 0; j < out; ++j) z[j] = r == 0 ? Ly.bias[j] : N(0);
            for (int64_t i = 0; i < in; ++i) {
                const N ai = a[i];
                const N* wt = Ly.WT + i * out;
                for (int64_t j = 0; j < out; ++j) z[j] += wt[j] * ai;
            }
        }
    }
    if (!next) return;
    N* An = next->A;
    for (int64_t j = 0; j < out; ++j) {
        const N a = tanh_(Z[j]);
        An[j] = a;
        Ly.DS[j] = 1 - a * a;
    }
    for (int64_t r = 1; r < R; ++r)
        for (int64_t j = 0; j < out; ++j) An[r * out + j] = Ly.DS[j] * Z[r * out + j];
}

// Its reverse pass: from the gradients ``go`` (R, out) of z to those of the weights (accumulated) and ``gi``
// (R, in) of the inputs; then, unless ``prev`` is null, through the previous layer's activation
// (a = tanh(z), da_i = ds dz_i) into ``go`` (R, in): the gradients of the previous layer's z.
template <typename N, int RR, int IN, int OUT>
void layer_backward(Layer<N>& Ly, int64_t R, int64_t n, N* go, N* gi, const Layer<N>* prev) {
    const int64_t in = IN ? IN : Ly.in, out = OUT ? OUT : Ly.out, ld = Ly.ld;
    if constexpr (RR > 0 && IN > 0) {
        N acc[RR][IN] = {};
        for (int64_t j = 0; j < out; ++j) {
            const N* w = Ly.W + j * ld;
            N* gw = Ly.gW + j * ld;
            N accw[IN];
            for (int i = 0; i < IN; ++i) accw[i] = gw[i];
            for (int r = 0; r < RR; ++r) {
                const N gj = go[r * out + j];
                const N* a = Ly.A + r * IN;
                for (int i = 0; i < IN; ++i) {
                    acc[r][i] += w[i] * gj;
                    accw[i] += gj * a[i];
                }
            }
            for (int i = 0; i < IN; ++i) gw[i] = accw[i];
            Ly.gb[j] += go[j];
        }
        for (int r = 0; r < RR; ++r)
            for (int i = 0; i < IN; ++i) gi[r * IN + i] = acc[r][i];
    } else {
        for (int64_t j = 0; j < out; ++j) {
            N* gw = Ly.gW + j * ld;
            for (int64_t r = 0; r < R; ++r) {
                const N gj = go[r * out + j];
                const N* a = Ly.A + r * in;
                for (int64_t i = 0; i < in; ++i) gw[i] += gj * a[i];
            }
            Ly.gb[j] += go[j];
        }
        for (int64_t r = 0; r < R; ++r) {
            N* gir = gi + r * in;
            for (int64_t i = 0; i < in; ++i) gir[i] = 0;
            for (int64_t j = 0; j < out; ++j) {
                const N gj = go[r * out + j];
                const N* w = Ly.W + j * ld;
                for (int64_t i = 0; i < in; ++i) gir[i] += w[i] * gj;
            }
        }
    }
    if (!prev) return;
    const N* a = Ly.A;
    for (int64_t j = 0; j < in; ++j) {
        N s = 0;
        for (int64_t i = 0; i < n; ++i) s += gi[(1 + i) * in + j] * prev->Z[(1 + i) * in + j];
        go[j] = prev->DS[j] * (gi[j] - 2 * a[j] * s);
    }
    for (int64_t r = 1; r < R; ++r)
        for (int64_t j = 0; j < in; ++j) go[r * in + j] = prev->DS[j] * gi[r * in + j];
}

template <typename G, typename N, int NN, int H>
int run(int kind, int64_t B, int64_t n_rt, double t, const G* v, const G* p, const G* E, int64_t L,
        const int64_t* sizes, const int64_t* Wp, const int64_t* bp, const double* series, double threshold,
        G* g, G* dv, const G* Gg, const G* Gd, G* Gv, G* Gp, G* GE, const int64_t* gWp, const int64_t* gbp,
        double* Gt, N* save_n, G* save_g) {
    const bool sphere = kind == 1;
    const int curvature = sphere ? 1 : -1;
    const int64_t n = NN ? NN : n_rt;
    const int64_t d = n + 1, R = n + 1, k = n - 1;
    constexpr int D = NN ? NN + 1 : 0;
    const bool backward = Gg != nullptr;
    if (backward && !(save_n && save_g)) return 2;  // the reverse pass reads the forward pass's workspace
    const int64_t nstride = network_workspace(n, L, sizes), gstride = geometry_workspace(n);

    // one allocation: layers' transposed weights, biases, per-point scratch; geometry scratch
    int64_t total = nstride;
    for (int64_t l = 0; l < L; ++l) total += sizes[l] * sizes[l + 1] + sizes[l + 1];
    const int64_t maxw = [&] {
        int64_t m = 0;
        for (int64_t l = 0; l <= L; ++l) m = sizes[l] > m ? sizes[l] : m;
        return m;
    }();
    total += 2 * R * maxw;  // the reverse pass's two row blocks
    const int64_t gtotal = gstride + 8 * d + n * d;
    N* nbuf = static_cast<N*>(std::malloc(sizeof(N) * total));
    G* gbuf = static_cast<G*>(std::malloc(sizeof(G) * gtotal));
    Layer<N>* layers = static_cast<Layer<N>*>(std::malloc(sizeof(Layer<N>) * L));
    if (!nbuf || !gbuf || !layers) {
        std::free(nbuf);
        std::free(gbuf);
        std::free(layers);
        return 1;
    }
    N* cur = nbuf;
    for (int64_t l = 0; l < L; ++l) {
        Layer<N>& Ly = layers[l];
        Ly.in = sizes[l];
        Ly.out = sizes[l + 1];
        Ly.ld = l == 0 ? Ly.in + 1 : Ly.in;
        Ly.W = reinterpret_cast<const N*>(Wp[l]);
        const N* b = reinterpret_cast<const N*>(bp[l]);
        Ly.WT = cur, cur += Ly.in * Ly.out;
        Ly.bias = cur, cur += Ly.out;
        for (int64_t j = 0; j < Ly.out; ++j) {
            for (int64_t i = 0; i < Ly.in; ++i) Ly.WT[i * Ly.out + j] = Ly.W[j * Ly.ld + i];
            Ly.bias[j] = l == 0 ? b[j] + N(t) * Ly.W[j * Ly.ld + Ly.in] : b[j];
        }
        Ly.gW = backward ? reinterpret_cast<N*>(gWp[l]) : nullptr;
        Ly.gb = backward ? reinterpret_cast<N*>(gbp[l]) : nullptr;
        if (backward) {
            std::memset(Ly.gW, 0, sizeof(N) * Ly.out * Ly.ld);
            std::memset(Ly.gb, 0, sizeof(N) * Ly.out);
        }
    }
    int64_t off = 0;
    for (int64_t l = 0; l < L; ++l) {
        Layer<N>& Ly = layers[l];
        Ly.a_off = off, off += R * Ly.in;
        Ly.z_off = off, off += R * Ly.out;
        Ly.ds_off = off, off += Ly.out;
    }
    N* nscratch = cur;  // a point's network workspace when none is kept
    N* GO = cur + nstride;  // (R, maxw) gradients of a layer's outputs
    N* GI = GO + R * maxw;  // (R, maxw) of its inputs
    // the reverse pass's geometry
    G* gc = gbuf + gstride;
    G* Gu = gc, *Gf = gc + d, *Gy = gc + 2 * d, *Grho = gc + 3 * d, *Gcf = gc + 4 * d, *Gg2 = gc + 5 * d;
    G* Ghs = gc + 6 * d, *GBs = gc + 7 * d, *GEy = gc + 8 * d;  // GEy (n, d)

    // each layer with its widths as constants where known: first (d -> H), hidden (H -> H), last (H -> d)
    auto forward = [&](int64_t l) {
        Layer<N>* next = l + 1 < L ? &layers[l + 1] : nullptr;
        if (l == 0 && L == 1)
            layer_forward<N, D, D, D>(layers[l], R, next);
        else if (l == 0)
            layer_forward<N, D, D, H>(layers[l], R, next);
        else if (l == L - 1)
            layer_forward<N, D, H, D>(layers[l], R, next);
        else
            layer_forward<N, D, H, H>(layers[l], R, next);
    };
    auto backward_ = [&](int64_t l, N* go, N* gi) {
        const Layer<N>* prev = l > 0 ? &layers[l - 1] : nullptr;
        if (l == 0 && L == 1)
            layer_backward<N, D, D, D>(layers[l], R, n, go, gi, prev);
        else if (l == 0)
            layer_backward<N, D, D, H>(layers[l], R, n, go, gi, prev);
        else if (l == L - 1)
            layer_backward<N, D, H, D>(layers[l], R, n, go, gi, prev);
        else
            layer_backward<N, D, H, H>(layers[l], R, n, go, gi, prev);
    };
    const Layer<N>& last = layers[L - 1];
    for (int64_t bi = 0; bi < B; ++bi) {
        const G* vb = v + bi * n;
        const G* pb = p + bi * d;
        const G* Eb = E + bi * n * d;
        N* wn = save_n ? save_n + bi * nstride : nscratch;
        G* wg = save_g ? save_g + bi * gstride : gbuf;
        for (int64_t l = 0; l < L; ++l) {
            Layer<N>& Ly = layers[l];
            Ly.A = wn + Ly.a_off, Ly.Z = wn + Ly.z_off, Ly.DS = wn + Ly.ds_off;
        }
        G* u = wg, *y = wg + d, *h = wg + 2 * d, *f = wg + 3 * d, *rho = wg + 4 * d, *Jf = wg + 5 * d;
        G* cf = wg + 6 * d;
        G* Ey = wg + 7 * d;      // (n, d) tangent frame at y
        G* dh = Ey + n * d;      // (n, d) the network's derivatives along it
        G* gvec = dh + n * d;    // (n) g
        G* sc = gvec + n;        // the scalars
        const G* ys = y + 1;
        const G* hs = h + 1;
        G r2, C, S, q, dC, dS, dq, w, sgn, yh, ysh, wr, vg;
        if (backward) {
            r2 = sc[0], C = sc[1], S = sc[2], q = sc[3], dC = sc[4], dS = sc[5], dq = sc[6];
            w = sc[7], sgn = sc[8], yh = sc[9], ysh = sc[10], wr = sc[11], vg = sc[12];
        } else {
            // -- the chart point y = C p + S u, u = v E
            r2 = 0;
            for (int64_t i = 0; i < n; ++i) r2 += vb[i] * vb[i];
            for (int64_t a = 0; a < d; ++a) {
                G s = 0;
                for (int64_t i = 0; i < n; ++i) s += vb[i] * Eb[i * d + a];
                u[a] = s;
            }
            const Radial<G> rad = radial<G>(r2, curvature, series, threshold);
            C = rad.C, S = rad.S, q = rad.q, dC = rad.dC, dS = rad.dS, dq = rad.dq;
            for (int64_t a = 0; a < d; ++a) y[a] = C * pb[a] + S * u[a];
            // -- the tangent frame at y (rows)
            sgn = 1;
            if (sphere) {
                sgn = y[0] > 0 ? G(-1) : G(1);
                w = 1 / (1 + std::fabs(y[0]));
                for (int64_t i = 0; i < n; ++i) {
                    Ey[i * d] = sgn * ys[i];
                    for (int64_t j = 0; j < n; ++j) Ey[i * d + 1 + j] = (i == j ? G(1) : G(0)) - w * ys[i] * ys[j];
                }
            } else {
                w = 1 / (y[0] + 1);
                for (int64_t i = 0; i < n; ++i) {
                    Ey[i * d] = ys[i];
                    for (int64_t j = 0; j < n; ++j) Ey[i * d + 1 + j] = w * ys[i] * ys[j] + (i == j ? G(1) : G(0));
                }
            }
            // -- the network at [y, t] and its derivatives along the frame
            {
                N* A = layers[0].A;
                for (int64_t a = 0; a < d; ++a) A[a] = N(y[a]);
                for (int64_t i = 0; i < n; ++i)
                    for (int64_t a = 0; a < d; ++a) A[(1 + i) * d + a] = N(Ey[i * d + a]);
            }
            for (int64_t l = 0; l < L; ++l) forward(l);
            for (int64_t a = 0; a < d; ++a) h[a] = G(last.Z[a]);
            for (int64_t i = 0; i < n; ++i)
                for (int64_t a = 0; a < d; ++a) dh[i * d + a] = G(last.Z[(1 + i) * d + a]);
            // -- the field, its divergence, the chart velocity
            yh = 0, ysh = 0, wr = 0, vg = 0;
            G divf = 0;
            if (sphere) {
                for (int64_t a = 0; a < d; ++a) yh += y[a] * h[a];
                for (int64_t a = 0; a < d; ++a) f[a] = h[a] - yh * y[a];
                for (int64_t i = 0; i < n * d; ++i) divf += Ey[i] * dh[i];
                divf -= G(n) * yh;
                for (int64_t a = 0; a < d; ++a) rho[a] = C * u[a] - (r2 * S) * pb[a];
                for (int64_t a = 0; a < d; ++a) Jf[a] = f[a];
            } else {
                for (int64_t a = 0; a < d; ++a) {
                    G s = 0;
                    for (int64_t i = 0; i < n; ++i) s += hs[i] * Ey[i * d + a];
                    f[a] = s;
                }
                for (int64_t i = 0; i < n; ++i) ysh += ys[i] * hs[i];
                for (int64_t a = 0; a < d; ++a) rho[a] = C * u[a] + (r2 * S) * pb[a];
                for (int64_t a = 0; a < d; ++a) Jf[a] = a == 0 ? -f[0] : f[a];
                for (int64_t i = 0; i < n; ++i) divf += dh[i * d + 1 + i];
                divf += G(k) * w * ysh;
            }
            for (int64_t a = 0; a < d; ++a) wr += Jf[a] * rho[a];
            for (int64_t i = 0; i < n; ++i) {
                G s = 0;
                for (int64_t a = 0; a < d; ++a) s += Eb[i * d + a] * Jf[a];
                cf[i] = s;
            }
            for (int64_t i = 0; i < n; ++i) gvec[i] = cf[i] / S + (q * wr) * vb[i];
            for (int64_t i = 0; i < n; ++i) vg += vb[i] * gvec[i];
            if (g)
                for (int64_t i = 0; i < n; ++i) g[bi * n + i] = gvec[i];
            if (dv) dv[bi] = divf + G(k) * q * vg;
            sc[0] = r2, sc[1] = C, sc[2] = S, sc[3] = q, sc[4] = dC, sc[5] = dS, sc[6] = dq;
            sc[7] = w, sc[8] = sgn, sc[9] = yh, sc[10] = ysh, sc[11] = wr, sc[12] = vg;
            continue;
        }

        // ---------------------------------------------------------------- reverse pass
        const G gd = Gd[bi];
        const G kGd = G(k) * gd;
        const G* Ggb = Gg + bi * n;
        G Ggv = 0;
        for (int64_t i = 0; i < n; ++i) {
            Gg2[i] = Ggb[i] + (kGd * q) * vb[i];
            Ggv += Gg2[i] * vb[i];
        }
        const G Gq = kGd * vg + wr * Ggv;
        const G Gwr = q * Ggv;
        for (int64_t i = 0; i < n; ++i) Gcf[i] = Gg2[i] / S;
        for (int64_t a = 0; a < d; ++a) {
            G s = 0;
            for (int64_t i = 0; i < n; ++i) s += Gcf[i] * Eb[i * d + a];
            Gf[a] = s + Gwr * rho[a];
        }
        if (!sphere) Gf[0] = -Gf[0];
        for (int64_t a = 0; a < d; ++a) Grho[a] = Gwr * Jf[a];
        G Grp = 0, Gcfcf = 0, GC = 0;
        for (int64_t a = 0; a < d; ++a) Grp += Grho[a] * pb[a];
        for (int64_t i = 0; i < n; ++i) Gcfcf += Gcf[i] * cf[i];
        for (int64_t a = 0; a < d; ++a) GC += Grho[a] * u[a];
        G GS = (sphere ? -r2 : r2) * Grp - Gcfcf / S;
        // gradients of the network's outputs: rows (value, derivatives) in GO, in N
        const int64_t od = last.out;  // = d
        if (sphere) {
            G Gfy = 0;
            for (int64_t a = 0; a < d; ++a) Gfy += Gf[a] * y[a];
            const G Gyh = -Gfy - G(n) * gd;
            for (int64_t a = 0; a < d; ++a) GO[a] = N(Gf[a] + Gyh * y[a]);
            for (int64_t i = 0; i < n; ++i)
                for (int64_t a = 0; a < d; ++a) GO[(1 + i) * od + a] = N(gd * Ey[i * d + a]);
            for (int64_t i = 0; i < n * d; ++i) GEy[i] = gd * dh[i];
            for (int64_t a = 0; a < d; ++a) Gy[a] = -yh * Gf[a] + Gyh * h[a];
        } else {
            const G kGdw = kGd * w;
            for (int64_t i = 0; i < n; ++i) {
                G s = 0;
                for (int64_t a = 0; a < d; ++a) s += Ey[i * d + a] * Gf[a];
                Ghs[i] = s + kGdw * ys[i];
            }
            GO[0] = 0;
            for (int64_t i = 0; i < n; ++i) GO[1 + i] = N(Ghs[i]);
            for (int64_t i = 0; i < n; ++i)
                for (int64_t a = 0; a < d; ++a) GO[(1 + i) * od + a] = a == 1 + i ? N(gd) : N(0);
            for (int64_t i = 0; i < n; ++i)
                for (int64_t a = 0; a < d; ++a) GEy[i * d + a] = hs[i] * Gf[a];
            for (int64_t a = 0; a < d; ++a) Gy[a] = 0;
        }
        // the network's reverse pass, layer by layer (GO: gradients of the outputs before the activation)
        for (int64_t l = L - 1; l >= 0; --l) backward_(l, GO, GI);
        const N* gi = GI;
        // gi: gradients of the network's input rows (y, then the frame's rows)
        for (int64_t a = 0; a < d; ++a) Gy[a] += G(gi[a]);
        for (int64_t i = 0; i < n; ++i)
            for (int64_t a = 0; a < d; ++a) GEy[i * d + a] += G(gi[(1 + i) * d + a]);
        // the frame (and, on H^n, the term k w <y', h'>)
        G ysGBs = 0;
        for (int64_t i = 0; i < n; ++i) {
            G s = 0;
            for (int64_t j = 0; j < n; ++j) s += (GEy[i * d + 1 + j] + GEy[j * d + 1 + i]) * ys[j];
            GBs[i] = s;
            ysGBs += ys[i] * s;
        }
        if (sphere) {
            const G sy0 = y[0] > 0 ? G(1) : (y[0] < 0 ? G(-1) : G(0));
            for (int64_t i = 0; i < n; ++i) Gy[1 + i] += sgn * GEy[i * d] - w * GBs[i];
            Gy[0] += (w * w) * sy0 * ysGBs / 2;
        } else {
            const G kGdw = kGd * w;
            for (int64_t i = 0; i < n; ++i) Gy[1 + i] += GEy[i * d] + w * GBs[i] + kGdw * hs[i];
            Gy[0] += -(w * w) * (ysGBs / 2 + kGd * ysh);
        }
        // the chart: y = C p + S u with C, S, q functions of r2 = |v|^2, u = v E
        G GCt = GC, GSt = GS;
        for (int64_t a = 0; a < d; ++a) {
            GCt += Gy[a] * pb[a];
            GSt += Gy[a] * u[a];
        }
        for (int64_t a = 0; a < d; ++a) Gu[a] = C * Grho[a] + S * Gy[a];
        const G Gr2 = (sphere ? -S : S) * Grp + GCt * dC + GSt * dS + Gq * dq;
        G* Gvb = Gv + bi * n;
        for (int64_t i = 0; i < n; ++i) {
            G s = 0;
            for (int64_t a = 0; a < d; ++a) s += Eb[i * d + a] * Gu[a];
            Gvb[i] = s + 2 * Gr2 * vb[i] + (kGd * q) * gvec[i] + (q * wr) * Gg2[i];
        }
        if (Gp) {
            G* Gpb = Gp + bi * d;
            const G c = sphere ? -(r2 * S) : r2 * S;
            for (int64_t a = 0; a < d; ++a) Gpb[a] = C * Gy[a] + c * Grho[a];
        }
        if (GE) {
            G* GEb = GE + bi * n * d;
            for (int64_t i = 0; i < n; ++i)
                for (int64_t a = 0; a < d; ++a) GEb[i * d + a] = vb[i] * Gu[a] + Gcf[i] * Jf[a];
        }
    }
    if (backward) {  // time is folded into the first layer's bias: z += t W[:, in]
        Layer<N>& L0 = layers[0];
        double gt = 0;
        for (int64_t j = 0; j < L0.out; ++j) {
            gt += double(L0.gb[j]) * double(L0.W[j * L0.ld + L0.in]);
            L0.gW[j * L0.ld + L0.in] = N(t) * L0.gb[j];
        }
        if (Gt) *Gt = gt;
    }
    std::free(nbuf);
    std::free(gbuf);
    std::free(layers);
    return 0;
}

}  // namespace

#define FUSED_ENTRY(NAME, G, N, NN, H)                                                                                   \
    extern "C" int NAME(int kind, int64_t B, int64_t n, double t, const G* v, const G* p, const G* E, int64_t L, \
                        const int64_t* sizes, const int64_t* W, const int64_t* b, const double* series,           \
                        double threshold, G* g, G* div, const G* Gg, const G* Gd, G* Gv, G* Gp, G* GE,            \
                        const int64_t* gW, const int64_t* gb, double* Gt, N* save_n, G* save_g) {                \
        return run<G, N, NN, H>(kind, B, n, t, v, p, E, L, sizes, W, b, series, threshold, g, div, Gg, Gd, Gv, Gp, GE, \
                         gW, gb, Gt, save_n, save_g);                                                             \
    }

FUSED_ENTRY(fused_f32_f32, float, float, 0, 0)
FUSED_ENTRY(fused_f64_f32, double, float, 0, 0)
FUSED_ENTRY(fused_f64_f64, double, double, 0, 0)
// the default model: n = 2, hidden width 32
FUSED_ENTRY(fused_f32_f32_2_32, float, float, 2, 32)
FUSED_ENTRY(fused_f64_f32_2_32, double, float, 2, 32)
FUSED_ENTRY(fused_f64_f64_2_32, double, double, 2, 32)

// the workspace a point keeps between the passes: (network elements, geometry elements)
extern "C" void fused_workspace(int64_t n, int64_t L, const int64_t* sizes, int64_t* out) {
    out[0] = network_workspace(n, L, sizes);
    out[1] = geometry_workspace(n);
}
